"""``validate_train_config``: every key of the train config checked before the first step (helpers in validate.py)."""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
from omegaconf import DictConfig, OmegaConf

from lightning_sparse_mtl.core.errors import UserError
from lightning_sparse_mtl.core.optim_checks import (  # noqa: F401 - check_optimizer_objects: re-exported
    check_optimizer_class,
    check_optimizer_objects,
    check_scheduler_class,
)
from lightning_sparse_mtl.core.safe_load import check_is_data
from lightning_sparse_mtl.core.stored_config import check_nested_targets
from lightning_sparse_mtl.core.validate import (
    ACCELERATORS,
    PRECISIONS,
    check_bool,
    check_choice,
    check_int,
    check_number,
    check_optional_file,
    check_prune_options,
    check_regexes,
    get,
    instantiate_checked,
    is_number,
    locate_class,
    normalize_tasks,
    trainer_arg_names,
    unknown_keys,
)  # fmt: skip
from lightning_sparse_mtl.peers.settings import peer_settings
from lightning_sparse_mtl.runs.group_schemas import check_group_types
from lightning_sparse_mtl.runs.validate_objects import check_data_objects, check_keys, check_object_kwargs

PRUNE_KEYS = ("after_train", "latency_repeats", "min_run_time", "batch_sizes", "round_to", "fold_bn", "channels_last",
              "threads", "export")  # fmt: skip
T = TypeVar("T")
EXTRA_RESULT_KEYS = ("sparsity/group_sparsity", "sparsity/weight_sparsity", "params", "wall_time_s")


def validate_train_config(cfg: Any) -> list[str]:
    """Check the whole train config (no data is read); returns the task list. Raises a one-line UserError."""
    from lightning_sparse_mtl.sparsity.controller import validate_sparsity_weight

    lam = validate_sparsity_weight(get(cfg, "lambda"))
    check_nested_targets(cfg)  # before the optimizer and scheduler are instantiated below
    check_int("seed", get(cfg, "seed"), 0, 2**32 - 1, example=0)
    check_trainer(get(cfg, "trainer") or {})
    launcher = OmegaConf.select(cfg, "hydra.launcher._target_", default=None) if isinstance(cfg, DictConfig) else None
    if not launcher or "basic_launcher" in str(launcher):  # a cluster launcher (submitit) starts the nodes itself
        check_num_nodes(get(cfg, "trainer.num_nodes", 1))
    check_data(get(cfg, "data") or {})
    check_data_objects(get(cfg, "data") or {})
    specs = check_tasks(cfg)
    tasks = [s.name for s in specs]
    check_task_weights(get(cfg, "task_weights"), tasks)
    check_model(cfg, specs)
    check_weighting(get(cfg, "weighting"))
    opt_cls = check_optimizer_class(cfg)
    check_sparsity(get(cfg, "sparsity") or {}, lam, opt_cls)
    check_group_types(cfg)  # a wrong type the checks above let through (they give ranges and names): one schema
    peer_settings(get(cfg, "method"), dict(get(cfg, "sparsity") or {}), lam)  # method=<arm> and its options
    check_optimizer(cfg)
    check_optional_file("ckpt_path", get(cfg, "ckpt_path"))
    trust = check_bool("trust_checkpoint", get(cfg, "trust_checkpoint", False))
    if get(cfg, "ckpt_path") is not None:
        check_is_data(get(cfg, "ckpt_path"), trust=trust)  # a crafted resume file is refused before the run dir
    check_choice("test_ckpt", get(cfg, "test_ckpt", "last"), ("last", "best"))
    if get(cfg, "test_ckpt", "last") == "best" and not get(cfg, "callbacks.model_checkpoint.monitor"):
        raise UserError("test_ckpt=best needs a monitored metric: callbacks.model_checkpoint.monitor=val/seg/miou "
                        "(and callbacks.model_checkpoint.mode=max), or test_ckpt=last")  # fmt: skip
    check_baselines_and_metric(cfg, specs)
    check_keys("prune", get(cfg, "prune") or {}, list(PRUNE_KEYS))
    check_prune_options(get(cfg, "prune") or {}, "prune.", "latency_repeats")
    check_precision(get(cfg, "trainer.precision"), lam, get(cfg, "sparsity") or {})
    for group in ("callbacks", "logger"):  # not resolved: their paths interpolate ${hydra:runtime.output_dir}
        nodes = cfg.get(group) if hasattr(cfg, "get") else None
        for name in list(nodes or {}):
            node = nodes[name]
            if node is not None:
                if not isinstance(node, Mapping):
                    raise UserError(f"{group}.{name} must be a config with _target_ or null, got {node!r}")
                check_object_kwargs(f"{group}.{name}", node)
    return tasks


