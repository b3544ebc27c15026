"""Training recipes: YAML files validated into dataclasses, with `--set a.b=c` overrides.

A recipe has nine sections (`model`, `data`, `optim`, `train`, `checkpoint`, `logging`, `eval`, `engine`,
`finetune`), each a dataclass below. Loading rejects unknown keys (naming the valid ones), values of the
wrong type and values outside their allowed choices or range, always naming the key (as a dotted path) and
the offending value.

`model.arch` names the task (`plait.train.tasks`): `plait-lm` (the decoder LM on text, `data` is a
`DataRecipe`) or `plait-vit` (the ViT on image classification, `data` is an `ImageDataRecipe`).
`model.config` is passed to the task's config class (`PlaitConfig`, `PlaitViTConfig`), which does its own
validation.
"""

from __future__ import annotations

import dataclasses
import difflib
import glob
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from plait.eval.harness import LOCAL_TASKS

RECIPES_DIR = Path(__file__).parent / "recipes"

Precision = Literal["fp32", "bf16", "fp16"]
Schedule = Literal["cosine", "wsd", "linear", "constant"]


@dataclass
class ModelRecipe:
    arch: Literal["plait-lm", "plait-vit"] = "plait-lm"
    config: dict[str, Any] = field(default_factory=dict)  # PlaitConfig / PlaitViTConfig keyword arguments
    pretrained: str | None = (
        None  # start from a `from_pretrained` directory or hub name instead of random init
    )
    # "auto": no dense L×L mask for packed LM training on CUDA (`plait.train.attention_backend`), else sdpa
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2", "flex_attention"] = "auto"


@dataclass
class DataRecipe:
    # default = the embedded stdlib corpus; disk = a `datasets` save_to_disk folder (paths[0]); prepared =
    # the `plait-data prepare` directories of `mixture`. The others are prepared into cache_dir on first use.
    source: Literal["default", "files", "hub", "disk", "prepared"] = "default"
    paths: list[str] = field(
        default_factory=list
    )  # source: files (text, .json/.jsonl, .parquet; globs) or disk
    mixture: list[dict[str, Any]] = field(default_factory=list)  # source: prepared, [{path: dir, weight: w}]
    max_repeats: int = 10  # the most times one source is read (a source that runs out is read again)
    name: str | None = None  # source: hub dataset name
    subset: str | None = None  # source: hub dataset configuration
    split: str = "train"
    text_field: str = "text"
    label_field: str = "label"  # finetune.task: sequence_classification / image_classification
    image_field: str = "image"  # finetune.task: image_classification (PIL images)
    max_documents: int | None = None  # keep only the first N documents (smoke tests)
    tokenizer: str | None = None  # tokenizer dir/hub name; None trains a byte-level BPE on the training text
    tokenizer_train_documents: int = 2000  # documents the BPE is trained on when `tokenizer` is None
    seq_len: int = 256
    document_masking: bool = True  # attention and labels do not cross document boundaries inside a block
    streaming: bool = False  # read a hub source as a stream while preparing it (no full download)
    num_proc: int | None = None  # worker processes that tokenise while preparing (None: one process)
    cache_dir: str | None = None  # where sources are prepared; None: <output_dir>/data_cache


@dataclass
class ImageDataRecipe:
    """The `plait-vit` task's data: an image classification set read by `plait.eval.image_data`."""

    source: Literal["fashion-mnist", "mnist-digits", "folder", "hub"] = "fashion-mnist"
    # fashion-mnist: the folder of its IDX files; mnist-digits: digits.png (both default to the data cache,
    # `make data`); folder: a root holding one class-per-folder directory per split (<path>/<split>/<class>/)
    path: str | None = None
    name: str | None = None  # source: hub dataset name (e.g. zalando-datasets/fashion_mnist)
    subset: str | None = None  # source: hub dataset configuration
    train_split: str = "train"
    eval_split: str | None = "test"  # held-out split evaluated during and after training; null: none
    image_column: str = "image"  # source: hub
    label_column: str = "label"  # source: hub
    max_train_samples: int | None = None  # keep only the first N (smoke tests)
    max_eval_samples: int | None = None
    # per-channel normalisation; null: the training images' statistics (in-memory sets) or 0.5 / 0.5
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    crop_padding: int = 0  # random crop after zero-padding every side by this many pixels; 0: no crop
    horizontal_flip: bool = False  # random left-right flips
    mixup_alpha: float = 0.0  # mixup: blend with another image, lambda ~ Beta(alpha, alpha); 0: off
    cutmix_alpha: float = 0.0  # CutMix: paste a box of area (1 - lambda) of another image; 0: off
    mix_probability: float = 1.0  # the share of training images mixed when either alpha is set
    cache_dir: str | None = None  # source: hub, the datasets cache


