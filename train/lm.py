"""The `plait-lm` task: the decoder LM (`PlaitForCausalLM`) on packed text blocks (`plait.train.data`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import AutoTokenizer, TrainingArguments, default_data_collator, set_seed

from .attention_backend import attn_implementation
from .data import build_lm_dataset, iter_texts, load_documents
from .pretrained import load_pretrained
from .recipe import Recipe, RecipeError, model_config
from .task import Task


def load_tokenizer(recipe: Recipe, args: TrainingArguments, documents) -> Any:
    """The recipe's tokenizer, or a byte-level BPE trained on the training text (saved under output_dir so a
    resumed run uses the very same one); the main process trains it, the others load it."""
    if recipe.data.tokenizer:
        return AutoTokenizer.from_pretrained(recipe.data.tokenizer)
    path = Path(recipe.train.output_dir) / "tokenizer"
    with args.main_process_first(desc="train tokenizer"):
        if not (path / "tokenizer.json").exists():
            from .tokenizer import train_bpe_tokenizer

            vocab = recipe.model.config.get("vocab_size", 8192)
            tok = train_bpe_tokenizer(
                iter_texts(documents, recipe.data.tokenizer_train_documents),
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
    documents = load_documents(recipe.data)
    tokenizer = load_tokenizer(recipe, args, documents)
    cache_dir = recipe.data.cache_dir or str(Path(recipe.train.output_dir) / "data_cache")
    with args.main_process_first(desc="tokenize and pack"):
        dataset = build_lm_dataset(
            documents, tokenizer, recipe.data, cache_dir=cache_dir, seed=recipe.train.seed
        )
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
    )