def named(key: str, lookup: Callable[[Any], T], name: Any) -> T:
    """A registry lookup whose one-line error names the config key (``model.head: unknown head 'x'; ...``)."""
    try:
        return lookup(name)
    except UserError as err:
        raise UserError(f"{key}: {err}") from None


def check_encoder_builds(name: str, output_stride: int) -> None:
    """Name and dilation checked before the run dir exists: built on the meta device (no memory, no weights);
    an encoder whose constructor reads tensor values (``mit_b0``: ``.item()``) is built for real instead."""
    from lightning_sparse_mtl.models.encoders import build_encoder

    try:
        with torch.device("meta"):
            build_encoder(name, output_stride)
        return
    except UserError as err:
        if "meta" not in str(err):
            raise
    except Exception:  # noqa: BLE001 - any meta-device failure: the real build below gives the verdict
        pass
    build_encoder(name, output_stride)


def check_tasks(cfg: Any) -> list:
    from lightning_sparse_mtl.mtl.tasks import build_tasks

    num_classes = get(cfg, "data.num_classes")
    if num_classes is not None:
        check_int("data.num_classes", num_classes, 1, example=13)
    attributes = get(cfg, "data.attributes") or []
    if not isinstance(attributes, list) or not all(isinstance(a, str) for a in attributes):
        raise UserError(f"data.attributes must be a list of attribute names, got {attributes!r}")
    return build_tasks(normalize_tasks(get(cfg, "tasks")), num_classes, attributes)


def check_task_weights(weights: Any, tasks: list[str]) -> None:
    if weights is None:
        return
    if not isinstance(weights, Mapping):
        raise UserError(
            f"task_weights must be a mapping {{task: weight}}, got {weights!r}; e.g. task_weights={{seg: 1}}"
        )
    for task, w in weights.items():
        if task not in tasks:
            raise UserError(f"task_weights names {task!r}, which is not in tasks ({', '.join(tasks)}); remove it")
        if not is_number(w) or not math.isfinite(w) or w < 0:
            raise UserError(f"task_weights.{task} must be a finite number >= 0, got {w!r}")
    if weights and all(weights.get(t, 1.0) == 0 for t in tasks):
        raise UserError("task_weights are all 0: nothing would be trained; give at least one task a weight > 0")