@dataclass
class OptimRecipe:
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # final lr as a fraction of `lr` (cosine and wsd)
    weight_decay: float = (
        0.1  # applied to matrices only; biases, norms and the model's no-decay names excluded
    )
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    schedule: Schedule = "cosine"
    warmup_steps: int = 0
    decay_fraction: float = 0.2  # wsd: fraction of max_steps spent decaying
    max_grad_norm: float = 1.0  # 0 disables clipping
    # Skip the update of a step whose loss or gradient norm exceeds the mean of the last `skip_step_window`
    # steps by `skip_step_sigmas` standard deviations; stop after `skip_step_max_in_row` skips in a row
    # (plait.train.stability).
    skip_step: bool = False
    skip_step_sigmas: float = 6.0
    skip_step_window: int = 128
    skip_step_max_in_row: int = 16


@dataclass
class TrainRecipe:
    output_dir: str = "outputs/run"
    max_steps: int = 100
    micro_batch_size: int = 8  # sequences per device per forward
    grad_accum: int = 1
    precision: Precision = "bf16"
    seed: int = 0
    activation_checkpointing: bool = False
    compile: bool = False
    dataloader_workers: int = 0
    # Seconds a collective may wait for the other ranks before the run stops with an error naming the rank
    # that fell behind (plait.train.hangs); also torch.distributed's process-group timeout.
    collective_timeout: int = 1800


@dataclass
class CheckpointRecipe:
    every: int = 1000  # steps between checkpoints; 0 disables periodic checkpoints
    keep_last: int | None = 3  # None keeps all
    resume: str | None = "auto"  # "auto" = latest checkpoint in output_dir if any; a path; None = fresh start
    save_final: bool = True  # write the final model in `from_pretrained` form to <output_dir>/final
    resume_despite_changes: bool = False  # resume a run whose stored recipe differs in run-defining keys
    trust_pickles: bool = False  # resume DeepSpeed files that need pickle code execution (your own only)
    # FSDP2 sharded checkpoints: write the model and optimizer shards in the background while training goes
    # on (plait.train.async_checkpoint); still atomic. Other engines save synchronously.
    async_save: bool = True


@dataclass
class LoggingRecipe:
    every: int = 10  # steps between log lines
    wandb: bool = False  # offline mode when no WANDB_API_KEY is set
    wandb_project: str = "plait"
    run_name: str | None = None
    peak_tflops: float | None = None  # per-device peak for MFU; None looks the device up in a table
    progress_bar: bool = True
    # Steps between the stability diagnostics (per-block gradient norm, update/weight ratio, output RMS, ...;
    # plait.train.diagnostics, drawn in <output_dir>/diagnostics.png at the end); null: every `every`; 0: off.
    diagnostics_every: int | None = None


@dataclass
class EvalRecipe:
    every: int = 0  # steps between evaluations (plait.eval.periodic); 0 disables periodic evaluation
    split: str = "validation"  # held-out split of data.source (the default corpus: its validation files)
    held_out_fraction: float = 0.1  # classification fine-tunes without an `eval.split`: the share carved off
    max_documents: int = 50  # held-out documents scored for loss/perplexity
    tasks: list[str] = field(default_factory=list)  # lm-eval tasks also scored (e.g. hellaswag, arc_easy)
    limit: int = 100  # documents per lm-eval task
    batch_size: int = 8


@dataclass
class EngineRecipe:
    # Usually the engine comes from the launcher (`accelerate launch --config_file launch/accelerate/*.yaml`).
    # Set this to a DeepSpeed JSON (e.g. launch/deepspeed/zero3.json) when starting with the `deepspeed`
    # launcher or torchrun instead.
    deepspeed: str | None = None


