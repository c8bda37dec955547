"""Validation before any work: config (types, ranges, names, combinations), data (every file), paths, one-line errors.

Every refused case asserts: a UserError / exit status 2, one line naming what is wrong, no traceback, nothing
trained, and no file created or modified in an existing run directory (mtimes + hashes before/after).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, TINY
from helpers.datasets import make_celeba, make_cityscapes, make_nyuv2
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from PIL import Image

from lightning_sparse_mtl.core.configs import CONFIG_DIR
from lightning_sparse_mtl.core.errors import UserError
from lightning_sparse_mtl.core.validate import check_writable_file, require_ckpt_path
from lightning_sparse_mtl.data import digits
from lightning_sparse_mtl.data.celeba import CelebAMaskHQ
from lightning_sparse_mtl.data.cityscapes import Cityscapes
from lightning_sparse_mtl.data.nyuv2 import NYUv2
from lightning_sparse_mtl.reporting.aggregate import collect
from lightning_sparse_mtl.runs.data_paths import measured_input_size, point_data_at
from lightning_sparse_mtl.runs.validate_train import validate_train_config


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """{relative path: (mtime_ns, sha256)} of every file under ``folder``."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(folder))] = (
                path.stat().st_mtime_ns,
                hashlib.sha256(path.read_bytes()).hexdigest(),
            )
    return out


def one_line(message: str) -> str:
    assert "\n" not in message.strip() and "Traceback" not in message, message
    return message


def compose_cfg(*overrides: str, tiny: bool = True):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=[*(TINY if tiny else []), *overrides])


