"""Sweep files: a base recipe, variants (listed or a grid of `--set` overrides), seeds and optionally a size
ladder, validated and expanded into one planned run per (size, variant, seed).

Pairing: every run of a seed gets `train.seed=<seed>`, which fixes both the initial weights and the data
order (`TrainingArguments.data_seed`, the LM's block shuffle, the image augmentation), so the runs of one seed
differ only in their variant. Matching: `match` adjusts one integer width of each non-baseline variant (e.g.
`model.config.intermediate_size`) until its parameter count or training FLOPs per token is within
`tolerance` of the baseline's at the same size. Ladder: size `s` sets each `scale` key to `s * value`, and
`tokens_per_parameter` sets `train.max_steps` from the baseline's parameter count at that size.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from .recipe import Recipe, RecipeError, _build, load_recipe, model_config, resolve_recipe_path

REDUCTIONS = ("last", "min", "max", "mean", "median")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.,=+-]*$")  # variant names become directory names


class SweepError(RecipeError):
    """A sweep file key or value is invalid; the message names the key, the value and what is allowed."""


@dataclass
class Match:
    by: Literal["params", "flops"] = "params"
    width: str = "model.config.intermediate_size"  # the integer recipe key adjusted
    tolerance: float = 0.01  # the largest relative difference to the baseline accepted
    multiple_of: int = 1  # the width stays a multiple of this (e.g. the head count for hidden_size)


@dataclass
class Ladder:
    sizes: list[int] = field(default_factory=list)  # the one knob: size s scales every `scale` key by s
    scale: dict[str, Any] = field(default_factory=dict)  # recipe key -> its value at size 1
    tokens_per_parameter: float | None = None  # sets train.max_steps per size; null: the recipe's


@dataclass
class SweepFile:
    recipe: str = ""  # base recipe: a path (relative to the sweep file or the working directory) or a name
    set: list[str] = field(default_factory=list)  # overrides applied to every run
    variants: dict[str, Any] | None = None  # name -> list of overrides (listed variants) ...
    grid: dict[str, Any] | None = None  # ... or recipe key -> list of values (their cartesian product)
    baseline: str | None = None  # the variant the others are compared to; null: the first
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    match: Match | None = None
    ladder: Ladder | None = None
    metrics: dict[str, Any] = field(default_factory=lambda: {"eval_loss": "last", "loss": "last"})
    output_dir: str = "outputs/sweep"  # run directories: <output_dir>/[size<s>/]<variant>/seed<seed>
    report: str | None = None  # report path prefix (.md, .json, .png); null: <output_dir>/report


@dataclass
class PlannedRun:
    size: int | None
    variant: str
    seed: int
    overrides: list[str]  # applied to the base recipe, in order
    recipe: Recipe
    parameters: int
    flops_per_token: float
    tokens: int  # training tokens (images: patches) over the whole run
    matched: dict[str, Any] | None = None  # the width chosen by `match` and the relative difference

    @property
    def id(self) -> str:
        return "/".join(
            [*([f"size{self.size}"] if self.size is not None else []), self.variant, f"seed{self.seed}"]
        )

    @property
    def run_dir(self) -> Path:
        return Path(self.recipe.train.output_dir)

    @property
    def training_flops(self) -> float:
        return self.flops_per_token * self.tokens


@dataclass
class Sweep:
    spec: SweepFile
    path: Path
    base: Path  # the base recipe file
    variants: dict[str, list[str]]

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def baseline(self) -> str:
        return self.spec.baseline or next(iter(self.variants))

    @property
    def report_prefix(self) -> Path:
        return Path(self.spec.report) if self.spec.report else Path(self.spec.output_dir) / "report"


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep file (every run's recipe is validated when the sweep is planned)."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file {str(path)!r} is not a file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise SweepError(f"sweep file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise SweepError(f"sweep file {path} must hold a mapping, got {type(data).__name__}")
    # the optional sections are built on their own: `_build` nests only sections that are always present
    sections = {name: data.pop(name) for name in ("match", "ladder") if data.get(name) is not None}
    spec = _section(SweepFile, data, "")
    spec.match = _section(Match, sections["match"], "match") if "match" in sections else None
    spec.ladder = _section(Ladder, sections["ladder"], "ladder") if "ladder" in sections else None
    if not spec.recipe:
        raise SweepError("recipe is not set; give a recipe file or a shipped recipe name")
    base = path.parent / spec.recipe
    base = base if base.is_file() else resolve_recipe_path(spec.recipe)
    return Sweep(spec, path, base, _variants(spec))


def _section(cls: type, data: Any, prefix: str) -> Any:
    """A sweep file section checked by the recipe's own validation (types, choices, unknown keys)."""
    try:
        return _build(cls, data, prefix)
    except RecipeError as e:
        raise SweepError(str(e).replace("the recipe's top level", "the sweep file's top level")) from None


