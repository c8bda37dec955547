"""The ``method`` config: which arm trains, and each peer's budget split (fractions of the optimizer steps).

The Torch-Pruning arms follow the split of Torch-Pruning's CIFAR benchmark (``benchmarks/main.py``, DepGraph
CVPR 2023): a dense model trained 200 epochs, then ``group_sl`` sparse learning (``--reg 5e-4``) for 100 epochs,
pruning to the target, fine-tuning for 100 epochs. Over one budget of N optimizer steps that is, for
``tp_magnitude``, 2/3 dense then prune + fine-tune 1/3; for ``tp_group_norm`` 1/2 dense, 1/4 regularised, prune,
1/4 fine-tune. The benchmark prunes in one go (400 tiny pruner steps, no training between them); ``prune_steps``
> 1 spreads the pruning over ``prune_fraction`` of the steps, fine-tuning between the steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from lightning_sparse_mtl.core.errors import UserError, unknown_name
from lightning_sparse_mtl.peers.oto import check_oto_available

GROUP_LASSO = ("group_lasso", "group_lasso_coupled")
PEERS = ("tp_magnitude", "tp_group_norm", "tp_uniform", "oto_hesso")
METHODS = (*GROUP_LASSO, *PEERS)
# sparsity.* keys of the group-lasso target controller: a peer reads target_macs and ignores the others
_TARGET_KEYS = ("target", "target_macs", "target_epoch", "target_every", "target_lambda_init", "max_layer_sparsity")


@dataclass(frozen=True)
class PeerSettings:
    """One peer arm. Fractions are of the run's optimizer steps (``trainer.estimated_stepping_batches``)."""

    name: str
    target_macs: float  # pruned / dense MACs at the end (sparsity.target_macs)
    dense_fraction: float = 2 / 3  # dense training before anything else
    sparse_fraction: float = 0.0  # then the GroupNormPruner regulariser (tp_group_norm)
    prune_steps: int = 1  # then this many pruning steps, MACs goal falling linearly to target_macs ...
    prune_fraction: float = 0.0  # ... spread over this fraction of the steps (fine-tune between); rest: fine-tune
    reg: float = 5e-4  # GroupNormPruner's regularisation coefficient (Torch-Pruning benchmark --reg)
    reg_alpha: float = 4.0  # GroupNormPruner's scaling 2^0 ... 2^alpha
    importance_p: int = 2  # group L_p magnitude (GroupMagnitudeImportance(p))
    max_pruning_ratio: float = 0.9  # no layer loses more than this fraction of its channels
    pruner_steps: int = 400  # finest pruner step: 1/400 of the channels (Torch-Pruning benchmark --iterative-steps)
    global_pruning: bool = True  # rank channels across all groups; False: every group loses the same fraction
    round_to: int | None = None  # keep a multiple of round_to channels per group (Torch-Pruning rounds down)

    def schedule(self, total_steps: int) -> dict[str, list[int] | int]:
        """Optimizer steps of each phase: ``{"sparse_start", "prune_at": [step per pruning step], "total"}``;
        every pruning step lies before the last optimizer step (so fine-tuning follows and checkpoints match)."""
        last = max(total_steps - 1, 0)
        sparse_start = min(round(total_steps * self.dense_fraction), last)
        first = round(total_steps * (self.dense_fraction + self.sparse_fraction))
        span = total_steps * self.prune_fraction
        prune_at = [min(first + round(span * k / self.prune_steps), last) for k in range(self.prune_steps)]
        return {"sparse_start": sparse_start, "prune_at": prune_at, "total": total_steps}

    def goal(self, k: int) -> float:
        """MACs fraction to reach at pruning step ``k`` (0-based): linear from 1 to ``target_macs``."""
        return 1.0 - (1.0 - self.target_macs) * (k + 1) / self.prune_steps


def method_name(method: Mapping | None) -> str:
    """The arm's name (``group_lasso`` when no method is given), checked."""
    name = (method or {}).get("name", "group_lasso")
    if name not in METHODS:
        raise unknown_name("method.name", name, METHODS)
    return name


