"""How far each grouping can prune: the MACs left when *every* group is zero, per unit, and where a trained
model's remaining MACs sit.

    python experiments/grouping_ceiling.py                                  # the digits_sparse network, both groupings
    python experiments/grouping_ceiling.py --runs experiments/results/grouping/runs/*_s0   # + trained models

Structural floor: the ``digits_sparse`` network (resnet18 at output stride 8, three heads, 48 x 48) with every
group of a grouping set to exactly zero, then pruned by the exact consumer rule (``prune_zero_channels``; a layer
keeps one channel). Its MACs are the least that grouping can ever reach: 1 / fraction is its MACs ceiling.
Per trained run (``<run>/pruned.pt``): MACs per unit (stem, blocks, heads) against the dense network's; units
whose MACs pruning cut by less than 5% count as "left dense", and ``ceiling_if_rest_vanished`` is the dense MACs
over the MACs of those units alone (the speedup if every other unit cost nothing). Writes ``ceiling.json`` and
``ceiling.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lightning_sparse_mtl.deploy.measure import macs_by_module  # noqa: E402
from lightning_sparse_mtl.deploy.profile import profile_units  # noqa: E402
from lightning_sparse_mtl.runs.checkpoints import load_pruned  # noqa: E402
from lightning_sparse_mtl.sparsity import GroupSparsity, prune_zero_channels  # noqa: E402
from lightning_sparse_mtl.sparsity.coupled_prox import coupled_soft_threshold_  # noqa: E402
from lightning_sparse_mtl.training.module import build_net  # noqa: E402


def unit_macs(model: torch.nn.Module, size: tuple[int, int]) -> dict[str, int]:
    """MACs per image of every unit of ``profile_units`` (stem, blocks, heads)."""
    per = macs_by_module(model.eval(), torch.rand(1, 3, *size))
    return {u: sum(per.get(p, 0) for p in paths) for u, paths in profile_units(model).items()}


@torch.no_grad()
def floor(cfg: dict, grouping: str, size: tuple[int, int]) -> dict[str, int]:
    """Per-unit MACs of the network pruned with every group of ``grouping`` at zero."""
    torch.manual_seed(0)
    net = build_net(cfg).eval()
    x = torch.rand(1, 3, *size)
    if grouping == "input":
        for g in GroupSparsity.from_module(net.encoder, 1.0).groups:
            g.weight.zero_()
    else:
        for g in GroupSparsity.from_module(net, 1.0, groups="coupled", example_inputs=x, shared="encoder").groups:
            coupled_soft_threshold_(g, 0.0, torch.ones(g.num_groups, dtype=torch.bool))
    prune_zero_channels(net, x, ignored_layers=net.head_output_layers())
    return unit_macs(net, size)


def breakdown(dense: dict[str, int], pruned: dict[str, int]) -> dict:
    total_d, total_p = sum(dense.values()), sum(pruned.values())
    left = [u for u in dense if pruned.get(u, 0) >= 0.95 * dense[u]]
    kept = sum(pruned.get(u, 0) for u in left)
    return {
        "macs_fraction": total_p / total_d,
        "macs_ceiling_x": total_d / total_p,
        "left_dense_units": left,
        "left_dense_share_of_pruned_macs": kept / total_p,
        "ceiling_if_rest_vanished_x": total_d / kept if kept else float("inf"),
        "units": {u: {"dense": dense[u], "pruned": pruned.get(u, 0)} for u in dense},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="*", default=[], help="trained run dirs (with pruned.pt)")
    parser.add_argument("--out", default=str(ROOT / "experiments" / "results" / "grouping"))
    args = parser.parse_args(argv)
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from lightning_sparse_mtl.core.configs import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        composed = compose("train", overrides=["experiment=digits_sparse"])
        cfg = {k: OmegaConf.to_container(composed[k], resolve=True) for k in ("data", "model", "tasks")}
    size = (cfg["data"]["dataset"]["image_size"],) * 2
    torch.manual_seed(0)
    dense = unit_macs(build_net(cfg), size)
    result = {"size": list(size), "dense_macs": sum(dense.values()), "floors": {}, "runs": {}}
    for grouping in ("input", "coupled"):
        result["floors"][grouping] = breakdown(dense, floor(cfg, grouping, size))
    for run in args.runs:
        path = Path(run) / "pruned.pt"
        if path.is_file():
            result["runs"][Path(run).name] = breakdown(dense, unit_macs(load_pruned(path)["model"], size))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ceiling.json").write_text(json.dumps(result, indent=2))
    lines = ["| model | MACs fraction | MACs ceiling | share of its MACs in units left dense | "
             "if the rest vanished | units left dense |", "|---|---|---|---|---|---|"]  # fmt: skip
    rows = [(f"floor: every {g} group zero", r) for g, r in result["floors"].items()]
    rows += [(f"trained: {name}", r) for name, r in result["runs"].items()]
    for label, r in rows:
        lines.append(f"| {label} | {r['macs_fraction']:.3f} | {r['macs_ceiling_x']:.1f}x | "
                     f"{100 * r['left_dense_share_of_pruned_macs']:.0f}% | {r['ceiling_if_rest_vanished_x']:.1f}x | "
                     f"{', '.join(u.replace('encoder.', '') for u in r['left_dense_units']) or '-'} |")  # fmt: skip
    (out / "ceiling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
