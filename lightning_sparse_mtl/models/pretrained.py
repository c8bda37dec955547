"""Pretrained encoder weights: local files (torchvision / timm / this project's checkpoints) or smp/timm tags.

``model.weights`` is either a path or a tag that smp (``imagenet``, ``ssl``, ``swsl``, ...) or timm know for the
encoder. Files are matched to the encoder strictly: every encoder tensor must be present with the same shape;
classifier tensors (``fc.*``, ``classifier.*``, ``head.*``, ...) are expected extras and only reported.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from urllib.parse import urlparse

import torch
from segmentation_models_pytorch.encoders import encoders as SMP_ENCODERS
from torch import nn

from lightning_sparse_mtl.core.errors import UserError
from lightning_sparse_mtl.core.safe_load import UnsafeFileError, read_torch_file

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLASSIFIER_PREFIXES = ("fc.", "classifier.", "head.", "last_linear.", "_fc.", "heads.")
WRAPPER_PREFIXES = ("module.", "model.", "backbone.", "encoder.", "net.encoder.", "_orig_mod.")
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".tar")
_RESTORING = False


@contextlib.contextmanager
def restoring() -> Iterator[None]:
    """Inside this block encoders are built without reading their pretrained weights (a checkpoint restores them)."""
    global _RESTORING
    previous, _RESTORING = _RESTORING, True
    try:
        yield
    finally:
        _RESTORING = previous


def is_restoring() -> bool:
    return _RESTORING


def known_tags(encoder: str) -> list[str]:
    """The weight tags smp (or, for ``tu-`` encoders, timm) knows for ``encoder``."""
    if encoder.startswith("tu-"):
        import timm

        model = encoder[3:].split(".")[0]
        return ["imagenet"] + sorted({n.split(".", 1)[1] for n in timm.list_pretrained(f"{model}.*") if "." in n})
    return sorted((SMP_ENCODERS.get(encoder, {}).get("pretrained_settings") or {}).keys())


def is_tag(weights: str | os.PathLike) -> bool:
    """A value without a path separator or a weights-file suffix that names no existing file is a tag."""
    text = os.fspath(weights)
    return not (os.path.exists(text) or os.sep in text or "/" in text or text.lower().endswith(WEIGHT_SUFFIXES))


# ---- local files --------------------------------------------------------------------------------------------


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Tensors of a weights file: a plain state dict, ``{"state_dict"|"model"|"model_state": ...}`` or safetensors.

    A Lightning checkpoint of this project contributes only its ``state_dict`` keys containing ``encoder``.
    """
    if not os.path.isfile(path):
        raise UserError(f"encoder weights file not found: {path}; give a local state-dict file, a tag or weights=null")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            obj = load_file(path, device="cpu")
        else:
            obj = read_torch_file(path, hint="save its state_dict() (plain tensors) instead")  # data, never code
    except UnsafeFileError:
        raise
    except Exception as err:  # noqa: BLE001 - any unreadable file becomes one line
        raise UserError(
            f"cannot read encoder weights {path} ({type(err).__name__}); is it a state-dict file?"
        ) from None
    lightning = isinstance(obj, Mapping) and "state_dict" in obj and "pytorch-lightning_version" in obj
    for key in ("state_dict", "model", "model_state", "model_state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not any(torch.is_tensor(v) for v in obj.values()):
        raise UserError(f"{path} holds no state dict (found {type(obj).__name__}); save model.state_dict() instead")
    state = {str(k): v for k, v in obj.items() if torch.is_tensor(v)}
    if lightning:
        state = {k[k.index("encoder.") + len("encoder.") :]: v for k, v in state.items() if "encoder." in k}
        if not state:
            raise UserError(
                f"{path} is a Lightning checkpoint without encoder weights (no state_dict key has 'encoder')"
            )
    return state


def _align(state: Mapping[str, torch.Tensor], expected: Sequence[str]) -> dict[str, torch.Tensor]:
    """Strip or add the wrapper prefix (``module.``, ``model.``, ...) that makes most keys match the encoder's."""
    expected_set = set(expected)
    candidates = [dict(state)]
    for prefix in WRAPPER_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            candidates.append({(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()})
        candidates.append({prefix + k: v for k, v in state.items()})
    return max(candidates, key=lambda c: len(expected_set.intersection(c)))


def _is_classifier(key: str) -> bool:
    return key.startswith(CLASSIFIER_PREFIXES) or key.startswith(tuple("model." + p for p in CLASSIFIER_PREFIXES))


def _names(keys: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_into(encoder: nn.Module, state: Mapping[str, torch.Tensor], source: str, name: str) -> dict[str, list[str]]:
    """Copy ``state`` into ``encoder`` strictly (shapes, no missing tensor, no foreign tensor but classifiers).

    Returns ``{"loaded": [...], "missing": [...], "unexpected": [...]}`` (missing: only ``num_batches_tracked``).
    """
    own = encoder.state_dict()
    state = _align(state, list(own))
    for key, value in state.items():
        if key in own and tuple(value.shape) != tuple(own[key].shape):
            raise UserError(
                f"encoder weights {source} do not fit {name}: {key} has shape {tuple(value.shape)} in the file, "
                f"{tuple(own[key].shape)} in the encoder"
            )
    missing = [k for k in own if k not in state]
    real_missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if real_missing:
        raise UserError(
            f"encoder weights {source} do not fit {name}: {len(real_missing)} encoder tensors are missing from the "
            f"file, first {real_missing[0]} {tuple(own[real_missing[0]].shape)}"
        )
    unexpected = [k for k in state if k not in own]
    foreign = [k for k in unexpected if not _is_classifier(k)]
    if foreign:
        raise UserError(
            f"encoder weights {source} do not fit {name}: {len(foreign)} tensors of the file have no place in the "
            f"encoder, first {foreign[0]} {tuple(state[foreign[0]].shape)} (weights of another architecture?)"
        )
    encoder.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    loaded = [k for k in own if k in state]
    log.info(
        "encoder %s: loaded %d/%d tensors from %s; missing: %s; unexpected (classifier, ignored): %s",
        name, len(loaded), len(own), source, _names(missing) or "none", _names(unexpected) or "none",
    )  # fmt: skip
    return {"loaded": loaded, "missing": missing, "unexpected": unexpected}


# ---- tags (downloads) ---------------------------------------------------------------------------------------


def _offline_reason() -> str | None:
    """Why the Hugging Face hub (where smp and timm keep their weights) cannot be reached, None when it can."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=5).close()
    except OSError as err:
        return f"{url.hostname} unreachable: {err.strerror or type(err).__name__}"
    return None


def _no_download(encoder: str, tag: str, reason: str) -> UserError:
    how = f"get_encoder('{encoder}', weights={'True' if encoder.startswith('tu-') else repr(tag)})"
    return UserError(
        f"cannot download {tag!r} weights for encoder {encoder} ({reason}); pass a local file instead: "
        f"model.weights=/path/to/weights.pth (a torchvision or timm state dict, or one saved on a machine with "
        f"network with torch.save(segmentation_models_pytorch.encoders.{how}.state_dict(), path))"
    )


def _hub_files(encoder: str, tag: str) -> tuple[str, str, list[str]]:
    """(repo id, revision, files) on the Hugging Face hub holding smp weights ``tag`` of ``encoder``."""
    settings = SMP_ENCODERS[encoder]["pretrained_settings"][tag]
    return settings["repo_id"], settings["revision"], ["config.json", "model.safetensors"]


def _cached(repo: str, filename: str, revision: str | None = None) -> str | None:
    """Local path of a hub file already in the Hugging Face cache, None if it is not there."""
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo, filename=filename, revision=revision, local_files_only=True)
    except (OSError, ValueError):  # LocalEntryNotFoundError is an OSError
        return None


def _check_tag(encoder: str, tag: str) -> None:
    tags = known_tags(encoder)
    if tag not in tags:
        raise UserError(
            f"unknown weights {tag!r} for encoder {encoder}; valid: {', '.join(tags) or 'none (random init only)'}, "
            "or a local file path"
        )


def _timm_name(encoder: str, tag: str) -> str:
    return encoder[3:].split(".")[0] + ("" if tag == "imagenet" else f".{tag}")


def fetch_tag(encoder: str, tag: str) -> dict[str, torch.Tensor]:
    """The state dict of smp/timm weights ``tag`` for ``encoder`` (Hugging Face cache first, then a download)."""
    _check_tag(encoder, tag)
    if encoder.startswith("tu-"):
        import timm
        from segmentation_models_pytorch.encoders import get_encoder

        model = _timm_name(encoder, tag)
        hub = getattr(timm.models.get_pretrained_cfg(model), "hf_hub_id", None)
        if not (hub and _cached(hub, "model.safetensors")) and (why := _offline_reason()):
            raise _no_download(encoder, tag, why)
        try:
            return get_encoder(f"tu-{model}", weights=True).state_dict()
        except Exception as err:  # noqa: BLE001 - network / hub errors become one line
            raise _no_download(encoder, tag, f"{type(err).__name__}: {str(err).splitlines()[0][:120]}") from None
    from huggingface_hub import hf_hub_download
    from safetensors.torch import load_file

    repo, rev, files = _hub_files(encoder, tag)
    paths = [_cached(repo, f, rev) for f in files]
    if None in paths:
        if why := _offline_reason():
            raise _no_download(encoder, tag, why)
        try:
            paths = [hf_hub_download(repo, filename=f, revision=rev) for f in files]
        except Exception as err:  # noqa: BLE001
            raise _no_download(encoder, tag, f"{type(err).__name__}: {str(err).splitlines()[0][:120]}") from None
    return load_file(paths[1], device="cpu")


def tag_stats(encoder: str, tag: str) -> tuple[tuple, tuple]:
    """Input mean/std of weights ``tag`` (smp's hub config, cached by :func:`fetch_tag`; timm's pretrained config)."""
    if encoder.startswith("tu-"):
        import timm

        cfg = timm.models.get_pretrained_cfg(_timm_name(encoder, tag))
        return tuple(cfg.mean), tuple(cfg.std)
    repo, rev, files = _hub_files(encoder, tag)
    path = _cached(repo, files[0], rev)
    if path is None:
        return IMAGENET_MEAN, IMAGENET_STD
    with open(path) as f:
        config = json.load(f)
    return tuple(config["mean"]), tuple(config["std"])


# ---- entry point used by models.encoders --------------------------------------------------------------------


def default_stats(encoder: str) -> tuple[tuple, tuple]:
    """Mean/std for a local weights file: timm's pretrained config for ``tu-`` encoders, else ImageNet's."""
    if encoder.startswith("tu-"):
        import timm

        with contextlib.suppress(Exception):
            cfg = timm.models.get_pretrained_cfg(encoder[3:])
            if cfg is not None:
                return tuple(cfg.mean), tuple(cfg.std)
    return IMAGENET_MEAN, IMAGENET_STD


def load_pretrained(encoder: nn.Module, name: str, weights: str | os.PathLike) -> None:
    """Load ``weights`` (a file or a tag) into ``encoder``; nothing is read inside :func:`restoring`."""
    if is_restoring():
        return
    text = os.fspath(weights)
    if is_tag(text):
        load_into(encoder, fetch_tag(name, text), f"{name}:{text}", name)
    else:
        load_into(encoder, read_state_dict(text), text, name)


def input_stats(
    name: str, weights: str | os.PathLike | None, normalize: str | Mapping | None
) -> tuple[tuple, tuple] | None:
    """The ``(mean, std)`` inputs are normalised with, None for none.

    ``normalize``: ``auto`` (the pretrained weights' own statistics; none without weights), ``none``/None,
    ``imagenet``, or ``{mean: [r, g, b], std: [r, g, b]}``. Inside :func:`restoring` ``auto`` yields ImageNet
    placeholders (the restored state dict holds the real values).
    """
    if normalize is None or normalize == "none":
        return None
    if isinstance(normalize, Mapping):
        mean, std = (
            tuple(float(v) for v in normalize.get("mean", ())),
            tuple(float(v) for v in normalize.get("std", ())),
        )
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise UserError(
                f"model.normalize needs mean: [r, g, b] and std: [r, g, b] (std > 0), got {dict(normalize)}"
            )
        return mean, std
    if normalize == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    if normalize != "auto":
        raise UserError(
            f"model.normalize must be auto, none, imagenet or {{mean: [...], std: [...]}}, got {normalize!r}"
        )
    if weights is None:
        return None
    if is_restoring():
        return IMAGENET_MEAN, IMAGENET_STD
    text = os.fspath(weights)
    return tag_stats(name, text) if is_tag(text) else default_stats(name)
