"""A checkpoint whose data moved: point its config at the new folder (``data_root=``)."""

from __future__ import annotations

from lightning_sparse_mtl.core.errors import UserError
from lightning_sparse_mtl.core.validate import check_folder


def point_data_at(cfg: dict, data_root: str | None = None) -> dict:
    """A checkpoint's (plain) config with its data moved to ``data_root`` (None: unchanged)."""
    data = cfg["data"]
    if data_root is not None:
        check_folder("data_root", data_root)
        dataset = data.get("dataset") if isinstance(data.get("dataset"), dict) else {}
        if "root" not in data and "root" not in dataset:
            name = str(dataset.get("_target_", "this dataset")).rpartition(".")[2]
            raise UserError(f"data_root={data_root}: the checkpoint's dataset ({name}) reads no data folder "
                            "(it is built in); drop data_root")  # fmt: skip
        data["root"] = data_root
        if "root" in dataset:
            data["dataset"]["root"] = data_root
    return cfg


def measured_input_size(cfg: dict, command: str) -> list[int]:
    """(H, W) the model is measured at: ``data.input_size``, else one test image (a one-line hint when it is gone)."""
    from lightning_sparse_mtl.data.datamodule import input_size_of  # late: the prune command starts fast

    try:
        return list(input_size_of(cfg))
    except UserError as err:
        raise UserError(f"{err} -- {command} reads one test image for the input size: pass data_root=<folder now "
                        "holding the data>") from None  # fmt: skip
