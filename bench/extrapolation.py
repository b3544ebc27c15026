"""Length extrapolation: train small decoders at length L with softmax, LSSA and LSSAR attention on the
default corpus, then evaluate validation loss at L, 2L, 4L and 8L with `plait.eval.extrapolation` (the same
validation tokens at every length, in disjoint windows; RoPE positions beyond training). Also evaluates the
LSSA-trained model with the LSSAR re-weighting switched on at inference only (the paper's fine-tuning-free
use of re-weighting), as a config variant of the same weights.

Writes JSON (device, versions, settings, losses) to `--out` and prints a Markdown table.

    python bench/extrapolation.py --out bench/results/extrapolation_cpu.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time

import torch

from plait.eval.corpus import default_corpus
from plait.eval.extrapolation import length_extrapolation
from plait.eval.perplexity import token_stream
from plait.modeling import PlaitConfig, PlaitForCausalLM
from plait.train.tokenizer import train_bpe_tokenizer


def train(config, stream, length, steps, batch, lr, seed) -> PlaitForCausalLM:
    torch.manual_seed(seed)
    model = PlaitForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 30) * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0)))
    )
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(stream) - length - 1, (batch,), generator=generator)
        x = torch.stack([stream[s : s + length] for s in starts.tolist()])
        loss = model(input_ids=x, labels=x, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        opt.zero_grad()
    return model.eval()


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--max-files", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.time()
    corpus = default_corpus(validation_percent=5.0, max_files=args.max_files)
    tokenizer = train_bpe_tokenizer(corpus["train"]["text"], vocab_size=2048)
    train_stream = token_stream(tokenizer, corpus["train"]["text"])
    val_stream = token_stream(tokenizer, corpus["validation"]["text"])
    multiples = (1, 2, 4, 8)
    lengths = [args.length * m for m in multiples]
    base = dict(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=352,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=args.length,
    )
    losses = {}
    for attention in ("softmax", "lssa", "lssar"):
        model = train(
            PlaitConfig(**base, attention=attention),
            train_stream,
            args.length,
            args.steps,
            args.batch,
            args.lr,
            args.seed,
        )
        variants = {"lssa (lssar at inference)": {"attention": "lssar"}} if attention == "lssa" else {}
        scored = length_extrapolation(
            model,
            val_stream,
            args.length,
            multiples,
            windows_at_longest=args.eval_tokens // lengths[-1],
            variants=variants,
            progress=False,
        )
        for name, row in scored["results"].items():
            label = attention if name == "as trained" else name
            losses[label] = {n: round(row[str(n)]["loss"], 4) for n in lengths}
        print(attention, losses[attention], f"{time.time() - started:.0f}s", flush=True)
    result = {
        "device": f"cpu ({platform.processor() or 'x86_64'}, {torch.get_num_threads()} threads)",
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__},
        "settings": {
            **vars(args),
            "model": base,
            "train_tokens": len(train_stream),
            "val_tokens": len(val_stream),
            "tokenizer": "byte-level BPE, vocab 2048, trained on the train split",
        },
        "validation_loss": {name: {str(n): v for n, v in row.items()} for name, row in losses.items()},
        "seconds": round(time.time() - started, 1),
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    header = f"| attention (trained at L={args.length}) | " + " | ".join(f"{n}" for n in lengths) + " |"
    print(header)
    print("|" + "---|" * (len(lengths) + 1))
    for name, row in losses.items():
        print(f"| {name} | " + " | ".join(f"{row[n]:.3f}" for n in lengths) + " |")


if __name__ == "__main__":
    main()