def _variants(spec: SweepFile) -> dict[str, list[str]]:
    if (spec.variants is None) == (spec.grid is None):
        raise SweepError("give exactly one of variants (name -> overrides) or grid (key -> values)")
    if spec.variants is not None:
        variants = {}
        for name, overrides in spec.variants.items():
            if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
                raise SweepError(f"variants.{name}={overrides!r} is not valid; expected a list of key=value")
            variants[str(name)] = overrides
    else:
        variants = {"": []}
        for key, values in spec.grid.items():
            if not isinstance(values, list) or not values:
                raise SweepError(f"grid.{key}={values!r} is not valid; expected a non-empty list of values")
            short = key.split(".")[-1]
            variants = {
                ",".join(filter(None, [name, f"{short}={_text(v)}"])): [*overrides, f"{key}={json.dumps(v)}"]
                for name, overrides in variants.items()
                for v in values
            }
    if not variants:
        raise SweepError("variants is empty; list at least one variant")
    for name in variants:
        if not NAME.match(name):
            raise SweepError(f"variant name {name!r} is not valid; use letters, digits and _ . , = + -")
    if spec.baseline is not None and spec.baseline not in variants:
        raise SweepError(f"baseline={spec.baseline!r} is not a variant; choose one of {', '.join(variants)}")
    if not spec.seeds or len(set(spec.seeds)) != len(spec.seeds) or min(spec.seeds) < 0:
        raise SweepError(f"seeds={spec.seeds!r} is not valid; expected distinct integers >= 0")
    for key, reduction in spec.metrics.items():
        if reduction not in REDUCTIONS:
            raise SweepError(
                f"metrics.{key}={reduction!r} is not valid; choose one of {', '.join(REDUCTIONS)}"
            )
    if spec.match is not None:
        if not 0 < spec.match.tolerance < 1:
            raise SweepError(f"match.tolerance={spec.match.tolerance!r} is out of range; expected (0, 1)")
        if spec.match.multiple_of < 1:
            raise SweepError(f"match.multiple_of={spec.match.multiple_of!r} is out of range; expected >= 1")
    if spec.ladder is not None:
        ladder = spec.ladder
        if not ladder.sizes or min(ladder.sizes) < 1 or len(set(ladder.sizes)) != len(ladder.sizes):
            raise SweepError(f"ladder.sizes={ladder.sizes!r} is not valid; expected distinct integers >= 1")
        for key, value in ladder.scale.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SweepError(f"ladder.scale.{key}={value!r} is not valid; expected an integer >= 1")
        tpp = ladder.tokens_per_parameter
        if tpp is not None and not 0 < tpp < math.inf:
            raise SweepError(
                f"ladder.tokens_per_parameter={tpp!r} is out of range; expected a positive number"
            )
    return variants


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _recipe(sweep: Sweep, overrides: list[str], what: str) -> Recipe:
    try:
        return load_recipe(str(sweep.base), overrides)
    except RecipeError as e:
        raise SweepError(f"{what}: {e}") from None


