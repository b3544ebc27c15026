"""`make demo`: train a small Plait LM on the embedded default corpus (the Python standard library) on CPU.

Trains a byte-level BPE tokenizer, packs the corpus into blocks, trains with transformers `Trainer`, saves
model and tokenizer, reloads both with the Auto classes, and reports validation loss against the unigram
baseline plus a generated sample; then scores the saved model with `plait-eval` (lm-eval tasks with a
document limit, perplexity and length extrapolation on the corpus's validation files) and prints its summary.
Runs in a few minutes on 2 CPU cores.

    python -m plait.train.demo [--steps 1000] [--output-dir outputs/demo] [--eval-limit 100]
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, set_seed

import plait.modeling  # noqa: F401  (registers Plait with the Auto classes)
from plait.eval.cli import main as plait_eval
from plait.eval.corpus import default_corpus
from plait.eval.perplexity import evaluate_loss, unigram_cross_entropy
from plait.modeling import PlaitConfig, PlaitForCausalLM
from plait.train.data import tokenize_and_pack
from plait.train.tokenizer import train_bpe_tokenizer


def demo_config(tokenizer) -> PlaitConfig:
    return PlaitConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-dir", default="outputs/demo")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--eval-blocks", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--eval-suites",
        nargs="+",
        default=[
            "hellaswag",
            "lambada_openai",
            "arc_easy",
            "piqa",
            "winogrande",
            "perplexity",
            "extrapolation",
        ],
        help="plait-eval suites run on the saved model at the end (none: skip)",
    )
    parser.add_argument("--eval-limit", type=int, default=100, help="documents per lm-eval task")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    set_seed(args.seed)
    start = time.time()

    corpus = default_corpus()
    print(f"corpus: {corpus['train'].num_rows} train files, {corpus['validation'].num_rows} validation files")
    tokenizer = train_bpe_tokenizer(corpus["train"]["text"], vocab_size=args.vocab_size)
    train_blocks = tokenize_and_pack(corpus["train"], tokenizer, args.block_size)
    eval_blocks = tokenize_and_pack(corpus["validation"], tokenizer, args.block_size)
    print(f"blocks of {args.block_size} tokens: {len(train_blocks)} train, {len(eval_blocks)} validation")

    model = PlaitForCausalLM(demo_config(tokenizer))
    print(f"model: {model.num_parameters() / 1e6:.2f}M parameters")
    training_args = TrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=2e-3,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, args.steps // 20),
        weight_decay=0.1,
        adam_beta2=0.95,
        max_grad_norm=1.0,
        logging_steps=max(1, args.steps // 20),
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
    )
    Trainer(model=model, args=training_args, train_dataset=train_blocks).train()

    model.save_pretrained(args.output_dir)
    tokenizer.save_pretrained(args.output_dir)
    model = AutoModelForCausalLM.from_pretrained(args.output_dir)
    tokenizer = AutoTokenizer.from_pretrained(args.output_dir)

    metrics = evaluate_loss(model, eval_blocks, max_blocks=args.eval_blocks)
    unigram = unigram_cross_entropy(
        train_blocks, eval_blocks.select(range(min(args.eval_blocks, len(eval_blocks)))), len(tokenizer)
    )
    print(
        f"\nvalidation loss {metrics['loss']:.3f} nats (perplexity {metrics['perplexity']:.1f}) "
        f"on {metrics['tokens']} tokens; unigram baseline {unigram:.3f} nats "
        f"(perplexity {math.exp(unigram):.1f})"
    )

    prompt = "def fibonacci(n):\n"
    inputs = tokenizer(prompt, return_tensors="pt")
    set_seed(args.seed)
    sample = model.generate(
        **inputs,
        max_new_tokens=80,
        do_sample=True,
        temperature=0.8,
        top_p=0.95,
        pad_token_id=tokenizer.pad_token_id,
    )
    text = tokenizer.decode(sample[0], skip_special_tokens=True)
    print(f"\nsampled continuation (temperature 0.8, top-p 0.95):\n{text}")
    print(f"\nsaved to {args.output_dir}; {time.time() - start:.0f}s so far")

    if args.eval_suites != ["none"]:
        print("\nplait-eval on the saved model:")
        status = plait_eval(
            [args.output_dir, "--suites", *args.eval_suites, "--limit", str(args.eval_limit)]
            + ["--text", "default-corpus", "--max-documents", "8", "--train-length", str(args.block_size)]
            + ["--no-progress"]
        )
        if status:
            raise SystemExit(f"plait-eval failed (exit status {status})")
    print(f"total {time.time() - start:.0f}s")
    return {"validation_loss": metrics["loss"], "unigram_loss": unigram}


if __name__ == "__main__":
    main()