# ------------------------------------------------------------------ config: types, ranges, names, combinations
BAD_CONFIGS = [
    ("seed=-1", "seed must be an integer >= 0"),
    ("seed=abc", "seed must be an integer"),
    ("seed=1.5", "seed must be an integer"),
    ("lambda=abc", "lambda"),
    ("optimizer.lr=-1", "optimizer.lr must be a finite number > 0"),
    ("optimizer.lr=abc", "optimizer.lr must be a finite number"),
    ("optimizer._target_=torch.optim.Nope", "optimizer._target_=torch.optim.Nope cannot be imported"),
    ("optimizer._target_=os.path.join", "is not a torch optimizer class"),
    ("+optimizer.foo=1", "optimizer is invalid: .*unexpected keyword argument 'foo'"),
    ("optimizer.betas=[0.9,1.5]", "optimizer.betas must be two numbers in"),
    ("optimizer.weight_decay=-1", "optimizer.weight_decay must be a finite number >= 0"),
    ("scheduler.interval=hour", "scheduler.interval must be one of epoch, step"),
    ("scheduler.T_max=-3", "scheduler.T_max must be an integer >= 1"),
    ("trainer.max_epochs=abc", "trainer.max_epochs must be an integer"),
    ("trainer.max_epochs=0", "trains nothing"),
    ("trainer.max_steps=0", "trains nothing"),
    ("trainer.precision=17", "trainer.precision must be one of"),
    ("trainer.precision=half", "trainer.precision must be one of"),
    ("trainer.accelerator=gpux", "trainer.accelerator must be one of"),
    ("trainer.devices=0", "trainer.devices must be"),
    ("+trainer.foo=1", "unknown trainer option 'foo'"),
    ("trainer.limit_train_batches=0", "limit_train_batches=0 runs no train batch"),
    ("trainer.limit_train_batches=1.5", "must be a fraction in"),
    ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps must be an integer >= 1"),
    ("trainer.gradient_clip_val=-1", "gradient_clip_val must be a finite number >= 0"),
    ("trainer.accumulate_grad_batches=0", "accumulate_grad_batches must be an integer >= 1"),
    ("trainer.enable_progress_bar=maybe", "trainer.enable_progress_bar must be true or false"),
    ("data.batch_size=0", "data.batch_size must be an integer >= 1"),
    ("data.batch_size=abc", "data.batch_size must be an integer"),
    ("data.num_workers=-1", "data.num_workers must be an integer >= 0"),
    ("data.eval_batch_size=-4", "data.eval_batch_size must be an integer >= 1"),
    ("data.splits.train.num_scenes=0", "num_scenes must be an integer >= 1"),
    ("sparsity.prox=adamx", "unknown sparsity.prox 'adamx'; valid: adam, none, plain"),
    ("sparsity.schedule=cosine", "sparsity.schedule must be one of"),
    ("sparsity.warmup_epochs=1.5", "sparsity.warmup_epochs must be an integer >= 0"),
    ("sparsity.newton_iters=0", "sparsity.newton_iters must be an integer >= 1"),
    ("sparsity.revive=sometimes", "sparsity.revive must be true or false"),
    ("+sparsity.foo=1", "unknown sparsity option 'foo'"),
    ("sparsity.exclude=['(']", "sparsity.exclude: invalid regular expression '\\('"),
    ("sparsity.exclude=['layer[1']", "invalid regular expression"),
    ("weighting=dwa weighting.temperature=0", "weighting.temperature must be a finite number > 0"),
    ("model.output_stride=7", "model.output_stride must be one of 8, 16, 32"),
    ("model.encoder=resnet81", r"\(close: resnet18"),  # close matches, not ~100 names
    ("model.encoder=vgg11", "encoder 'vgg11' cannot be built at model.output_stride=8"),  # no dilated mode
    ("model.head=mlp", "unknown head 'mlp'; valid: aspp, conv, skip"),
    ("model.head_channels=0", "model.head_channels must be an integer >= 1"),
    ("model.weights=/no/such/file.pt", "model.weights: file not found"),
    ("test_ckpt=first", "test_ckpt must be one of last, best"),
    ("test_ckpt=best", "test_ckpt=best needs a monitored metric"),
    ("optimized_metric=test/seg/miu", "optimized_metric 'test/seg/miu' is not a key this run writes"),
    ("optimized_metric=test/delta_m", "test/delta_m needs baselines"),
    ("baselines=[/no/such/results.json]", "not found"),
    ("baselines={test/seg/miou:abc}", "baseline test/seg/miou must be a number"),
    ("baselines={test/attr/acc:0.5}", "baselines share no metric with this run's tasks"),
    ("ckpt_path=/no/such.ckpt", "ckpt_path: file not found"),
    ("prune.latency_repeats=0", "prune.latency_repeats must be an integer >= 1"),
    # the prune block is checked before training too (a bad value used to fail after fit and test)
    ("prune.batch_sizes=[]", "prune.batch_sizes must be a non-empty list"),
    ("prune.batch_sizes=[0]", r"prune.batch_sizes\[\] must be an integer >= 1"),
    ("prune.round_to=0", "prune.round_to must be an integer >= 1"),
    ("prune.min_run_time=0", "prune.min_run_time must be a finite number > 0"),
    ("prune.fold_bn=maybe", "prune.fold_bn must be true or false"),
    ("prune.threads=0", "prune.threads must be an integer >= 1"),
    ("callbacks.lr_monitor._target_=nope.Nope", "callbacks.lr_monitor._target_=nope.Nope cannot be imported"),
    # prox compatibility: the Adam-weighted prox needs Adam's second moments
    ("lambda=1e-3 optimizer._target_=torch.optim.SGD ~optimizer.betas", "sparsity.prox=adam .* needs optimizer"),
    ("lambda=1e-3 optimizer._target_=torch.optim.RMSprop ~optimizer.betas", "use sparsity=prox"),
    # dict overrides, values checked
    ("task_weights={seg:-1}", "task_weights.seg must be a finite number >= 0, got -1"),
    ("task_weights={seg:abc}", "task_weights.seg must be a finite number >= 0, got 'abc'"),
    ("task_weights={seg:nan}", "task_weights.seg must be a finite number >= 0, got nan"),
    ("task_weights={seg:inf}", "task_weights.seg must be a finite number"),
    ("task_weights={segm:1}", "task_weights names 'segm', which is not in tasks"),
    ("task_weights={seg:0,depth:0,normal:0}", "task_weights are all 0"),
    ("model.head_overrides={segm:aspp}", "model.head_overrides names 'segm', not a dense task"),
    ("model.head_overrides={seg:mlp}", "model.head_overrides.seg: unknown head 'mlp'; valid: aspp, conv, skip"),
    ("task_weights=3", "task_weights must be a mapping"),
    # names
    ("tasks=segm", "unknown task 'segm'"),
    ("tasks=[]", "tasks is empty"),
    ("tasks=[seg,seg]", "tasks has duplicates"),
    ("weighting.name=nope", "unknown weighting 'nope'; valid: dwa, fixed, uncertainty"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_is_one_line_error_before_any_work(overrides: str, message: str) -> None:
    cfg = compose_cfg(*overrides.split())
    with pytest.raises(UserError, match=message) as err:
        validate_train_config(cfg)
    one_line(str(err.value))


@pytest.mark.parametrize(
    ("overrides", "check"),
    [
        ("task_weights={seg:1,depth:0.5}", lambda c: c.task_weights == {"seg": 1, "depth": 0.5}),
        ("model.head_overrides={seg:aspp}", lambda c: c.model.head_overrides == {"seg": "aspp"}),
        ("tasks=seg", lambda c: c.tasks == "seg"),
        ("lambda=1e-3 sparsity=prox optimizer._target_=torch.optim.SGD ~optimizer.betas", lambda c: True),
        ("experiment=digits_sparse", lambda c: c["lambda"] > 0 and c.sparsity.prox == "adam"),
        ("baselines={test/seg/miou:0.5} optimized_metric=test/delta_m", lambda c: True),
    ],
)
def test_readme_overrides_are_accepted(overrides: str, check) -> None:
    cfg = compose_cfg(*overrides.split())
    assert check(cfg)
    tasks = validate_train_config(cfg)
    assert tasks == (["seg"] if overrides == "tasks=seg" else ["seg", "depth", "normal"])


def test_readme_dict_overrides_reach_the_model(train_cfg) -> None:
    from lightning_sparse_mtl.models.heads import ASPPHead
    from lightning_sparse_mtl.training.module import SparseMTLModule

    module = SparseMTLModule(train_cfg("task_weights={seg: 1, depth: 0.5}", "model.head_overrides={seg: aspp}"))
    assert module.weighting.current_weights() == {"seg": 1.0, "depth": 0.5, "normal": 1.0}
    assert isinstance(module.net.heads["seg"], ASPPHead)


# ------------------------------------------------------------------ data: every file, not sample 0
def _garbage(path: Path) -> None:
    path.write_bytes(b"\x93NUMPY garbage, not an array")


NYU_DEFECTS = {
    "corrupt depth/3.npy": (lambda r: _garbage(r / "val/depth/3.npy"), "cannot read .*val/depth/3.npy"),
    "truncated normal/4.npy": (
        lambda r: (r / "val/normal/4.npy").write_bytes((r / "val/normal/4.npy").read_bytes()[:200]),
        "cannot read .*val/normal/4.npy",
    ),
    "label 13 in label/5.npy": (
        lambda r: np.save(r / "val/label/5.npy", np.full((36, 48), 13, np.float32)),
        "val/label/5.npy has class id 13; expected 0..12",
    ),
    "NaN in depth/2.npy": (
        lambda r: np.save(r / "val/depth/2.npy", np.full((36, 48, 1), np.nan, np.float32)),
        "val/depth/2.npy contains NaN",
    ),
    "image 4.npy of another size": (
        lambda r: [
            np.save(r / f"val/{f}/4.npy", np.zeros((30, 40, c), np.float32))
            for f, c in (("image", 3), ("label", 1), ("depth", 1), ("normal", 3))
        ],  # fmt: skip
        "val/image/4.npy is \\(30, 40\\) pixels but 0.npy is \\(36, 48\\)",
    ),
    "label 3.npy of another size than its image": (
        lambda r: np.save(r / "val/label/3.npy", np.zeros((20, 48), np.float32)),
        "val/label/3.npy is \\(20, 48\\) pixels; expected \\(36, 48\\)",
    ),
    "image in 0..255 at 5.npy": (
        lambda r: np.save(r / "val/image/5.npy", np.full((36, 48, 3), 200.0, np.float32)),
        "val/image/5.npy has values in \\[200, 200\\]; expected RGB floats in \\[0, 1\\]",
    ),
    "object array at 1.npy": (
        lambda r: np.save(r / "val/normal/1.npy", np.array([None] * 3, dtype=object), allow_pickle=True),
        "cannot read .*val/normal/1.npy",
    ),
}


@pytest.mark.parametrize("defect", list(NYU_DEFECTS))
def test_nyuv2_every_file_is_checked(defect: str, tmp_path: Path) -> None:
    root = make_nyuv2(tmp_path / "nyu", n_train=4, n_val=6)
    NYUv2("test", root)  # intact: fine
    corrupt, message = NYU_DEFECTS[defect]
    corrupt(root)
    with pytest.raises(UserError, match=message) as err:
        NYUv2("test", root)
    one_line(str(err.value))


def test_cityscapes_label_out_of_range_later_in_the_split(tmp_path: Path) -> None:
    root = make_cityscapes(tmp_path / "cs", n_train=4, n_val=5)
    np.save(root / "val/label_7/4.npy", np.full((32, 64), 7, np.float32))
    with pytest.raises(UserError, match="val/label_7/4.npy has class id 7; expected 0..6"):
        Cityscapes("test", root, num_classes=7)
    Cityscapes("test", root, num_classes=19)  # label_19/ is intact


def test_celeba_corrupt_jpg_and_mask_after_sample_0(tmp_path: Path) -> None:
    root, _ = make_celeba(tmp_path / "celeba", n=12)
    ds = CelebAMaskHQ("train", root, image_size=32)
    bad = root / "CelebA-HQ-img" / f"{ds.indices[-1]}.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match=f"cannot read image .*{bad.name}"):
        CelebAMaskHQ("train", root, image_size=32)
    bad.unlink()
    Image.new("RGB", (32, 32)).save(bad)
    mask = next((root / "CelebAMask-HQ-mask-anno").rglob(f"{ds.indices[-1]:05d}_hair.png"))
    mask.write_bytes(b"\x89PNG broken")
    with pytest.raises(UserError, match=f"cannot read image .*{mask.name}"):
        CelebAMaskHQ("train", root, image_size=32)


def test_celeba_images_of_different_sizes_need_image_size(tmp_path: Path) -> None:
    root, _ = make_celeba(tmp_path / "celeba", n=12)
    ds = CelebAMaskHQ("train", root, image_size=None)
    Image.new("RGB", (40, 32)).save(root / "CelebA-HQ-img" / f"{ds.indices[2]}.jpg")
    with pytest.raises(UserError, match="images of a split must share a size"):
        CelebAMaskHQ("train", root, image_size=None)
    assert len(CelebAMaskHQ("train", root, image_size=32)) == len(ds)  # resized: fine


def test_labels_beyond_num_classes_stop_before_training(train_cfg) -> None:
    from lightning_sparse_mtl.train import train

    cfg = train_cfg("data.num_classes=5", "trainer.limit_train_batches=1")
    with pytest.raises(UserError, match="class ids up to 10 but data.num_classes=5; set data.num_classes=11"):
        train(cfg)
    assert not (Path(cfg.hydra.runtime.output_dir) / "checkpoints").exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong count"])
def test_corrupt_digits_cache_is_detected_and_rebuilt(damage: str, tmp_path: Path) -> None:
    args = ("test", tmp_path, 6, 24, (2, 4), 0)
    good = digits.load_digit_scenes(*args)
    path = digits.cache_path(*args)
    if damage == "garbage":
        path.write_bytes(b"PK\x03\x04 garbage")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    else:
        other = digits.cache_path("test", tmp_path, 3, 24, (2, 4), 0)
        digits.load_digit_scenes("test", tmp_path, 3, 24, (2, 4), 0)
        path.write_bytes(other.read_bytes())
    with pytest.warns(UserWarning, match="unreadable .*rebuilding"):
        again = digits.load_digit_scenes(*args)
    assert all(np.array_equal(good[k], again[k]) for k in good)
    with np.load(path) as z:  # rebuilt on disk
        assert len(z["image"]) == 6


# ------------------------------------------------------------------ results of nothing
def test_batch_larger_than_drop_last_train_split_is_refused(train_cfg) -> None:
    from lightning_sparse_mtl.train import train

    cfg = train_cfg("data.batch_size=100")  # 64 train scenes, drop_last
    with pytest.raises(UserError, match="data.batch_size=100 is larger than the train split \\(64 samples") as err:
        train(cfg)
    one_line(str(err.value))
    run_dir = Path(cfg.hydra.runtime.output_dir)
    assert not (run_dir / "results.json").exists() and not (run_dir / "checkpoints").exists()


def test_fraction_of_batches_rounding_to_zero_is_refused(train_cfg) -> None:
    from lightning_sparse_mtl.train import train

    with pytest.raises(UserError, match="limit_train_batches=0.1 of 4 batches is 0 batches"):
        train(train_cfg("trainer.limit_train_batches=0.1"))


# ------------------------------------------------------------------ paths, prune/evaluate/report inputs
def test_unwritable_and_odd_output_paths(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("x")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        cases = [
            (tmp_path, "is a directory"),
            (tmp_path / "a_file" / "out.json", "is a file"),
            (ro / "out.json", "not writable"),
        ]
        if os.geteuid() == 0:  # root writes anywhere
            cases = cases[:2]
        for path, message in cases:
            with pytest.raises(UserError, match=message) as err:
                check_writable_file(str(path), "output")
            one_line(str(err.value))
    finally:
        ro.chmod(0o700)
    assert check_writable_file(str(tmp_path / "new" / "out.json"), "output") == tmp_path / "new" / "out.json"
    assert not (tmp_path / "new").exists()  # checked, nothing created


@pytest.mark.parametrize("value", ["???", None, ""])
def test_prune_and_evaluate_without_ckpt_path(value) -> None:
    for command in ("prune", "evaluate"):
        cfg = OmegaConf.create({"ckpt_path": value})
        with pytest.raises(UserError, match=f"{command} needs a checkpoint: .*ckpt_path=<run dir>"):
            require_ckpt_path(cfg, command)


def test_moved_data_is_pointed_at_with_data_root(tmp_path: Path) -> None:
    root = make_nyuv2(tmp_path / "nyu", n_train=3, n_val=2)
    cfg = OmegaConf.to_container(
        compose_cfg("experiment=nyuv2", f"data.root={tmp_path / 'gone'}", tiny=False), resolve=True
    )
    with pytest.raises(UserError, match="prune reads one test image .*pass data_root="):
        measured_input_size(cfg, "prune")
    assert measured_input_size(point_data_at(cfg, str(root)), "prune") == [36, 48]
    with pytest.raises(UserError, match="data_root=.* is not a folder"):
        point_data_at(cfg, str(tmp_path / "also_gone"))


@pytest.mark.parametrize(
    "results",
    [[1, 2], {"config": [1]}, {"sparsity": "dense"}, {"sparsity": {"layers": [1]}}, {"sparsity": {"layers": {"a": 1}}}],
)
def test_report_on_results_of_unexpected_types_lists_the_job_as_failed(results, tmp_path: Path) -> None:
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "results.json").write_text(json.dumps(results))
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "results.json").write_text(json.dumps({"lambda": 0.0, "test/seg/miou": 0.5}))
    rows, failed = collect(tmp_path)
    assert [r["job"] for r in rows] == ["1"] and [f.job for f in failed] == ["0"]


# ------------------------------------------------------------------ the CLI: Hydra must not touch a refused run
def cli(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", f"lightning_sparse_mtl.{module}", *args], capture_output=True,
                          text=True, timeout=300, env=env, cwd=cwd)  # fmt: skip


def assert_refused(proc: subprocess.CompletedProcess, message: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert message in lines[0], lines[0]


def fake_finished_run(run_dir: Path) -> Path:
    """A finished run's files (what report and prune read) with old mtimes."""
    for rel, text in {"results.json": '{"test/seg/miou": 0.5}\n', ".hydra/config.yaml": "lambda: 0.1\n",
                      ".hydra/overrides.yaml": "- lambda=0.1\n", ".hydra/hydra.yaml": "hydra: {}\n",
                      "train.log": "done\n", "csv/metrics.csv": "epoch,step\n0,3\n",
                      "checkpoints/last.ckpt": "ckpt"}.items():  # fmt: skip
        (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / rel).write_text(text)
        os.utime(run_dir / rel, ns=(10**18, 10**18))
    return run_dir


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "already holds a finished run"),
        (["ckpt_path={other}"], "belongs to another run"),
        (["task_weights={seg: nan}"], "task_weights.seg must be a finite number >= 0, got nan"),
    ],
)
def test_refused_cli_run_leaves_the_finished_run_untouched(extra: list[str], message: str, tmp_path: Path) -> None:
    run_dir = fake_finished_run(tmp_path / "done")
    other = fake_finished_run(tmp_path / "other") / "checkpoints" / "last.ckpt"
    before = snapshot(run_dir)
    proc = cli(
        "train", *TINY, f"hydra.run.dir={run_dir}", *(e.replace("{other}", str(other)) for e in extra), cwd=tmp_path
    )
    assert_refused(proc, message)
    assert snapshot(run_dir) == before