def check_model(cfg: Any, specs: list) -> None:
    from lightning_sparse_mtl.models.heads import DENSE_HEADS
    from lightning_sparse_mtl.models.net import MultiTaskNet
    from lightning_sparse_mtl.models.pretrained import input_stats

    model = get(cfg, "model") or {}
    if not isinstance(model, Mapping):
        raise UserError(f"model must be a config of MultiTaskNet arguments, got {model!r}")
    unknown_keys("model", model, [p for p in inspect.signature(MultiTaskNet.__init__).parameters if p not in
                                  ("self", "tasks")])  # fmt: skip
    if not isinstance(model.get("encoder"), str):
        raise UserError(f"model.encoder must be an encoder name, got {model.get('encoder')!r}")
    stride = model.get("output_stride", 32)
    if type(stride) is not int or stride not in (8, 16, 32):  # 8.0 == 8, but the encoder needs an int
        raise UserError(f"model.output_stride must be one of 8, 16, 32; got {stride!r}")
    normalize = model.get("normalize", "auto")
    if normalize != "auto":  # auto depends on the weights, checked when they load
        try:
            input_stats(model["encoder"], None, normalize)
        except (TypeError, ValueError):
            raise UserError(
                f"model.normalize needs mean: [r, g, b] and std: [r, g, b] as numbers, got {normalize!r}"
            ) from None
    check_encoder_builds(model["encoder"], model.get("output_stride", 32))
    named("model.head", DENSE_HEADS.get, model.get("head", "conv"))  # "model.head: unknown head 'x'; valid: ..."
    check_int("model.head_channels", model.get("head_channels", 64), 1, example=64)
    heads = {model.get("head", "conv"), *(dict(model.get("head_overrides") or {}).values())}
    if "aspp" in heads and get(cfg, "data.batch_size") == 1:  # its image-pooling branch: BatchNorm of a 1x1 map
        raise UserError("model.head=aspp normalises a pooled 1x1 map with BatchNorm, which needs >= 2 images per "
                        "batch: use data.batch_size >= 2 (or model.head=conv)")  # fmt: skip
    overrides = model.get("head_overrides")
    if overrides is not None:
        if not isinstance(overrides, Mapping):
            raise UserError(f"model.head_overrides must be a mapping {{task: head}}, got {overrides!r}")
        dense = [s.name for s in specs if s.dense]
        for task, head in overrides.items():
            if task not in dense:
                raise UserError(f"model.head_overrides names {task!r}, not a dense task of this run "
                                f"({', '.join(dense) or 'none'}); remove it")  # fmt: skip
            try:
                DENSE_HEADS.get(head)
            except UserError as err:
                raise UserError(f"model.head_overrides.{task}: {err}") from None
    weights = model.get("weights")
    if weights is not None:
        from lightning_sparse_mtl.models.pretrained import is_tag

        if not (isinstance(weights, str) and is_tag(weights)):  # tags (imagenet, ...) are checked when loading
            check_optional_file("model.weights", weights)


def check_weighting(node: Any) -> None:
    from lightning_sparse_mtl.mtl.weighting import WEIGHTINGS

    if node is not None and not isinstance(node, Mapping):
        raise UserError(f"weighting must be a config with a name (fixed, uncertainty, dwa), got {node!r}")
    node = dict(node or {"name": "fixed"})
    cls = named("weighting.name", WEIGHTINGS.get, node.pop("name", "fixed"))
    options = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "tasks", "weights")]
    unknown_keys("weighting", node, ["name", *options])
    if "temperature" in node:
        check_number("weighting.temperature", node["temperature"], 0, lo_open=True, example=2.0)


def check_optimizer(cfg: Any) -> None:
    """Values of the optimizer and scheduler, then both instantiated on a dummy parameter."""
    node = get(cfg, "optimizer")
    check_number("optimizer.lr", node.get("lr"), 0, lo_open=True, example="1e-3")
    for key in ("weight_decay", "momentum", "eps"):
        if node.get(key) is not None:
            check_number(f"optimizer.{key}", node[key], 0, example=0.0)
    betas = node.get("betas")
    if betas is not None and not (isinstance(betas, list) and len(betas) == 2
                                  and all(is_number(b) and 0 <= b < 1 for b in betas)):  # fmt: skip
        raise UserError(
            f"optimizer.betas must be two numbers in [0, 1), got {betas!r}; e.g. optimizer.betas=[0.9,0.999]"
        )
    params = [torch.nn.Parameter(torch.zeros(1))]
    optimizer = instantiate_checked("optimizer", node, params=params)
    sched = get(cfg, "scheduler")
    if sched:
        if not isinstance(sched, Mapping):
            raise UserError(f"scheduler must be a config with _target_ or null, got {sched!r}")
        sched = dict(sched)
        check_choice("scheduler.interval", sched.pop("interval", "epoch"), ("epoch", "step"))
        for key in ("T_max", "step_size", "total_steps", "T_0"):
            if key in sched:
                check_int(f"scheduler.{key}", sched[key], 1, example=10)
        check_scheduler_class(locate_class("scheduler", sched.get("_target_")), sched.get("_target_"))
        instantiate_checked("scheduler", sched, optimizer=optimizer)


