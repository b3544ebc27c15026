"""Fine-tuning methods on any transformers model: which parameters train, and through which adapter.

`apply_method(model, finetune_recipe)` turns a loaded model into the model to train:

| method           | what trains                                                                       |
| ---------------- | --------------------------------------------------------------------------------- |
| `full`           | every parameter                                                                   |
| `lora`           | PEFT LoRA on `target_modules`                                                     |
| `kan_nera`       | NeRA KAN adapters on `target_modules` (`plait.modeling.adapters`)                 |
| `kan_skan`       | S-KAN adapters on `target_modules`; phase 2 at `skan_select_at`, pruned at the end |
| `kappatune`      | the lowest-κ weight tensors within the budget, in full (`plait.train.kappatune`)  |
| `kappatune+lora` | LoRA on the `nn.Linear` modules owning the lowest-κ weights                       |
| `kappatune+kan`  | NeRA on the `nn.Linear` modules owning the lowest-κ weights                       |

`modules_to_save` (e.g. a new classifier head) trains in full with every method.

`prepare_finetune(recipe, ...)` is what `plait.train.trainer.run` trains for a recipe with a `finetune:`
section: the pretrained model for the task (causal LM on the recipe's text; sequence classification on its
text and label columns; image classification on its images and labels, through the checkpoint's image
processor), the method applied, and S-KAN's phase callback. A classifier is evaluated on held-out documents
(`plait.train.held_out`: the data's own `eval.split` or a recorded carve-off) every `eval.every` steps and
after training, logging `eval_accuracy` and `eval_loss`. Checkpoints, resume and the engines are the
pretraining ones; a PEFT method saves an adapter directory (`PeftModel.save_pretrained`), full and KappaTune
a full model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import (
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    TrainerCallback,
    default_data_collator,
    set_seed,
)

from plait.modeling.adapters import KANConfig, skan_prune, skan_select

from . import kappatune
from .attention_backend import attn_implementation
from .data import build_lm_dataset, load_raw
from .held_out import split_held_out, write_record
from .pretrained import check_local_path, load_tokenizer_from
from .recipe import FinetuneRecipe, Recipe, RecipeError
from .task import Task
from .vision import accuracy


@dataclass
class Prepared:
    model: nn.Module
    trainable: int  # trainable parameter count
    selected: list[str] = field(default_factory=list)  # KappaTune: the chosen tensors, lowest κ first


def batch_norm_names(model: nn.Module) -> list[str]:
    """The model's BatchNorm modules (e.g. the ViT's convolutional stem). A training-mode forward updates
    their running statistics even when their weights are frozen, and a PEFT adapter saves only adapter
    weights and `modules_to_save`: the statistics the model was trained with would be lost on reload. As
    PEFT's own troubleshooting guide advises, they go into `modules_to_save` (their affine weights train
    too)."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def adapter_config(
    ft: FinetuneRecipe, kind: str, target_modules: list[str] | str, batch_norms: Sequence[str] = ()
) -> LoraConfig:
    """The PEFT config of a LoRA ('lora') or KAN ('nera' / 'skan') adapter from the recipe's options;
    `batch_norms` (`batch_norm_names`) are saved with it."""
    common = dict(
        r=ft.r,
        lora_alpha=ft.alpha,
        lora_dropout=ft.dropout,
        target_modules=target_modules,
        modules_to_save=[*ft.modules_to_save, *batch_norms] or None,
    )
    if kind == "lora":
        return LoraConfig(**common)
    return KANConfig(
        kan=kind,
        kan_grid_size=ft.kan_grid_size,
        kan_grid_range=ft.kan_grid_range,
        skan_families=list(ft.skan_families),
        **common,
    )


