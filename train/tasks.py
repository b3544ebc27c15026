"""The tasks `model.arch` selects: each builds a `Task` (model, data, collator, metrics) from a recipe. A
recipe with a `finetune` method builds the fine-tuning task instead (`plait.train.finetune`: any transformers
model on text or `datasets` images), except on the `plait-vit` task, which fine-tunes `model.pretrained` on
its own image sources, augmentation and test top-1."""

from __future__ import annotations

from collections.abc import Callable

from transformers import TrainingArguments

from .lm import build_lm_task
from .recipe import Recipe
from .task import Task
from .vision import build_vit_task

TASKS: dict[str, Callable[[Recipe, TrainingArguments], Task]] = {
    "plait-lm": build_lm_task,
    "plait-vit": build_vit_task,
}


def build_task(recipe: Recipe, args: TrainingArguments) -> Task:
    """The recipe's task: fine-tuning `model.pretrained` when `finetune.method` is set, else pretraining the
    `model.arch` family."""
    if recipe.finetune.method is not None and recipe.model.arch != "plait-vit":
        from .finetune import build_finetune_task

        return build_finetune_task(recipe, args)
    return TASKS[recipe.model.arch](recipe, args)