def sparsity_keys() -> list[str]:
    """Every key a ``sparsity`` config may hold: GroupSparsity's and from_module's arguments, and ``module``."""
    import inspect

    from lightning_sparse_mtl.sparsity.controller import GroupSparsity
    from lightning_sparse_mtl.sparsity.target import TARGET_KEYS

    names = set(inspect.signature(GroupSparsity.__init__).parameters) | set(
        inspect.signature(GroupSparsity.from_module).parameters
    )
    internal = {"self", "cls", "sparsity_weight", "kwargs", "prefix", "example_inputs", "shared"}
    return sorted((names - internal) | {"module", *TARGET_KEYS})


def check_sparsity(sp: Mapping, lam: float, opt_cls: type) -> None:
    from lightning_sparse_mtl.sparsity import controller
    from lightning_sparse_mtl.sparsity.target import target_settings

    unknown_keys("sparsity", sp, sparsity_keys())
    prox = sp.get("prox", "adam")
    controller.PROX.get(prox)
    for key, lo, hi in (("target_lambda_init", 0, None), ("max_layer_sparsity", 0, 1), ("target_epoch", 0, None)):
        if sp.get(key) is not None:  # types here; ranges and conflicts in target_settings
            check_number(f"sparsity.{key}", sp[key], lo, hi, lo_open=True, example={"target_epoch": 7}.get(key, 0.5))
    if sp.get("target_every") is not None:
        check_int("sparsity.target_every", sp["target_every"], 1, example=10)
    target_settings(dict(sp), lam, prox)  # target / target_macs / lambda conflicts, before any work
    check_choice("sparsity.schedule", sp.get("schedule", "constant"), controller.SCHEDULES)
    from lightning_sparse_mtl.sparsity.costs import GROUP_WEIGHTS

    check_choice("sparsity.group_weight", sp.get("group_weight", "sqrt_size"), sorted(GROUP_WEIGHTS))
    check_choice("sparsity.groups", sp.get("groups", "input"), controller.GROUPINGS)
    for key in ("penalty_grad", "revive", "exclude_image_conv", "coupled_heads"):
        if key in sp:
            check_bool(f"sparsity.{key}", sp[key])
    if sp.get("penalty_in_loss") is not None:
        check_bool("sparsity.penalty_in_loss", sp["penalty_in_loss"])
    if "compile" in sp and sp["compile"] not in (True, False, "auto"):
        raise UserError(f"sparsity.compile must be true, false or auto; got {sp['compile']!r}")
    check_int("sparsity.warmup_epochs", sp.get("warmup_epochs", 0), 0, example=0)
    check_int("sparsity.ramp_epochs", sp.get("ramp_epochs", 0), 0, example=0)
    check_int("sparsity.newton_iters", sp.get("newton_iters", 3), 1, example=3)
    if "warm_iters" in sp:
        check_int("sparsity.warm_iters", sp["warm_iters"], 0, example=2)
    check_choice("sparsity.module", sp.get("module", "encoder"), ("encoder", "heads"))
    check_regexes("sparsity.exclude", sp.get("exclude") or [])
    if lam > 0 and prox == "adam" and not issubclass(opt_cls, torch.optim.Adam | torch.optim.AdamW):
        raise UserError(f"sparsity.prox=adam thresholds in Adam's metric and needs optimizer torch.optim.Adam or "
                        f"AdamW, got {opt_cls.__name__}; use sparsity=prox (plain prox) with it")  # fmt: skip


