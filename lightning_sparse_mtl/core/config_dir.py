"""Where the Hydra configs live (no heavy imports: the prune command composes its config from here)."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent


def find_config_dir() -> str:
    """The Hydra config directory: ``lightning_sparse_mtl/conf`` in an installed wheel (setup.py maps the repo's
    top-level ``conf/`` there), the repo's ``conf/`` in a checkout or an editable install."""
    for candidate in (_PACKAGE / "conf", _PACKAGE.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise RuntimeError(f"lightning_sparse_mtl: no Hydra configs next to {_PACKAGE} (a broken install?)")


CONFIG_DIR = find_config_dir()