FinetuneMethod = Literal[
    "full", "lora", "kan_nera", "kan_skan", "kappatune", "kappatune+lora", "kappatune+kan"
]


@dataclass
class FinetuneRecipe:
    # null: pretraining. Otherwise fine-tune `model.pretrained` (see plait.train.finetune).
    method: FinetuneMethod | None = None
    task: Literal["causal_lm", "sequence_classification", "image_classification"] = "causal_lm"
    num_labels: int | None = None  # classification: label count; null reads it from the data
    # Adapters: module names (full or trailing components) or one regex on full names; "all-linear" = every
    # nn.Linear but the output head.
    target_modules: list[str] | str = "all-linear"
    modules_to_save: list[str] = field(default_factory=list)  # trained in full too (e.g. a new classifier)
    r: int = 8  # adapter rank
    alpha: float = 16.0  # adapter scale alpha / r
    dropout: float = 0.0  # adapter input dropout
    kan_grid_size: int = 8  # KAN basis functions per input
    kan_grid_range: float = 3.0  # initial knots / grid on [-range, range]
    skan_families: list[str] = field(default_factory=lambda: ["bspline", "rbf", "chebyshev", "wavelet"])
    skan_select_at: float = 0.5  # S-KAN phase 2 starts at this fraction of train.max_steps; prune at the end
    kappa_count: int | None = None  # KappaTune budget: the lowest-κ tensor count ...
    kappa_fraction: float | None = None  # ... or a fraction of the model's parameters (give exactly one)
    kappa_max_dim: int | None = None  # skip tensors with a dimension above this (embeddings, LM head)
    kappa_cache: str | None = None  # κ cache JSON; null: <train.output_dir>/kappa.json


@dataclass
class Recipe:
    model: ModelRecipe = field(default_factory=ModelRecipe)
    data: DataRecipe | ImageDataRecipe = field(default_factory=DataRecipe)  # by model.arch: DATA_SECTIONS
    optim: OptimRecipe = field(default_factory=OptimRecipe)
    train: TrainRecipe = field(default_factory=TrainRecipe)
    checkpoint: CheckpointRecipe = field(default_factory=CheckpointRecipe)
    logging: LoggingRecipe = field(default_factory=LoggingRecipe)
    eval: EvalRecipe = field(default_factory=EvalRecipe)
    engine: EngineRecipe = field(default_factory=EngineRecipe)
    finetune: FinetuneRecipe = field(default_factory=FinetuneRecipe)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class RecipeError(ValueError):
    """A recipe key or value is invalid; the message names the dotted key, the value and what is allowed."""


