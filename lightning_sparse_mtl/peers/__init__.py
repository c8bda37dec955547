"""The peers: other structured-pruning methods run through the same harness (``method=<name>``).

Same data module, network, heads, losses, metrics, optimizer, epochs, MACs budget (``sparsity.target_macs``) and
prune -> export -> speed path as this project's group lasso; only the way channels are chosen and removed differs.

- ``tp_magnitude``: Torch-Pruning's global group-magnitude pruning after dense training, iterative, then fine-tuning;
- ``tp_group_norm``: Torch-Pruning's GroupNormPruner (DepGraph's group regulariser) sparse training, prune, fine-tune;
- ``tp_uniform``: the even-width baseline: Torch-Pruning's local pruning (every channel space keeps the same fraction,
  multiples of 16) at the first step, then the whole budget trained at that width;
- ``oto_hesso``: Only-Train-Once's HESSO (optional extra ``peers``); refused in one line when it cannot run.

``settings`` reads the ``method`` config, ``tp`` is the Lightning callback of the Torch-Pruning arms, ``densify``
maps a physically pruned net back onto the dense architecture (zeros where channels went), ``oto`` the OTO arm.
"""

from lightning_sparse_mtl.peers.settings import GROUP_LASSO, METHODS, PEERS, PeerSettings, method_name, peer_settings

__all__ = ["GROUP_LASSO", "METHODS", "PEERS", "PeerSettings", "method_name", "peer_settings"]