def apply_method(model: nn.Module, ft: FinetuneRecipe, *, kappa_cache: str | Path | None = None) -> Prepared:
    method = ft.method
    if method == "full":
        model.requires_grad_(True)
        return Prepared(model, sum(p.numel() for p in model.parameters()))
    if method in ("lora", "kan_nera", "kan_skan"):
        kind = {"lora": "lora", "kan_nera": "nera", "kan_skan": "skan"}[method]
        model = get_peft_model(model, adapter_config(ft, kind, ft.target_modules, batch_norm_names(model)))
        return Prepared(model, model.get_nb_trainable_parameters()[0])
    if method not in ("kappatune", "kappatune+lora", "kappatune+kan"):
        raise RecipeError(f"finetune.method={method!r} is not a fine-tuning method")
    kappa = kappatune.condition_numbers(model, max_dim=ft.kappa_max_dim, cache=kappa_cache)
    saved = [n for n, _ in model.named_parameters() if any(f".{m}." in f".{n}" for m in ft.modules_to_save)]
    kappa = {n: k for n, k in kappa.items() if n not in saved}  # a new head trains anyway: not a candidate
    selected = kappatune.select_lowest_kappa(
        model,
        kappa,
        count=ft.kappa_count,
        fraction=ft.kappa_fraction,
        max_dim=ft.kappa_max_dim,
        linear_only=method != "kappatune",
    )
    if not selected:
        raise RecipeError(
            "KappaTune selected no tensor: raise finetune.kappa_fraction or finetune.kappa_max_dim"
        )
    if method == "kappatune":
        trainable = kappatune.freeze_all_but(model, selected + saved)
        return Prepared(model, trainable, selected)
    kind = "lora" if method == "kappatune+lora" else "nera"
    targets = kappatune.module_targets(selected)
    model = get_peft_model(model, adapter_config(ft, kind, targets, batch_norm_names(model)))
    return Prepared(model, model.get_nb_trainable_parameters()[0], selected)


class SKANPhases(TrainerCallback):
    """S-KAN's phases in a Trainer run: all families until `select_step`, then the selected family per node
    (phase 2), pruned when training ends (phase 3) so the saved adapter is the small one."""

    def __init__(self, select_step: int):
        self.select_step = select_step

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step >= self.select_step:
            skan_select(model)  # idempotent: also right after a resume past the step

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if isinstance(model, PeftModel) and state.global_step >= state.max_steps:
            skan_prune(model)


@dataclass
class Labelled:
    """A classification data set: training and held-out documents (`plait.train.held_out`), the label
    count, and how the held-out documents were chosen (recorded in the run)."""

    train: Dataset
    held_out: Dataset
    num_labels: int
    record: dict[str, Any]


def _labelled(recipe: Recipe, input_field: str) -> Labelled:
    """The recipe's data split into training and held-out documents, with `input_field` and the label
    column checked in both, and the label count."""
    data, ft = recipe.data, recipe.finetune
    ds = load_raw(data)
    if data.max_documents is not None:
        ds = ds.select(range(min(len(ds), data.max_documents)))
    train, held_out, record = split_held_out(recipe, ds)
    num_labels = ft.num_labels or (max(train[data.label_field]) + 1)
    for part, where in ((train, f"data.split={data.split!r}"), (held_out, "the held-out documents")):
        for key, column in (
            (f"data.{input_field}", getattr(data, input_field)),
            ("data.label_field", data.label_field),
        ):
            if column not in part.column_names:
                raise RecipeError(
                    f"{key}={column!r} is not a column of {where}; columns: {part.column_names}"
                )
        bad = sorted({y for y in part[data.label_field] if not isinstance(y, int) or not 0 <= y < num_labels})
        if bad:
            raise RecipeError(
                f"labels {bad[:5]} in column {data.label_field!r} of {where} are not integers in "
                f"[0, {num_labels}) (finetune.num_labels={ft.num_labels!r})"
            )
    return Labelled(train, held_out, num_labels, record)


def _text_classification(recipe: Recipe, tokenizer) -> Labelled:
    data = recipe.data
    labelled = _labelled(recipe, "text_field")

    def encode(batch):
        enc = tokenizer(batch[data.text_field], truncation=True, max_length=data.seq_len)
        enc["labels"] = batch[data.label_field]
        return enc

    for name in ("train", "held_out"):
        ds = getattr(labelled, name)
        setattr(labelled, name, ds.map(encode, batched=True, remove_columns=ds.column_names))
    return labelled


def _image_classification(recipe: Recipe, processor) -> Labelled:
    data = recipe.data
    labelled = _labelled(recipe, "image_field")

    def transform(batch):  # on the fly: pixel tensors are not cached
        pixels = processor(batch[data.image_field], return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixels, "labels": torch.tensor(batch[data.label_field])}

    labelled.train = labelled.train.with_transform(transform)
    labelled.held_out = labelled.held_out.with_transform(transform)
    return labelled