def check_trainer(tr: Mapping) -> None:
    unknown_keys("trainer", tr, trainer_arg_names())
    epochs = check_int("trainer.max_epochs", tr.get("max_epochs", 1) if tr.get("max_epochs") is not None else -1, -1)
    steps = check_int("trainer.max_steps", tr.get("max_steps", -1), -1)
    if epochs == 0 or steps == 0:
        raise UserError("trainer.max_epochs/max_steps = 0 trains nothing; give at least 1 (e.g. trainer.max_epochs=5)")
    precision = tr.get("precision", "32-true")
    if str(precision) not in PRECISIONS or isinstance(precision, bool | float):
        raise UserError(f"trainer.precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if not isinstance(tr.get("accelerator", "auto"), str) or tr.get("accelerator", "auto") not in ACCELERATORS:
        raise UserError(f"trainer.accelerator must be one of {', '.join(ACCELERATORS)}; got {tr.get('accelerator')!r}")
    if tr.get("accelerator") in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(f"trainer.accelerator={tr['accelerator']} but no CUDA GPU is visible "
                        "(torch.cuda.is_available() is False); use trainer.accelerator=cpu or auto")  # fmt: skip
    devices = tr.get("devices", "auto")
    if not (devices == "auto" or (isinstance(devices, int) and not isinstance(devices, bool) and devices >= -1
            and devices != 0) or (isinstance(devices, list) and all(isinstance(d, int) for d in devices) and devices)
            or (isinstance(devices, str) and devices.strip("-").replace(",", "").isdigit())):  # fmt: skip
        raise UserError(f"trainer.devices must be auto, a count >= 1, -1 or a list of ids; got {devices!r}")
    for key, lo in (("log_every_n_steps", 1), ("accumulate_grad_batches", 1), ("num_nodes", 1),
                    ("num_sanity_val_steps", -1)):  # fmt: skip
        if tr.get(key) is not None:
            check_int(f"trainer.{key}", tr[key], lo)
    if tr.get("check_val_every_n_epoch") is not None:
        check_int("trainer.check_val_every_n_epoch", tr["check_val_every_n_epoch"], 1)
    if tr.get("gradient_clip_val") is not None:
        check_number("trainer.gradient_clip_val", tr["gradient_clip_val"], 0, example=1.0)
    for split in ("train", "val", "test"):
        key, value = f"trainer.limit_{split}_batches", tr.get(f"limit_{split}_batches")
        if value is None:
            continue
        if isinstance(value, bool) or not is_number(value) or value < 0 or (isinstance(value, float) and value > 1):
            raise UserError(f"{key} must be a fraction in [0, 1] or a batch count >= 0, got {value!r}")
        if value == 0 and split != "val":
            raise UserError(f"{key}=0 runs no {split} batch: the run would report an untrained model; give >= 1")
    vci = tr.get("val_check_interval")
    if vci is not None and (
        isinstance(vci, bool) or not is_number(vci) or vci <= 0 or (isinstance(vci, float) and vci > 1)
    ):
        raise UserError(f"trainer.val_check_interval must be a fraction in (0, 1] or a step count >= 1, got {vci!r}")
    for key in ("enable_model_summary", "enable_progress_bar"):
        if key in tr:
            check_bool(f"trainer.{key}", tr[key])
    if tr.get("deterministic") not in (None, True, False, "warn"):
        raise UserError(f"trainer.deterministic must be true, false or warn; got {tr['deterministic']!r}")
    fdr = tr.get("fast_dev_run", False)
    if not isinstance(fdr, bool) and not (isinstance(fdr, int) and fdr >= 0):
        raise UserError(f"trainer.fast_dev_run must be true, false or a batch count >= 0; got {fdr!r}")
    if not isinstance(tr.get("strategy", "auto"), str):
        raise UserError(f"trainer.strategy must be a strategy name (auto, ddp, ...); got {tr['strategy']!r}")


def check_precision(precision: Any, lam: float, sp: Mapping) -> None:
    """Pure half precision with sparsity is refused: the pruning figures and the prune step run float32 probes."""
    sparse = lam > 0 or sp.get("target") is not None or sp.get("target_macs") is not None
    if sparse and str(precision) in ("bf16-true", "16-true"):
        raise UserError(f"trainer.precision={precision} with lambda > 0 or a sparsity target is not supported: the "
                        "pruning figures and the prune step run float32 probes through the net; use "
                        f"trainer.precision={str(precision).replace('true', 'mixed')} (float32 weights)")  # fmt: skip


def check_num_nodes(num_nodes: Any) -> None:
    """``trainer.num_nodes > 1`` needs a cluster that starts the other nodes (otherwise the run waits forever)."""
    if not isinstance(num_nodes, int) or num_nodes <= 1:
        return
    from lightning.fabric.plugins import environments as envs

    clusters = (envs.SLURMEnvironment, envs.TorchElasticEnvironment, envs.LSFEnvironment, envs.MPIEnvironment)
    if any(env.detect() for env in clusters) or {"NODE_RANK", "MASTER_ADDR"} <= set(os.environ):
        return
    raise UserError(f"trainer.num_nodes={num_nodes} but no cluster starts the other nodes (no SLURM, torchrun, LSF "
                    "or MPI environment; NODE_RANK and MASTER_ADDR unset), so the run would wait forever: use "
                    "launcher=slurm, torchrun, or num_nodes=1 with trainer.devices=N on one machine")  # fmt: skip


def check_data(data: Mapping) -> None:
    check_int("data.batch_size", data.get("batch_size", 32), 1, example=16)
    if data.get("eval_batch_size") is not None:
        check_int("data.eval_batch_size", data["eval_batch_size"], 1, example=32)
    check_int("data.num_workers", data.get("num_workers", 0), 0, example=0)
    if "pin_memory" in data:
        check_bool("data.pin_memory", data["pin_memory"])
    root = data.get("root")
    if root is not None and not isinstance(root, str):
        raise UserError(f"data.root must be a folder path, got {root!r}")
    splits = data.get("splits") or {}
    if not isinstance(splits, Mapping):
        raise UserError(f"data.splits must map train/val/test to their options, got {splits!r}")
    for split, opts in splits.items():
        if split not in ("train", "val", "test"):
            raise UserError(f"data.splits.{split}: unknown split; valid: train, val, test")
        if not isinstance(opts, Mapping):
            raise UserError(f"data.splits.{split} must map option names to values, got {opts!r}; "
                            f"e.g. data.splits.{split}={{num_scenes: 100}}")  # fmt: skip
        if isinstance(opts, Mapping) and "num_scenes" in opts:
            check_int(f"data.splits.{split}.num_scenes", opts["num_scenes"], 1, example=100)
    dataset = data.get("dataset") or {}
    for key in ("image_size",):
        if isinstance(dataset, Mapping) and key in dataset:
            check_int(f"data.dataset.{key}", dataset[key], 8, example=48)
    cards = dataset.get("cards", [2, 4]) if isinstance(dataset, Mapping) else [2, 4]
    if not (isinstance(cards, list) and len(cards) == 2 and all(type(c) is int for c in cards)
            and 1 <= cards[0] <= cards[1] <= 254):  # fmt: skip
        raise UserError(f"data.dataset.cards must be [min, max] cards per image with 1 <= min <= max <= 254, got "
                        f"{cards!r}; e.g. data.dataset.cards=[2,4]")  # fmt: skip
    if isinstance(dataset, Mapping) and "seed" in dataset:
        check_int("data.dataset.seed", dataset["seed"], 0, 2**32 - 1, example=0)
    if isinstance(dataset, Mapping) and "val_fraction" in dataset:
        check_number("data.dataset.val_fraction", dataset["val_fraction"], 0, 0.99, example=0.1)


def check_baselines_and_metric(cfg: Any, specs: list) -> set[str]:
    """``baselines`` are loaded now (files must exist); ``optimized_metric`` must be a key the run will write."""
    from lightning_sparse_mtl.mtl.delta_m import load_baselines, metric_directions

    keys = set(metric_directions(specs)) | set(EXTRA_RESULT_KEYS)
    baselines = get(cfg, "baselines")
    if baselines is not None:
        if not isinstance(baselines, Mapping | list | str):
            raise UserError(f"baselines must be {{metric: value}} or a list of results.json paths, got {baselines!r}")
        loaded = load_baselines(baselines)
        overlap = set(loaded) & set(metric_directions(specs))
        if not overlap:
            held = ", ".join(sorted(loaded)) or "none"
            raise UserError(f"baselines share no metric with this run's tasks (they hold {held}); "
                            "give the single-task runs of these tasks")  # fmt: skip
        zero = sorted(k for k in overlap if loaded[k] == 0)
        if zero:  # found now, not after training (delta_m divides by each baseline)
            raise UserError(f"baseline {zero[0]} is 0; Δm divides by the baseline, give a non-zero value")
        keys.add("test/delta_m")
    metric = get(cfg, "optimized_metric")
    if metric is not None and (not isinstance(metric, str) or metric not in keys):
        hint = " (test/delta_m needs baselines=...)" if metric == "test/delta_m" else ""
        raise UserError(
            f"optimized_metric {metric!r} is not a key this run writes{hint}; valid: {', '.join(sorted(keys))}"
        )
    return keys
