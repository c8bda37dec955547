"""Packaging of the Hydra configs: the repo keeps ``conf/`` at the top level, the wheel ships it as
``lightning_sparse_mtl/conf`` (everything else is in pyproject.toml). ``core.configs.CONFIG_DIR`` finds either."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["lightning_sparse_mtl", "lightning_sparse_mtl.*"]), "lightning_sparse_mtl.conf"],
    package_dir={"lightning_sparse_mtl.conf": "conf"},
    package_data={"lightning_sparse_mtl.conf": ["*.yaml", "**/*.yaml"], "lightning_sparse_mtl.sparsity": ["*.c"]},
)
