"""The `plait-lm` task: the decoder LM (`PlaitForCausalLM`) on windows of prepared token streams
(`plait.train.data`)."""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import AutoTokenizer, TrainingArguments, default_data_collator, set_seed

from .attention_backend import attn_implementation
from .data import build_lm_dataset, iter_texts, load_documents
from .prepare import iter_documents
from .pretrained import check_local_path, load_pretrained, load_tokenizer_from
from .recipe import Recipe, RecipeError, model_config
from .task import Task
from .tokenizer import MIN_VOCAB_SIZE, train_bpe_tokenizer


def load_tokenizer(recipe: Recipe, args: TrainingArguments) -> Any:
    """The recipe's tokenizer; for prepared data, the one saved with the first directory; else a byte-level
    BPE trained on the training text (saved under output_dir so a resumed run uses the very same one): the
    main process trains it, the others load it."""
    if recipe.data.tokenizer:
        return load_tokenizer_from(recipe.data.tokenizer, "data.tokenizer")
    if recipe.data.source == "prepared":
        return AutoTokenizer.from_pretrained(Path(recipe.data.mixture[0]["path"]).expanduser() / "tokenizer")
    path = Path(recipe.train.output_dir) / "tokenizer"
    vocab = recipe.model.config.get("vocab_size", 8192)
    if vocab < MIN_VOCAB_SIZE:
        raise RecipeError(
            f"model.config.vocab_size={vocab} is too small to train the byte-level BPE tokenizer on the data "
            f"(at least {MIN_VOCAB_SIZE}: 256 bytes and 2 special tokens); raise it or set data.tokenizer"
        )
    with args.main_process_first(desc="train tokenizer"):
        if not (path / "tokenizer.json").exists():
            tok = train_bpe_tokenizer(
                islice(iter_documents(recipe.data), recipe.data.tokenizer_train_documents),
                vocab_size=vocab,
                model_max_length=recipe.data.seq_len,
            )
            if args.should_save:
                tok.save_pretrained(path)
        return AutoTokenizer.from_pretrained(path)


def build_model(recipe: Recipe, tokenizer) -> torch.nn.Module:
    from plait.modeling import PlaitForCausalLM

    implementation = attn_implementation(recipe, packed=recipe.data.document_masking)
    if recipe.model.pretrained:
        model = load_pretrained(
            recipe.model.pretrained,
            PlaitForCausalLM,
            attn_implementation=implementation,
            dtype=torch.float32,
        )
    else:
        config = model_config(
            recipe,
            vocab_size=len(tokenizer),
            **{name: getattr(tokenizer, name) for name in ("bos_token_id", "eos_token_id", "pad_token_id")},
        )
        config._attn_implementation = implementation
        model = PlaitForCausalLM(config)
    if model.config.vocab_size < len(tokenizer):
        raise RecipeError(
            f"model.config.vocab_size={model.config.vocab_size} is smaller than the tokenizer's "
            f"{len(tokenizer)} tokens"
        )
    # Weights stay fp32 (the optimizer's master copy, saved as such); bf16/fp16 training runs under autocast.
    # No cache in training: transformers only detects packed (document-masked) sequences without one.
    model.config.use_cache = False
    return model


def build_lm_task(recipe: Recipe, args: TrainingArguments) -> Task:
    if recipe.model.pretrained:  # a missing directory is reported before the data are tokenized
        check_local_path(recipe.model.pretrained, "model.pretrained")
    tokenizer = load_tokenizer(recipe, args)
    cache_dir = recipe.data.cache_dir or str(Path(recipe.train.output_dir) / "data_cache")
    samples = (
        recipe.train.max_steps * args.train_batch_size * args.gradient_accumulation_steps * args.world_size
    )
    dataset = build_lm_dataset(recipe.data, tokenizer, cache_dir, recipe.train.seed, samples)
    held_out = None
    if recipe.eval.every:
        held_out = load_documents(recipe.data, recipe.eval.split)
        held_out = Dataset.from_dict({"text": list(iter_texts(held_out, recipe.eval.max_documents))})
    set_seed(recipe.train.seed)  # the initial weights depend only on the seed
    return Task(
        model=build_model(recipe, tokenizer),
        train_dataset=dataset,
        data_collator=default_data_collator,
        processing_class=tokenizer,
        tokens_per_sample=recipe.data.seq_len,
        prepare_for_saving=lambda model: setattr(model.config, "use_cache", True),
        eval_dataset=held_out,
        evaluation={
            "seq_len": recipe.data.seq_len,
            "tasks": recipe.eval.tasks,
            "limit": recipe.eval.limit,
            "batch_size": recipe.eval.batch_size,
        },
        evaluate_at_end=bool(recipe.eval.every),  # the final model's validation loss, whatever the step count
    )