# Range checks beyond types: (dotted key) -> (predicate, description of the valid range).
_RANGES: dict[str, tuple[typing.Callable[[Any], bool], str]] = {
    "data.seq_len": (lambda v: v >= 2, "an integer >= 2"),
    "data.max_documents": (lambda v: v is None or v >= 1, "null or an integer >= 1"),
    "data.tokenizer_train_documents": (lambda v: v >= 1, "an integer >= 1"),
    "data.max_repeats": (lambda v: v >= 1, "an integer >= 1"),
    "data.num_proc": (lambda v: v is None or v >= 1, "null or an integer >= 1"),
    "data.max_train_samples": (lambda v: v is None or v >= 1, "null or an integer >= 1"),
    "data.max_eval_samples": (lambda v: v is None or v >= 1, "null or an integer >= 1"),
    "data.image_mean": (lambda v: v is None or len(v) >= 1, "null or a list of one value per channel"),
    "data.image_std": (lambda v: v is None or (len(v) >= 1 and min(v) > 0), "null or positive values"),
    "data.crop_padding": (lambda v: v >= 0, "an integer >= 0"),
    "data.mixup_alpha": (lambda v: v >= 0, "a number >= 0 (0 disables mixup)"),
    "data.cutmix_alpha": (lambda v: v >= 0, "a number >= 0 (0 disables CutMix)"),
    "data.mix_probability": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "optim.lr": (lambda v: v > 0, "a positive number"),
    "optim.min_lr_ratio": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "optim.weight_decay": (lambda v: v >= 0, "a number >= 0"),
    "optim.beta1": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "optim.beta2": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "optim.eps": (lambda v: v > 0, "a positive number"),
    "optim.warmup_steps": (lambda v: v >= 0, "an integer >= 0"),
    "optim.decay_fraction": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "optim.max_grad_norm": (lambda v: v >= 0, "a number >= 0 (0 disables clipping)"),
    "optim.skip_step_sigmas": (lambda v: v > 0, "a positive number"),
    "optim.skip_step_window": (lambda v: v >= 2, "an integer >= 2"),
    "optim.skip_step_max_in_row": (lambda v: v >= 1, "an integer >= 1"),
    "train.collective_timeout": (lambda v: v >= 1, "an integer >= 1 (seconds)"),
    "logging.diagnostics_every": (lambda v: v is None or v >= 0, "null or an integer >= 0 (0: off)"),
    "train.output_dir": (lambda v: v.strip() != "", "a non-empty path"),
    "train.seed": (lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)"),
    "train.max_steps": (lambda v: v >= 1, "an integer >= 1"),
    "train.micro_batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "train.grad_accum": (lambda v: v >= 1, "an integer >= 1"),
    "train.dataloader_workers": (lambda v: v >= 0, "an integer >= 0"),
    "checkpoint.every": (lambda v: v >= 0, "an integer >= 0 (0 disables periodic checkpoints)"),
    "checkpoint.keep_last": (lambda v: v is None or v >= 1, "null or an integer >= 1"),
    "logging.every": (lambda v: v >= 1, "an integer >= 1"),
    "finetune.num_labels": (lambda v: v is None or v >= 2, "null or an integer >= 2"),
    "finetune.r": (lambda v: v >= 1, "an integer >= 1"),
    "finetune.alpha": (lambda v: 0 < v < float("inf"), "a positive finite number"),
    "finetune.dropout": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "finetune.kan_grid_size": (lambda v: v >= 2, "an integer >= 2"),
    "finetune.kan_grid_range": (lambda v: 0 < v < float("inf"), "a positive finite number"),
    "finetune.skan_select_at": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "finetune.kappa_count": (lambda v: v is None or v >= 1, "null or an integer >= 1"),
    "finetune.kappa_fraction": (lambda v: v is None or 0 < v <= 1, "null or a number in (0, 1]"),
    "finetune.kappa_max_dim": (lambda v: v is None or v >= 1, "null or an integer >= 1"),
    "logging.peak_tflops": (lambda v: v is None or v > 0, "null or a positive number"),
    "eval.every": (lambda v: v >= 0, "an integer >= 0 (0 disables periodic evaluation)"),
    "eval.max_documents": (lambda v: v >= 1, "an integer >= 1"),
    "eval.held_out_fraction": (lambda v: 0 < v < 1, "a number in (0, 1)"),
    "eval.limit": (lambda v: v >= 1, "an integer >= 1"),
    "eval.batch_size": (lambda v: v >= 1, "an integer >= 1"),
}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return `value` as type `tp` or raise RecipeError naming `key`."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise RecipeError(f"{key}={value!r} is not valid; choose one of {', '.join(map(repr, choices))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
        else:
            for arg in args:
                if arg is type(None):
                    continue
                try:
                    return _coerce(value, arg, key)
                except RecipeError:
                    continue
        raise RecipeError(f"{key}={value!r} is not valid; expected {_type_name(tp)}")
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{key}={value!r} is not valid; expected {_type_name(tp)}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{key}={value!r} is not valid; expected a mapping")
        return dict(value)
    if tp is float and isinstance(value, str):
        # PyYAML follows YAML 1.1, which reads `1e-3` (no dot) as a string: accept numeric strings for floats.
        try:
            return float(value)
        except ValueError:
            pass
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(tp)
    if ok is None:
        raise TypeError(f"unsupported recipe field type {tp} for {key}")
    if not ok:
        raise RecipeError(f"{key}={value!r} is not valid; expected {_type_name(tp)}")
    if tp is float and not math.isfinite(value):
        raise RecipeError(f"{key}={value!r} is not finite; expected {_type_name(tp)}")
    return float(value) if tp is float else value


def _build(cls: type, data: Any, prefix: str, sections: dict[str, type] | None = None) -> Any:
    if not isinstance(data, dict):
        raise RecipeError(f"{prefix or 'recipe'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"section '{prefix}'" if prefix else "the recipe's top level"
        close = difflib.get_close_matches(str(unknown[0]), list(fields), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise RecipeError(
            f"unknown key {prefix + '.' if prefix else ''}{unknown[0]} in {where}; "
            f"{hint}valid keys: {', '.join(fields)}"
        )
    kwargs = {name: tp() for name, tp in (sections or {}).items() if name not in data}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        tp = (sections or {}).get(name, hints[name])
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value if value is not None else {}, key)
            continue
        value = _coerce(value, tp, key)
        if key in _RANGES:
            check, description = _RANGES[key]
            if not check(value):
                raise RecipeError(f"{key}={value!r} is out of range; expected {description}")
        kwargs[name] = value
    return cls(**kwargs)


def model_config(recipe: Recipe, **defaults: Any):
    """The model config `model.config` builds for `model.arch` (`PlaitConfig` or `PlaitViTConfig`, which
    validate it; `defaults` fill unset keys, e.g. the tokenizer's vocabulary size or the data's class
    names), or RecipeError naming the problem."""
    from plait.modeling import PlaitConfig, PlaitViTConfig

    if recipe.model.arch == "plait-vit":
        config_class, base = PlaitViTConfig, {}
    else:
        config_class, base = PlaitConfig, {"max_position_embeddings": recipe.data.seq_len}
    kwargs = {**base, **defaults, **recipe.model.config}
    try:
        return config_class(**kwargs)
    except (TypeError, ValueError) as e:
        raise RecipeError(f"model.config is invalid: {e}") from None


def _cross_checks(recipe: Recipe) -> None:
    if recipe.model.pretrained is not None and recipe.model.config:
        raise RecipeError(
            f"model.config is set ({sorted(recipe.model.config)}) but so is model.pretrained="
            f"{recipe.model.pretrained!r}, whose config.json defines the model; remove one of them"
        )
    if recipe.model.pretrained is None:
        model_config(recipe)
    data = recipe.data
    if data.source == "hub" and not data.name:
        raise RecipeError("data.name is not set but data.source='hub'; give a datasets hub name")
    if isinstance(data, ImageDataRecipe):
        _image_data_checks(data)
    elif data.source == "files" and not data.paths:
        raise RecipeError(
            "data.paths is empty but data.source='files'; list the text/JSON/parquet files to train on"
        )
    elif data.source == "disk" and len(data.paths) != 1:
        raise RecipeError(f"data.paths={data.paths!r}: data.source='disk' takes one save_to_disk folder")
    if not isinstance(data, ImageDataRecipe) and data.source in ("files", "disk"):
        for i, p in enumerate(data.paths):
            if not glob.glob(os.path.expanduser(p)):
                raise RecipeError(f"data.paths[{i}]={p!r} does not exist")
    if not isinstance(data, ImageDataRecipe) and data.source == "prepared":
        from .prepared import check_mixture

        check_mixture(data.mixture)
    classifies = recipe.finetune.method is not None and recipe.finetune.task != "causal_lm"
    if recipe.eval.every and data.source in ("files", "prepared") and not classifies:
        raise RecipeError(
            f"eval.every={recipe.eval.every} needs held-out text, but data.source={data.source!r} has no "
            f"{recipe.eval.split!r} split; use data.source 'default' or 'hub', or set eval.every=0"
        )
    unknown = [t for t in recipe.eval.tasks if t not in LOCAL_TASKS]
    if unknown:
        raise RecipeError(f"eval.tasks has unknown task(s) {unknown}; choose from {', '.join(LOCAL_TASKS)}")
    if recipe.engine.deepspeed is not None and not Path(recipe.engine.deepspeed).is_file():
        raise RecipeError(f"engine.deepspeed={recipe.engine.deepspeed!r} is not a DeepSpeed JSON file")
    ft = recipe.finetune
    vit = recipe.model.arch == "plait-vit"
    if vit and ft.method is not None and ft.task != "image_classification":
        raise RecipeError(
            f"finetune.task={ft.task!r} does not fit model.arch='plait-vit'; set finetune.task: "
            "image_classification"
        )
    if ft.method is not None and not recipe.model.pretrained:
        raise RecipeError(f"finetune.method={ft.method!r} needs model.pretrained (the model to fine-tune)")
    if ft.method is not None and ft.method.startswith("kappatune"):
        if (ft.kappa_count is None) == (ft.kappa_fraction is None):
            raise RecipeError(
                f"finetune.method={ft.method!r} needs exactly one budget: finetune.kappa_count or "
                f"finetune.kappa_fraction (got {ft.kappa_count!r} and {ft.kappa_fraction!r})"
            )
    unknown = sorted(set(ft.skan_families) - {"bspline", "rbf", "chebyshev", "wavelet"})
    if unknown or not ft.skan_families:
        raise RecipeError(
            f"finetune.skan_families={ft.skan_families!r} is not valid; "
            "choose from bspline, rbf, chebyshev, wavelet"
        )
    if recipe.optim.warmup_steps >= recipe.train.max_steps:
        raise RecipeError(
            f"optim.warmup_steps={recipe.optim.warmup_steps} must be smaller than train.max_steps="
            f"{recipe.train.max_steps}"
        )


def _image_data_checks(data: ImageDataRecipe) -> None:
    if data.path is not None and not Path(data.path).expanduser().exists():
        raise RecipeError(f"data.path={data.path!r} does not exist")
    if (
        data.image_mean is not None
        and data.image_std is not None
        and len(data.image_mean) != len(data.image_std)
    ):
        raise RecipeError(
            f"data.image_mean has {len(data.image_mean)} values but data.image_std {len(data.image_std)}; "
            "give one per channel"
        )


# The `data` section's schema for each `model.arch`.
DATA_SECTIONS: dict[str, type] = {"plait-lm": DataRecipe, "plait-vit": ImageDataRecipe}


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    model = _build(ModelRecipe, data.get("model") or {}, "model") if isinstance(data, dict) else None
    sections = {"data": DATA_SECTIONS[model.arch]} if model is not None else None
    recipe = _build(Recipe, data, "", sections)
    _cross_checks(recipe)
    return recipe


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b=c` -> (["a", "b"], value), the value parsed as YAML (numbers, booleans, null, lists)."""
    if "=" not in item:
        raise RecipeError(f"override {item!r} must look like section.key=value")
    key, raw = item.split("=", 1)
    path = key.strip().split(".")
    if not all(path):
        raise RecipeError(f"override {item!r} has an empty key component")
    try:
        return path, yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise RecipeError(f"override {item!r}: the value is not valid YAML ({e})") from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise RecipeError(f"override {item!r}: {part} is not a section")
            node = child
        node[path[-1]] = value
    return data


def resolve_recipe_path(name_or_path: str) -> Path:
    """A path to a YAML file, or the name of a shipped recipe (`train/recipes/*.yaml`, e.g. `tiny`)."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    shipped = RECIPES_DIR / f"{name_or_path}.yaml"
    if shipped.exists():
        return shipped
    names = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
    raise RecipeError(
        f"recipe {name_or_path!r} is neither a file nor a shipped recipe; shipped: {', '.join(names)}"
    )


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> Recipe:
    path = resolve_recipe_path(name_or_path)
    if not path.is_file():
        raise RecipeError(
            f"recipe {str(path)!r} is not a file; give a YAML recipe file or a shipped recipe name"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise RecipeError(f"recipe file {path} is not valid YAML: {e}") from None
    if not data:  # an empty (or all-comment) file would silently train the default model
        raise RecipeError(
            f"recipe file {path} is empty; give its sections (model, data, train, ...) or a shipped "
            "recipe name"
        )
    if not isinstance(data, dict):
        raise RecipeError(f"recipe file {path} must hold a mapping of sections, got {type(data).__name__}")
    return recipe_from_dict(apply_overrides(data, overrides or []))
