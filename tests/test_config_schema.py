"""The class fix for config errors (issue 23): every config group, an unknown key and a wrong-typed value for each of
its keys, gives one ``error:`` line naming the key before the run directory exists.

The groups are not listed here: every mapping node of the composed train config (``data``, ``data.dataset``,
``data.splits.train``, ``model``, ``sparsity``, ``weighting``, ``trainer``, ``optimizer``, ``scheduler``,
``callbacks.*``, ``logger.*``, ``prune``, ``method``, ...) with the default options and with every option of every
folder under ``conf/`` (each option adds only the nodes and keys the default config does not already have).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
from helpers.runs import TINY
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from lightning_sparse_mtl.core.configs import CONFIG_DIR
from lightning_sparse_mtl.runs.cli import one_line
from lightning_sparse_mtl.runs.run_dir import RunGuard

CONF = Path(CONFIG_DIR)
OPTIONS = [""] + [f"{d.name}={f.stem}" for d in sorted(CONF.iterdir()) if d.is_dir() for f in sorted(d.glob("*.yaml"))]
CLUSTER_VARS = ("SLURM_NTASKS", "SLURM_JOB_NAME", "TORCHELASTIC_RUN_ID", "GROUP_RANK", "LSB_JOBID", "NODE_RANK",
                "MASTER_ADDR")  # fmt: skip


def compose_train(overrides: list[str], run_dir: Path) -> DictConfig:
    """The train config as the CLI composes it (TINY sizes for the digits data), run dir ``run_dir``."""
    other_data = any(o.startswith(("data=", "experiment=")) for o in overrides)
    tiny = [t for t in TINY if not (other_data and t.startswith("data."))]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[*tiny, *overrides], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = cfg.hydra.run.dir = str(run_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


def groups(cfg: DictConfig, where: str = "") -> list[tuple[str, DictConfig]]:
    """Every mapping node (dotted path, node) outside ``hydra``."""
    out = []
    for key in cfg.keys():
        node = cfg._get_node(key)
        path = f"{where}.{key}" if where else str(key)
        if isinstance(node, DictConfig) and not node._is_none() and path != "hydra":
            out += [(path, node), *groups(node, path)]
    return out


def wrong_value(value: object) -> str | None:
    """An override value of another type than ``value`` (None: the type is not known from the config)."""
    if value is None or isinstance(value, DictConfig):
        return None
    return "[1,2]" if isinstance(value, str) else "abc"


def cases(option: str, seen: set) -> list[tuple[str, str]]:
    """(override, the key the error must name) for each group and key of ``option`` not in ``seen`` yet."""
    out = []
    for path, node in groups(compose_train([option] if option else [], Path("/nonexistent"))):
        if (path, None) not in seen:
            seen.add((path, None))
            out.append((f"+{path}.not_a_key=1", "not_a_key"))
        for key in node.keys():
            try:
                bad = wrong_value(node[key])
            except Exception:  # noqa: BLE001 - an interpolation that only resolves in a real run: its type is unknown
                bad = None
            if bad is not None and (path, key) not in seen:
                seen.add((path, key))
                out.append((f"{path}.{key}={bad}", f"{path}.{key}"))
    return out


def refusal(overrides: list[str], run_dir: Path) -> tuple[str, bool]:
    """(the one error line, whether ``run_dir`` exists) of a train run with ``overrides``: Hydra's composition
    error as the CLI prints it, else what the pre-run check (the Hydra callback before any file) prints."""
    try:
        cfg = compose_train(overrides, run_dir)
    except Exception as err:  # noqa: BLE001 - the CLI's handler turns it into this one line (runs/cli.py)
        return f"error: {one_line(err)}", run_dir.exists()
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        RunGuard().on_run_start(cfg)
    lines = [ln for ln in err.getvalue().splitlines() if ln.startswith("error:")]
    assert exit_.value.code == 2 and len(lines) == 1, (overrides, err.getvalue())
    return lines[0], run_dir.exists()


@pytest.fixture(scope="module")
def seen() -> set:
    """(group, key) pairs already checked by an earlier option (module order: the default options first)."""
    return set()


@pytest.mark.parametrize("option", OPTIONS, ids=[o or "defaults" for o in OPTIONS])
def test_every_group_refuses_an_unknown_key_and_a_wrong_type(option: str, seen: set, tmp_path, monkeypatch) -> None:
    for var in CLUSTER_VARS:
        monkeypatch.delenv(var, raising=False)
    failures = []
    for i, (override, key) in enumerate(cases(option, seen)):
        try:
            line, wrote = refusal([option, override] if option else [override], tmp_path / f"run{i}")
        except BaseException as err:  # noqa: BLE001 - accepted (no SystemExit) or a traceback: both are failures
            failures.append(f"{override}: {type(err).__name__}: {str(err)[:200]}")
            continue
        if key not in line or "\n" in line or wrote:
            failures.append(f"{override}: {line!r}{' (the run dir was written)' if wrote else ''}")
    assert not failures, "\n".join(failures)


def test_the_groups_are_found_not_listed() -> None:
    """The discovery sees the groups the README names (a sanity check on :func:`groups`, not the list tested)."""
    found = {path for path, _ in groups(compose_train(["method=tp_magnitude"], Path("/nonexistent")))}
    expected = {"data", "data.dataset", "data.splits.train", "model", "sparsity", "weighting", "trainer", "optimizer",
                "scheduler", "callbacks", "callbacks.model_checkpoint", "logger", "logger.csv", "prune",
                "method"}  # fmt: skip
    assert expected <= found, expected - found
    assert {"experiment", "method", "model", "data"} <= {o.split("=")[0] for o in OPTIONS}


@pytest.mark.parametrize("option", OPTIONS, ids=[o or "defaults" for o in OPTIONS])
def test_every_shipped_option_passes_the_check(option: str, tmp_path: Path, monkeypatch, capsys) -> None:
    """No false refusal: the schema takes every config the project ships (the Torch-Pruning arms with the MACs
    budget they need; OTO is refused in one line where only-train-once cannot run, docs/peers.md)."""
    from lightning_sparse_mtl.runs.run_dir import release_run_dir

    for var in CLUSTER_VARS:
        monkeypatch.delenv(var, raising=False)
    extra = ["sparsity.target_macs=0.25"] if option.startswith("method=tp_") else []
    cfg = compose_train([o for o in (option, *extra) if o], tmp_path / "run")
    try:
        RunGuard().on_run_start(cfg)
    except SystemExit:
        assert option == "method=oto_hesso" and "error: method=oto_hesso" in capsys.readouterr().err
    finally:
        release_run_dir(tmp_path / "run")
