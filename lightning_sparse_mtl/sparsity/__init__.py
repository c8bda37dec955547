"""The method as a library: channel-wise l1/l2 group sparsity inside ``optimizer.step()``, then physical pruning.

from lightning_sparse_mtl.sparsity import GroupSparsity, prune_zero_channels

gs = GroupSparsity.from_module(net.encoder, sparsity_weight=2e-5).attach(optimizer)
...  # a plain training loop: loss.backward(); optimizer.step()
report = prune_zero_channels(net, example_inputs)
"""

from lightning_sparse_mtl.sparsity.controller import GroupSparsity, validate_sparsity_weight
from lightning_sparse_mtl.sparsity.pruning import prune_zero_channels
from lightning_sparse_mtl.sparsity.stats import sparsity_stats

__all__ = ["GroupSparsity", "prune_zero_channels", "sparsity_stats", "validate_sparsity_weight"]