def build_finetune_task(recipe: Recipe, args) -> Task:
    """The `Task` the trainer runs for a `finetune` recipe (see `prepare_finetune`): a classification task
    evaluates its held-out documents (accuracy and loss) every `eval.every` steps and after training."""
    cache_dir = recipe.data.cache_dir or str(Path(recipe.train.output_dir) / "data_cache")
    processor, data, collator, model, callbacks = prepare_finetune(recipe, args, cache_dir)

    def restore_cache(model) -> None:  # generation from the saved LM uses its cache again
        model.config.use_cache = True

    if not isinstance(data, Labelled):  # causal_lm
        return Task(
            model=model,
            train_dataset=data,
            data_collator=collator,
            processing_class=processor,
            tokens_per_sample=recipe.data.seq_len,
            callbacks=callbacks,
            prepare_for_saving=restore_cache,
        )
    if args.should_save:
        write_record(recipe.train.output_dir, data.record)
    return Task(
        model=model,
        train_dataset=data.train,
        data_collator=collator,
        processing_class=processor,
        tokens_per_sample=recipe.data.seq_len,
        callbacks=callbacks,
        eval_dataset=data.held_out,
        compute_metrics=accuracy,
        evaluate_at_end=True,
    )


def prepare_finetune(
    recipe: Recipe, args, cache_dir: str
) -> tuple[Any, Dataset | Labelled, Any, nn.Module, list[TrainerCallback]]:
    """What `run` trains when the recipe has a `finetune.method`: (processing class, data, collator,
    model, callbacks); the data are packed text blocks for a causal LM, training and held-out documents for
    a classifier. The model is `model.pretrained` (a Plait directory, a converted Llama, any transformers
    checkpoint) for the task, with the method applied."""
    import plait.modeling  # noqa: F401  (registers Plait with the Auto classes)

    check_local_path(recipe.model.pretrained, "model.pretrained")
    ft, source = recipe.finetune, os.path.expanduser(recipe.model.pretrained)
    packed = ft.task == "causal_lm" and recipe.data.document_masking
    load = dict(dtype=torch.float32, attn_implementation=attn_implementation(recipe, packed))
    tokenizer_source = recipe.data.tokenizer or source
    tokenizer_key = "data.tokenizer" if recipe.data.tokenizer else "model.pretrained"
    if ft.task == "causal_lm":
        processor = load_tokenizer_from(tokenizer_source, tokenizer_key)
        samples = recipe.train.max_steps * args.train_batch_size * args.gradient_accumulation_steps
        data = build_lm_dataset(
            recipe.data, processor, cache_dir, recipe.train.seed, samples * args.world_size
        )
        collator = default_data_collator
        set_seed(recipe.train.seed)
        model = AutoModelForCausalLM.from_pretrained(source, **load)
        model.config.use_cache = False
    elif ft.task == "sequence_classification":
        processor = load_tokenizer_from(tokenizer_source, tokenizer_key)
        with args.main_process_first(desc="tokenize"):
            data = _text_classification(recipe, processor)
        collator = DataCollatorWithPadding(processor)
        set_seed(recipe.train.seed)
        model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=data.num_labels, **load)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = processor.pad_token_id
    else:  # image_classification
        processor = AutoImageProcessor.from_pretrained(source)
        data = _image_classification(recipe, processor)
        collator = default_data_collator
        set_seed(recipe.train.seed)
        model = AutoModelForImageClassification.from_pretrained(  # a new head when the label count differs
            source, num_labels=data.num_labels, ignore_mismatched_sizes=True, **load
        )
    model, callbacks = apply_recipe_method(model, recipe)
    return processor, data, collator, model, callbacks


def apply_recipe_method(model: nn.Module, recipe: Recipe) -> tuple[nn.Module, list[TrainerCallback]]:
    """`apply_method` with the recipe's options and κ cache, and the callbacks the method needs in a run
    (S-KAN's phases). Also what the ViT task applies to a pretrained ViT (`plait.train.vision`)."""
    ft = recipe.finetune
    cache = ft.kappa_cache or str(Path(recipe.train.output_dir) / "kappa.json")
    model = apply_method(model, ft, kappa_cache=cache).model
    callbacks = []
    if ft.method == "kan_skan":
        callbacks.append(SKANPhases(round(ft.skan_select_at * recipe.train.max_steps)))
    return model, callbacks