def test_refused_cli_run_creates_no_run_dir(tmp_path: Path) -> None:
    proc = cli("train", *TINY, "optimizer.lr=-1", f"hydra.run.dir={tmp_path / 'new'}", cwd=tmp_path)
    assert_refused(proc, "optimizer.lr must be a finite number > 0")
    assert not (tmp_path / "new").exists()


def test_second_training_into_a_busy_run_dir_is_refused(tmp_path: Path) -> None:
    from lightning_sparse_mtl.runs.run_dir import claim_run_dir, release_run_dir

    run_dir = tmp_path / "busy"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from lightning_sparse_mtl.runs.run_dir import "
                               f"claim_run_dir; claim_run_dir({str(run_dir)!r}); print('held', flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(run_dir)
        with pytest.raises(UserError, match=f"{run_dir} is in use by another training \\(pid {holder.pid}\\)"):
            claim_run_dir(run_dir)
        proc = cli("train", *TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path)
        assert_refused(proc, "is in use by another training")
        assert snapshot(run_dir) == before  # no .hydra/, no log
    finally:
        holder.kill()
        holder.wait()
    claim_run_dir(run_dir)  # the kernel dropped the dead holder's lock: no stale lock
    release_run_dir(run_dir)


def test_prune_and_evaluate_cli_without_ckpt_path(tmp_path: Path) -> None:
    assert_refused(cli("prune", cwd=tmp_path), "prune needs a checkpoint")
    assert_refused(cli("evaluate", "output=/proc/nope/x.json", "ckpt_path=" + str(tmp_path / "x.ckpt"), cwd=tmp_path),
                   "checkpoint not found")  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_multirun_with_a_bad_fixed_key_is_refused_before_any_job(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = cli("train", "-m", *TINY, "lambda=0,1e-3", "optimized_metric=test/seg/miu", f"hydra.sweep.dir={sweep}",
               cwd=tmp_path)  # fmt: skip
    assert_refused(proc, "optimized_metric 'test/seg/miu' is not a key this run writes")
    assert not sweep.exists()
