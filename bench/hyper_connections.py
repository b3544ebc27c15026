"""Hyper-connection residuals versus `plain`: training-step time and activation memory at the same model size,
and (with --ablation) validation loss after the same token budget on the default corpus.

    python bench/hyper_connections.py --out bench/results/hyper_connections_cpu.json
    python bench/hyper_connections.py --ablation    # = plait-sweep bench/sweeps/hc_ablation.yaml

The ablation is the shipped sweep `bench/sweeps/hc_ablation.yaml` (three seeds paired by seed, parameter
counts matched, mean ± 95% intervals and paired differences): its report goes where that file says
(bench/results/sweep_hc_ablation_cpu.{md,json,png}).

Memory: on CUDA the peak allocated memory of one step; on CPU (no allocator statistics) the bytes autograd
saves for backward during the forward (unique storages), which is what the n-stream residual multiplies.
Step time is the median of `--steps` timed steps. One run, no error bars; CPU numbers on a shared
machine are indicative only.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import transformers

from plait.modeling import PlaitConfig, PlaitForCausalLM
from plait.modeling.weight_decay import parameter_groups
from plait.train.sweep import run_sweep

ABLATION = Path(__file__).parent / "sweeps" / "hc_ablation.yaml"

VARIANTS = [
    ("plain", {}),
    ("identity_hc", {}),
    ("hc", {}),
    ("mhc", {}),
    ("mhc_lite", {}),
    ("kromhc", {}),
    ("shc", {}),
    ("jpmhc", {"jpmhc_manifold": "stiefel"}),
    ("jpmhc", {"jpmhc_manifold": "grassmann"}),
    ("jpmhc", {"jpmhc_manifold": "bistochastic"}),
]


def label(residual: str, extra: dict) -> str:
    return f"{residual}-{extra['jpmhc_manifold']}" if extra else residual


def saved_activation_bytes(model, ids) -> int:
    storages: dict[int, int] = {}

    def pack(t):
        if t.device.type != "meta":
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids).loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(storages.values())


def measure(config: PlaitConfig, batch: int, seq: int, steps: int, device: str) -> dict:
    torch.manual_seed(0)
    model = PlaitForCausalLM(config).to(device)
    opt = torch.optim.AdamW(parameter_groups(model, 0.1), lr=1e-3)
    ids = torch.randint(0, config.vocab_size, (batch, seq), device=device)

    def step():
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    times = []
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(steps):
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    memory = torch.cuda.max_memory_allocated() if device == "cuda" else saved_activation_bytes(model, ids)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "step_time_s": statistics.median(times),
        "memory_bytes": memory,
    }


def base_config(args, vocab_size: int) -> dict:
    return dict(
        vocab_size=vocab_size,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 2,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max(2048, args.seq),
        hc_streams=4,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/hyper_connections_cpu.json")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ablation", action="store_true", help=f"run the sweep {ABLATION} (plait-sweep)")
    args = parser.parse_args()
    if args.ablation:
        run_sweep(ABLATION)
        return
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report = {
        "device": torch.cuda.get_device_name()
        if device == "cuda"
        else f"cpu ({platform.processor() or 'unknown'})",
        "threads": args.threads,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "shapes": {**base_config(args, args.vocab), "batch": args.batch, "seq": args.seq},
        "memory_metric": "peak CUDA memory"
        if device == "cuda"
        else "bytes saved for backward (unique storages)",
    }
    rows = {}
    for residual, extra in VARIANTS:
        config = PlaitConfig(**base_config(args, args.vocab), residual=residual, **extra)
        rows[label(residual, extra)] = measure(config, args.batch, args.seq, args.steps, device)
        print(label(residual, extra), rows[label(residual, extra)], flush=True)
    plain = rows["plain"]
    for row in rows.values():
        row["step_time_vs_plain"] = row["step_time_s"] / plain["step_time_s"]
        row["memory_vs_plain"] = row["memory_bytes"] / plain["memory_bytes"]
    report["results"] = rows
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
