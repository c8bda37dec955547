"""Install as users install: a wheel built offline from the checkout, installed elsewhere, run from another directory.

Also the editable install (configs read from the repo's conf/), the console scripts and their Hydra tab completion,
``--help`` of prune/evaluate, evaluate's ``trainer.*`` overrides, and the run's train.log.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import warnings
import zipfile
from pathlib import Path

import pytest

from lightning_sparse_mtl.core.configs import CONFIG_DIR
from lightning_sparse_mtl.runs import logfile
from lightning_sparse_mtl.training.progress import short_name

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {"lsmtl-train": "train", "lsmtl-prune": "prune", "lsmtl-evaluate": "evaluate", "lsmtl-report": "report"}
MICRO = [  # the smallest real job: 24 px scenes, one batch per split
    "data.dataset.image_size=24",
    "data.splits.train.num_scenes=16",
    "data.splits.val.num_scenes=8",
    "data.splits.test.num_scenes=8",
    "data.batch_size=8",
    "data.eval_batch_size=8",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "model.head_channels=8",
    "model.output_stride=32",
]


def copy_checkout(dest: Path) -> Path:
    """What a source distribution holds: the packaging files, conf/ and the package (no build outputs)."""
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("conf", "lightning_sparse_mtl"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    return dest


def pip(*args: str, cwd: Path | None = None, python: str = sys.executable) -> None:
    proc = subprocess.run(
        [python, "-m", "pip", *args, "-q", "--no-deps", "--no-index", "--disable-pip-version-check"],
        cwd=cwd, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]


def clean_env(path: Path | None, **extra: str) -> dict[str, str]:
    """The environment of a user: no checkout on PYTHONPATH (``path`` only, when given)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if path is not None:
        env["PYTHONPATH"] = str(path)
    return {**env, "WANDB_MODE": "offline", **extra}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = copy_checkout(tmp_path_factory.mktemp("src"))
    dist = tmp_path_factory.mktemp("dist")
    pip("wheel", "--no-build-isolation", "-w", str(dist), str(src))
    [whl] = dist.glob("lightning_sparse_mtl-*.whl")
    return whl


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    pip("install", "--target", str(target), str(wheel))
    return target


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_wheel_ships_every_config_and_the_console_scripts(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        [ep] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entry_points = zf.read(ep).decode()
    configs = {p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*.yaml")}
    assert configs and {f"lightning_sparse_mtl/conf/{c}" for c in configs} <= names
    assert not any(n.startswith(("conf/", "tests/", "build/")) for n in names)
    for script, module in SCRIPTS.items():
        assert f"{script} = lightning_sparse_mtl.{module}:main" in entry_points


def test_checkout_reads_the_top_level_conf() -> None:
    assert Path(CONFIG_DIR) == ROOT / "conf"


@pytest.fixture(scope="module")
def installed_run(
    installed: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess]:
    """A micro job trained by the installed wheel's ``lsmtl-train``, started in an unrelated directory."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    cache = os.environ.get("LSMTL_CACHE_DIR", str(elsewhere / "cache"))
    env = clean_env(installed, LSMTL_CACHE_DIR=cache)
    probe = "import lightning_sparse_mtl.core.configs as c; print(c.__file__, c.CONFIG_DIR)"
    module_file, config_dir = run([sys.executable, "-c", probe], elsewhere, env).stdout.split()
    assert Path(module_file).is_relative_to(installed) and Path(config_dir) == installed / "lightning_sparse_mtl/conf"
    run_dir = elsewhere / "run"
    proc = run([str(installed / "bin" / "lsmtl-train"), *MICRO, f"hydra.run.dir={run_dir}"], elsewhere, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc


def test_installed_wheel_trains_from_another_directory(installed_run) -> None:
    run_dir, proc = installed_run
    results = json.loads((run_dir / "results.json").read_text())
    assert 0.0 <= results["test/seg/miou"] <= 1.0 and Path(results["ckpt_path"]).is_file()
    # train.log holds what was printed (the results table), Lightning's messages, not the known noise
    log = (run_dir / "train.log").read_text()
    table = [line for line in log.splitlines() if line.startswith("│ test/seg/miou ")]
    assert "┃ metric" in log and len(table) == 1 and f"{results['test/seg/miou']:.4g}" in table[0]
    assert "`Trainer.fit` stopped" in log
    assert "litlogger" not in log + proc.stderr and "LeafSpec" not in log + proc.stderr
    assert "configure_callbacks` will override" not in log + proc.stderr


def test_evaluate_takes_trainer_overrides(installed_run, monkeypatch, capsys, tmp_path: Path) -> None:
    from lightning_sparse_mtl import evaluate

    run_dir, _ = installed_run
    results = json.loads((run_dir / "results.json").read_text())
    ckpt = f"ckpt_path={results['ckpt_path']}"
    metrics = {}
    for limit in ("null", "1"):  # test split: 8 scenes = 2 batches of 4; limit_test_batches=1 evaluates 4
        out = tmp_path / f"metrics_{limit}.json"
        argv = [ckpt, "batch_size=4", f"trainer.limit_test_batches={limit}", "trainer.enable_progress_bar=false"]
        hydra_cli(monkeypatch, capsys, evaluate.main, "lsmtl-evaluate", *argv, f"output={out}")
        metrics[limit] = json.loads(out.read_text())
    assert metrics["null"]["test/seg/miou"] == pytest.approx(results["test/seg/miou"], abs=1e-6)
    assert metrics["1"]["test/depth/abs_err"] != pytest.approx(metrics["null"]["test/depth/abs_err"], abs=1e-6)


def hydra_cli(monkeypatch, capsys, main, *argv: str, **env: str) -> str:
    """stdout of an entry point's Hydra ``main`` run in-process with ``argv`` (what the console script runs)."""
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys, "argv", list(argv))
    capsys.readouterr()
    try:
        main()  # --help exits 0, shell completion returns
    except SystemExit as done:
        assert done.code in (0, None)
    return capsys.readouterr().out


def test_prune_and_evaluate_help_list_only_their_options(monkeypatch, capsys) -> None:
    from lightning_sparse_mtl import evaluate, prune

    for script, main in (("lsmtl-prune", prune.main), ("lsmtl-evaluate", evaluate.main)):
        text = hydra_cli(monkeypatch, capsys, main, script, "--help")
        assert f"Usage: {script} ckpt_path=" in text and "ckpt_path: ???" in text
        assert "Configuration groups" not in text and "sparsity" not in text and "data:" not in text
    assert "trainer:" in text and "limit_test_batches: null" in text  # evaluate's Trainer arguments


def test_hydra_tab_completion_for_the_console_scripts(monkeypatch, capsys) -> None:
    from lightning_sparse_mtl import evaluate, train

    text = hydra_cli(monkeypatch, capsys, train.main, "lsmtl-train", "-sc", "install=bash")
    assert "complete -o nospace -o default -F hydra_bash_completion lsmtl-train" in text
    for script, main, line, expected in (
        ("lsmtl-train", train.main, "lsmtl-train model.enc", ["model.encoder="]),
        ("lsmtl-evaluate", evaluate.main, "lsmtl-evaluate trainer.limit_te", ["trainer.limit_test_batches="]),
    ):
        text = hydra_cli(
            monkeypatch, capsys, main, script, "-sc", "query=bash", COMP_LINE=line, COMP_POINT=str(len(line))
        )
        assert text.split() == expected


@pytest.mark.slow
def test_console_scripts_equal_the_module_forms(installed: Path, tmp_path: Path) -> None:
    env = clean_env(installed)
    for script, module in SCRIPTS.items():
        by_script = run([str(installed / "bin" / script), "--help"], tmp_path, env)
        by_module = run([sys.executable, "-m", f"lightning_sparse_mtl.{module}", "--help"], tmp_path, env)
        assert by_script.returncode == by_module.returncode == 0, by_script.stderr[-2000:]
        assert by_script.stdout == by_module.stdout and by_script.stdout.strip()
    line = "lsmtl-train model.enc"
    query = run([str(installed / "bin" / "lsmtl-train"), "-sc", "query=bash"], tmp_path,
                {**env, "COMP_LINE": line, "COMP_POINT": str(len(line))})  # fmt: skip
    assert query.stdout.split() == ["model.encoder="]


def test_editable_install_reads_the_repo_conf(tmp_path: Path) -> None:
    (tmp_path / "checkout").mkdir()
    src = copy_checkout(tmp_path / "checkout")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    Path(purelib, "shared_site.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch & co., no reinstall
    pip("install", "--no-build-isolation", "-e", str(src), python=python)
    probe = "import lightning_sparse_mtl.core.configs as c; print(c.CONFIG_DIR)"
    proc = run([python, "-c", probe], tmp_path, clean_env(None))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert Path(proc.stdout.strip()) == src / "conf"
    assert (venv / "bin" / "lsmtl-train").is_file()


def test_progress_bar_names_are_short() -> None:
    assert short_name("train/loss") == "loss"
    assert short_name("val/seg/miou") == "seg_miou"
    assert short_name("val/depth/abs_err") == "dep_abs_err"
    assert short_name("val/normal/mean") == "nor_mean"


def test_run_log_tees_prints_errors_and_lightning_but_not_noise(tmp_path: Path, capsys) -> None:
    path = tmp_path / "train.log"
    lightning_logger = logging.getLogger("lightning.pytorch.some.module")
    handler = logging.StreamHandler(sys.stderr)
    logging.getLogger("lightning.pytorch").addHandler(handler)
    try:
        with pytest.raises(ValueError), logfile.run_log(path):
            print("\x1b[1mresults table\x1b[0m")
            sys.stderr.write("\rEpoch 0: 50%|#####     |\r")  # a progress-bar redraw: terminal only
            print("error: something the user must fix", file=sys.stderr)
            lightning_logger.warning("a real Lightning message")
            lightning_logger.info(logfile.NOISE[0] + ", try installing [litlogger]")
            with warnings.catch_warnings():  # shown on stderr as Python does by default (pytest records them)
                warnings.simplefilter("always")
                warnings.showwarning = lambda m, c, f, n, file=None, line=None: sys.stderr.write(
                    warnings.formatwarning(m, c, f, n, line)
                )
                logfile.quiet_known_noise()
                warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
                warnings.warn("a real warning", UserWarning, stacklevel=1)
            raise ValueError("boom")
    finally:
        logging.getLogger("lightning.pytorch").removeHandler(handler)
    log = path.read_text()
    assert "results table\n" in log and "\x1b[" not in log  # colour codes stripped from the file
    assert "Epoch 0: 50%" not in log
    assert "error: something the user must fix" in log and "a real Lightning message" in log
    assert "a real warning" in log and "LeafSpec" not in log and "litlogger" not in log
    assert "Traceback" in log and "ValueError: boom" in log
    captured = capsys.readouterr()
    assert "results table" in captured.out and "Epoch 0: 50%" in captured.err  # the terminal still gets everything
