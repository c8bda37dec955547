"""2-process DDP on CPU (gloo) against a single process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.ddp import state_digest
from helpers.runs import SHORT, TINY, check_ok, run_module

from lightning_sparse_mtl.training.module import SparseMTLModule


@pytest.mark.slow
def test_ddp_two_processes_match_single_process(tmp_path: Path) -> None:
    """2-process DDP on CPU (gloo): train with a strong λ, then
    (1) every rank ends with bit-identical parameters, hence the same zero pattern: DDP all-reduces (averages)
        the gradients before ``optimizer.step``, so each rank applies the same update, and the prox (a step
        post-hook of the optimizer) is a deterministic function of identical weights and optimizer state;
    (2) the checkpoint (written by rank 0) has that pattern;
    (3) the DDP test metrics in results.json (sum-based states, reduced across the 2 ranks, each holding half of
        the 32 test scenes) equal a single-process evaluation of the same checkpoint on the same data."""
    from lightning_sparse_mtl.evaluate import evaluate

    run_dir = tmp_path / "ddp"
    # λ=8 with the plain prox zeroes the inputs of the layer3/4 conv1s in 2 steps (a pattern to compare) and leaves
    # layer1/2 dense. conv2s are not grouped: a whole zeroed conv2 makes the pruning probe build a 0-channel conv1.
    args = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "sparsity=prox", "lambda=8",
            "sparsity.exclude=[conv2]", "+callbacks.digest._target_=helpers.ddp.RankDigest", *TINY, *SHORT,
            f"hydra.run.dir={run_dir}"]  # fmt: skip
    check_ok(run_module("lightning_sparse_mtl.train", *args, env={"OMP_NUM_THREADS": "1"}, timeout=300))
    rank0, rank1 = (json.loads((run_dir / f"digest_rank{r}.json").read_text()) for r in (0, 1))
    assert rank0 == rank1
    assert 0 < rank0["zero_groups"] < rank0["groups"], rank0  # a non-trivial pattern

    res = json.loads((run_dir / "results.json").read_text())
    ckpt = torch.load(res["ckpt_path"], map_location="cpu", weights_only=False)
    state = ckpt["state_dict"]
    module = SparseMTLModule(ckpt["hyper_parameters"]["cfg"])
    grouped = {f"{g.name}.weight": state[f"{g.name}.weight"] for g in module.sparsity.groups}
    params = {n: state[n] for n, _ in module.named_parameters()}
    assert state_digest(grouped, params) == rank0
    assert res["sparsity/group_sparsity"] == pytest.approx(100 * rank0["zero_groups"] / rank0["groups"])
    assert any(k.startswith("pruned/") for k in res)  # rank 0 ran the pruning step after the DDP test

    kwargs = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False}
    single = evaluate(res["ckpt_path"], trainer_kwargs=kwargs)
    ddp = {k: v for k, v in res.items() if k.startswith("test/") and k.count("/") == 2}
    assert ddp.keys() == single.keys() and len(ddp) >= 9
    for key, value in ddp.items():
        assert single[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
