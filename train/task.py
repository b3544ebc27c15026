"""`Task`: what the trainer needs from a model family, built from a recipe by the `model.arch` entry of
`plait.train.tasks.TASKS`. The trainer knows no particular model: it trains `model` on `train_dataset`
batched by `data_collator`, evaluates `eval_dataset` with `compute_metrics`, and saves `processing_class`
(a tokenizer or an image processor) beside the final model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedModel, TrainerCallback


@dataclass
class Task:
    model: PreTrainedModel
    train_dataset: Any
    data_collator: Callable
    processing_class: Any
    tokens_per_sample: int  # tokens the model processes per sample (LM: seq_len; ViT: patches + CLS)
    eval_dataset: Any = None
    compute_metrics: Callable | None = None
    callbacks: list[TrainerCallback] = field(default_factory=list)
    prepare_for_saving: Callable[[PreTrainedModel], None] | None = None  # e.g. the LM turns its cache back on
    evaluation: dict[str, Any] | None = None  # plait.eval.periodic settings (LM); None: Trainer's eval loop
    evaluate_at_end: bool = (
        False  # evaluate the final model too (unless the last periodic one was at the end)
    )