def measure(recipe: Recipe) -> tuple[int, float, int]:
    """The model's parameter count, training FLOPs per token (`plait.train.metrics.flops_per_token`) and
    tokens per sample, from the recipe alone (the model is built on the meta device: no memory, no data)."""
    from plait.modeling import PlaitForCausalLM, PlaitViTForImageClassification

    from .metrics import flops_per_token

    with torch.device("meta"):
        if recipe.model.arch == "plait-vit":
            model = PlaitViTForImageClassification(model_config(recipe))
            tokens = model.config.grid_size**2 + model.vit.embeddings.prefix
        else:
            model = PlaitForCausalLM(model_config(recipe))
            tokens = recipe.data.seq_len
    return sum(p.numel() for p in model.parameters()), flops_per_token(model, tokens), tokens


def _match(sweep: Sweep, overrides: list[str], target: float, what: str) -> tuple[list[str], dict]:
    """Overrides plus the width whose parameter count (or FLOPs per token) is closest to `target`."""
    match = sweep.spec.match
    start = _recipe(sweep, overrides, what)
    node: Any = start.to_dict()
    for part in match.width.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, int) or isinstance(node, bool):
        raise SweepError(
            f"match.width={match.width!r} is not an integer key of {what}'s recipe (got {node!r})"
        )
    step = match.multiple_of

    def cost(units: int) -> float:
        recipe = _recipe(sweep, [*overrides, f"{match.width}={units * step}"], what)
        parameters, per_token, _ = measure(recipe)
        return parameters if match.by == "params" else per_token

    # the cost grows with the width: bisect on multiples of `step` for the first one at or above the target
    low, high = 1, max(2, 2 * node // step)
    while cost(high) < target:
        low, high = high, high * 2
        if high * step > 1_000_000:
            raise SweepError(f"match: no {match.width} below 1e6 gives {what} the baseline's {match.by}")
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if cost(middle) < target else (low, middle)
    units = min((low, high), key=lambda u: abs(cost(u) - target))
    deviation = (cost(units) - target) / target
    if abs(deviation) > match.tolerance:
        raise SweepError(
            f"match: {what} is {deviation:+.2%} off the baseline's {match.by} at the closest "
            f"{match.width}={units * step}, beyond match.tolerance={match.tolerance}; "
            "choose another match.width"
        )
    return [*overrides, f"{match.width}={units * step}"], {
        "width": match.width,
        "value": units * step,
        "from": node,
        "by": match.by,
        "deviation": deviation,
    }


def plan(sweep: Sweep) -> list[PlannedRun]:
    """Every run of the sweep, sizes outermost, then variants (baseline first), then seeds."""
    spec = sweep.spec
    names = [sweep.baseline, *(n for n in sweep.variants if n != sweep.baseline)]
    runs = []
    for size in spec.ladder.sizes if spec.ladder else [None]:
        common = list(spec.set)
        if size is not None:
            common += [f"{key}={value * size}" for key, value in spec.ladder.scale.items()]
        base = _recipe(sweep, [*common, *sweep.variants[sweep.baseline]], f"variant {sweep.baseline!r}")
        parameters, per_token, per_sample = measure(base)
        if size is not None and spec.ladder.tokens_per_parameter is not None:
            per_step = base.train.micro_batch_size * base.train.grad_accum * per_sample
            steps = max(1, math.ceil(spec.ladder.tokens_per_parameter * parameters / per_step))
            common.append(f"train.max_steps={steps}")
        target = parameters if spec.match is None or spec.match.by == "params" else per_token
        for name in names:
            what = f"variant {name!r}" + (f" at size {size}" if size is not None else "")
            overrides, matched = [*common, *sweep.variants[name]], None
            if spec.match is not None and name != sweep.baseline:
                overrides, matched = _match(sweep, overrides, target, what)
            size_of = measure(_recipe(sweep, overrides, what))  # (parameters, FLOPs/token, tokens/sample)
            for seed in spec.seeds:
                run_dir = Path(
                    spec.output_dir, *([f"size{size}"] if size is not None else []), name, f"seed{seed}"
                )
                full = [
                    *overrides,
                    f"train.seed={seed}",
                    f"train.output_dir={run_dir}",
                    "checkpoint.resume=auto",
                ]
                recipe = _recipe(sweep, full, what)
                t = recipe.train
                tokens = t.max_steps * t.micro_batch_size * t.grad_accum * size_of[2]
                runs.append(PlannedRun(size, name, seed, full, recipe, *size_of[:2], tokens, matched))
    return runs
