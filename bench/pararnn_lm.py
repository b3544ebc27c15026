"""Small LM comparison for ParaRNN: attention vs ParaGRU vs ParaLSTM vs hybrid, validation loss at equal
parameters (full multi-head attention has 4·C² mixer weights, as a ParaRNN mixer's in/out projections do)
and equal tokens. Byte-level (vocab 256) on the Python standard library source (split by file hash), so it
needs no tokenizer or download. CPU-sized: a sanity comparison, not a scaling study.

    python bench/pararnn_lm.py --out bench/results/pararnn_lm_cpu.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sysconfig
import time
from pathlib import Path

import torch
import transformers
from datasets import Dataset

from plait.eval.perplexity import evaluate_loss
from plait.modeling import PlaitConfig, PlaitForCausalLM

MODELS = {
    "attention": ["full_attention"] * 4,
    "pararnn_gru": ["pararnn_gru"] * 4,
    "pararnn_lstm": ["pararnn_lstm"] * 4,
    "hybrid (gru, gru, gru, attention)": ["pararnn_gru"] * 3 + ["full_attention"],
}


def stdlib_bytes(max_bytes: int) -> tuple[torch.Tensor, torch.Tensor]:
    root = Path(sysconfig.get_paths()["stdlib"])
    train, val = bytearray(), bytearray()
    for path in sorted(root.glob("*.py")):  # top-level modules only: enough text, fast to read
        rel = path.relative_to(root).as_posix()
        split = val if int(hashlib.md5(rel.encode()).hexdigest()[:8], 16) % 100 < 5 else train
        split.extend(path.read_bytes())
    return (
        torch.frombuffer(bytes(train[:max_bytes]), dtype=torch.uint8).long(),
        torch.frombuffer(bytes(val[: max_bytes // 10]), dtype=torch.uint8).long(),
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench/results/pararnn_lm_cpu.json")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--eval-batches", type=int, default=20)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    train, val = stdlib_bytes(4_000_000)
    # The same validation blocks for every model: eval_batches x batch windows spread over the split.
    starts = torch.arange(args.eval_batches * args.batch) * args.block % (len(val) - args.block)
    val_blocks = Dataset.from_dict({"input_ids": [val[i : i + args.block].tolist() for i in starts]})
    results = []
    for name in args.models:
        layer_types = MODELS[name]
        torch.manual_seed(0)
        config = PlaitConfig(
            vocab_size=256,
            hidden_size=args.hidden,
            intermediate_size=2 * args.hidden,
            num_hidden_layers=len(layer_types),
            num_attention_heads=4,
            num_key_value_heads=4,
            layer_types=layer_types,
            tie_word_embeddings=True,
            use_cache=False,
        )
        model = PlaitForCausalLM(config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.1, betas=(0.9, 0.95))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min(1.0, (s + 1) / 10) * 0.5 * (1 + math.cos(math.pi * s / args.steps))
        )
        gen = torch.Generator().manual_seed(1)  # same batches for every model: equal tokens
        start = time.time()
        for _ in range(args.steps):
            idx = torch.randint(0, len(train) - args.block - 1, (args.batch,), generator=gen)
            batch = torch.stack([train[i : i + args.block] for i in idx])
            loss = model(batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step(), schedule.step(), optimizer.zero_grad()
        train_s = time.time() - start
        val_loss = evaluate_loss(model, val_blocks, batch_size=args.batch)["loss"]
        row = {
            "model": name,
            "layer_types": layer_types,
            "parameters": model.num_parameters(),
            "train_loss_last": loss.item(),
            "val_loss": val_loss,
            "train_seconds": train_s,
        }
        print(json.dumps(row), flush=True)
        results.append(row)
        write_report(args, results)


def write_report(args, results):
    report = {
        "benchmark": "byte-level LM on stdlib source, equal params (±state weights) and tokens",
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "settings": vars(args),
        "tokens_seen": args.steps * args.batch * args.block,
        "results": results,
    }
    with open(args.out, "w") as f:  # rewritten after every model, so a cut-short run keeps its rows
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