def _check(settings: PeerSettings) -> PeerSettings:
    s = settings
    if not 0.0 < s.target_macs < 1.0:
        raise UserError(f"method={s.name}: sparsity.target_macs must be in (0, 1), got {s.target_macs!r}")
    for key in ("dense_fraction", "sparse_fraction", "prune_fraction"):
        if not 0.0 <= getattr(s, key) <= 1.0:
            raise UserError(f"method.{key} must be in [0, 1], got {getattr(s, key)!r}")
    if s.dense_fraction + s.sparse_fraction + s.prune_fraction > 1.0:
        raise UserError(f"method={s.name}: dense_fraction + sparse_fraction + prune_fraction must be <= 1 (the rest is "
                        "fine-tuning)")  # fmt: skip
    if not (isinstance(s.prune_steps, int) and s.prune_steps >= 1):
        raise UserError(f"method.prune_steps must be an integer >= 1, got {s.prune_steps!r}")
    if not isinstance(s.global_pruning, bool):
        raise UserError(f"method.global_pruning must be true or false, got {s.global_pruning!r}")
    if s.global_pruning != (s.name != "tp_uniform"):  # local pruning is the even-width arm, and only it
        raise UserError(f"method={s.name} needs method.global_pruning={str(s.name != 'tp_uniform').lower()} (local "
                        "pruning, every group at one ratio, is method=tp_uniform)")  # fmt: skip
    whole = isinstance(s.round_to, int) and not isinstance(s.round_to, bool)
    if s.round_to is not None and not (whole and s.round_to >= 1):
        raise UserError(f"method.round_to must be an integer >= 1 or null, got {s.round_to!r}")
    if s.round_to is not None and s.global_pruning:  # Torch-Pruning's own rounding can empty a group
        raise UserError(f"method.round_to is for method=tp_uniform (nearest multiple per group); method={s.name} "
                        "prunes globally: leave method.round_to null")  # fmt: skip
    if not s.global_pruning and s.prune_steps != 1:  # the search prunes once, from the dense widths
        raise UserError(f"method=tp_uniform prunes once, to one ratio: method.prune_steps must be 1, got "
                        f"{s.prune_steps!r}")  # fmt: skip
    if not 0.0 < s.max_pruning_ratio < 1.0:
        raise UserError(f"method.max_pruning_ratio must be in (0, 1), got {s.max_pruning_ratio!r}")
    return s


def peer_settings(method: Mapping | None, sparsity: dict, sparsity_weight: float) -> PeerSettings | None:
    """The peer arm's settings, or None for the group-lasso arms (nothing changes for them).

    For a peer, the group-lasso target keys are popped from ``sparsity`` (the peer reaches ``target_macs`` its own
    way; the lambda controller stays off) and ``lambda`` must be 0. Mistakes raise a one-line :class:`UserError`.
    """
    name = method_name(method)
    options = {k: v for k, v in dict(method or {}).items() if k != "name"}
    if name in GROUP_LASSO:
        if options:
            raise UserError(f"method={name} takes no options (got {sorted(options)}); set sparsity.* instead")
        return None
    if name == "oto_hesso":
        check_oto_available()
        raise UserError("method=oto_hesso: only-train-once imports here, but its HESSO arm is not wired into the "
                        "trainer yet (issue 25)")  # fmt: skip
    if sparsity_weight > 0:
        raise UserError(f"method={name} does not use the group-lasso strength: lambda={sparsity_weight:g} must be 0")
    targets = {k: sparsity.pop(k, None) for k in _TARGET_KEYS}
    if targets["target"] is not None:
        raise UserError(f"method={name} reaches a MACs budget: use sparsity.target_macs, not sparsity.target")
    if targets["target_macs"] is None:
        raise UserError(f"method={name} needs a MACs budget: sparsity.target_macs=<pruned/dense MACs>, e.g. 0.25")
    known = {f.name for f in fields(PeerSettings)} - {"name", "target_macs"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UserError(f"method.{unknown[0]}: unknown option of method={name}; valid: {', '.join(sorted(known))}")
    return _check(PeerSettings(name=name, target_macs=float(targets["target_macs"]), **options))
