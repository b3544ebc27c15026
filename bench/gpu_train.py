"""Training throughput on one GPU at the 1B recipe's shape, in one go (one call on a lent H100).

- `recipe`: `plait-train 1b` itself (eager, then `train.compile=true`; single process, then ZeRO-3 and FSDP2
  through `accelerate launch` on one process): tokens/s, TFLOP/s and MFU as the trainer logs them
  (`log_history.json`, warm-up steps dropped, median).
- `variants`: one training step loop (the Trainer's numerics: fp32 master weights, bf16 autocast,
  activation checkpointing, fused AdamW) per component at the same shape, and transformers'
  `LlamaForCausalLM`: step time, tokens/s, step time ÷ the plain baseline's, peak memory, and the hand count
  of FLOPs per token (6·N + 12·L·d_attn·T) against the measured bf16 matrix throughput of the card.
A short table is printed last; the JSON goes to `--out`.

    python bench/gpu_train.py --out bench/results/train_1b_h100.json

Set-up on a machine without a package registry: see bench/gpu_kernels.py. Status: written in a session
without a GPU and not yet run on one.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
SHAPE = dict(
    vocab_size=32768,
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=24,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=4096,
    rope_theta=500000.0,
)
SEQ = 4096
VARIANTS = {  # every Plait variant trains with the 1b recipe's chunked loss unless it says otherwise
    "plain": {},
    "plain_logits_loss": {"loss_chunk_size": None},
    "mhc": {"residual": "mhc", "hc_streams": 4},
    "kromhc": {"residual": "kromhc", "hc_streams": 4},
    "polynorm": {"mlp_act": "polynorm"},  # polycom_scale_ffn (default): 1.5× width, SwiGLU's parameter count
    "lssa": {"attention": "lssa"},
    "lssar": {"attention": "lssar"},
    "pararnn_hybrid": {"layer_types": ["pararnn_gru" if i % 4 == 3 else "full_attention" for i in range(24)]},
}


def matmul_tflops() -> float:
    from triton.testing import do_bench

    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    return 2 * 8192**3 / do_bench(lambda: a @ b, warmup=50, rep=300, return_mode="median") / 1e9


def build(name: str) -> torch.nn.Module:
    if name == "llama":
        config = transformers.LlamaConfig(**SHAPE, attn_implementation="sdpa", tie_word_embeddings=False)
        model = transformers.LlamaForCausalLM(config)
    else:
        from plait.modeling import PlaitConfig, PlaitForCausalLM

        model = PlaitForCausalLM(PlaitConfig(**{**SHAPE, "loss_chunk_size": 4096, **VARIANTS[name]}))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.cuda().train()


def step_loop(name: str, micro_batch: int, steps: int, warmup: int = 2, compile_model: bool = False) -> dict:
    from plait.train.metrics import flops_per_token

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    model = build(name)
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    forward = torch.compile(model) if compile_model else model
    ids = torch.randint(0, SHAPE["vocab_size"], (micro_batch, SEQ), device="cuda")
    times, losses = [], []
    for i in range(warmup + steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = forward(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
            losses.append(float(loss))
    step_s = statistics.median(times)
    tokens = micro_batch * SEQ
    fpt = flops_per_token(model, SEQ)
    result = {
        "variant": name + ("+compile" if compile_model else ""),
        "params": n_params,
        "micro_batch": micro_batch,
        "step_s": step_s,
        "tokens_per_s": tokens / step_s,
        "flops_per_token": fpt,
        "tflops": fpt * tokens / step_s / 1e12,
        "peak_memory_GiB": torch.cuda.max_memory_allocated() / 2**30,
        "losses": losses,
    }
    del model, optimizer, forward
    torch.cuda.empty_cache()
    return result


def run_recipe(
    name: str, sets: list[str], work: Path, launcher: str | None = None, timeout: int = 420
) -> dict:
    out = work / name
    sets = [
        f"train.output_dir={out}",
        "train.max_steps=8",
        "checkpoint.every=0",
        "checkpoint.save_final=false",
        "logging.every=1",
        "logging.wandb=false",
        "logging.progress_bar=false",
        "eval.every=0",
        "data.tokenizer_train_documents=1000",
        "optim.warmup_steps=2",
        *sets,
    ]
    args = ["-m", "plait.train", "1b", *[x for s in sets for x in ("--set", s)]]
    cmd = [sys.executable, *args]
    if launcher:
        config = ROOT / "launch/accelerate" / launcher
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
        cmd += ["--num_processes", "1", "--main_process_port", "0", *args]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        return {"run": name, "error": f"timeout after {timeout} s", "tail": str(error.stdout)[-1500:]}
    wall = time.perf_counter() - start
    (work / f"{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        return {"run": name, "error": (proc.stdout + proc.stderr)[-2500:]}
    history = json.loads((out / "log_history.json").read_text())
    rows = [h for h in history if "tokens_per_s" in h][2:]  # warm-up (and compilation) steps dropped
    keys = ("tokens_per_s", "tflops_per_device", "mfu", "step_time_s")
    summary = {k: statistics.median(h[k] for h in rows) for k in keys if rows and all(k in h for h in rows)}
    return {"run": name, "steps_timed": len(rows), **summary, "wall_s": round(wall, 1), "last": rows[-1:]}


def table(report: dict) -> str:
    peak = report["bf16_matmul_TFLOPs"]
    lines = [f"{report['device']}: bf16 matmul {peak:.0f} TFLOP/s measured"]
    for r in report.get("recipe", []):
        if "error" in r:
            lines.append(f"recipe {r['run']}: ERROR {r['error'][-300:]}")
        else:
            lines.append(
                f"recipe {r['run']}: {r.get('tokens_per_s', 0):.0f} tok/s, "
                f"{r.get('tflops_per_device', 0):.0f} TFLOP/s, "
                f"MFU {r.get('mfu', float('nan')):.3f} (table peak)"
            )
    base = next((r for r in report.get("variants", []) if r.get("variant") == "plain"), None)
    for r in report.get("variants", []):
        if "error" in r:
            lines.append(f"{r['variant']}: ERROR {r['error'][-300:]}")
            continue
        ratio = r["step_s"] / base["step_s"] if base else float("nan")
        lines.append(
            f"{r['variant']:>16}: {r['step_s'] * 1e3:7.0f} ms/step, {r['tokens_per_s']:7.0f} tok/s, "
            f"{r['tflops']:4.0f} TFLOP/s ({100 * r['tflops'] / peak:.0f}% of measured), x{ratio:.3f} plain, "
            f"{r['peak_memory_GiB']:.1f} GiB"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", default="/tmp/plait_gpu_train")
    parser.add_argument("--parts", nargs="+", default=["variants", "recipe"], choices=["variants", "recipe"])
    parser.add_argument(
        "--variants", nargs="+", default=["plain", "llama", *[v for v in VARIANTS if v != "plain"]]
    )
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--compile", nargs="*", default=[], help="variants also timed under torch.compile")
    parser.add_argument("--recipe-runs", nargs="*", default=["eager", "compile", "zero3", "fsdp2"])
    args = parser.parse_args()
    assert torch.cuda.is_available(), "bench/gpu_train.py needs a CUDA GPU"
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out_path = Path(args.out)
    report = {
        "benchmark": "1B recipe shape (d 2048, 24 layers, GQA 32/8, seq 4096), bf16 autocast, one GPU",
        "device": torch.cuda.get_device_name(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "transformers": transformers.__version__,
        },
        "shape": SHAPE,
        "seq_len": SEQ,
        "bf16_matmul_TFLOPs": matmul_tflops(),
    }

    def save():
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=1))

    if "variants" in args.parts:
        report["variants"] = []
        runs = [(v, False) for v in args.variants] + [(v, True) for v in args.compile]
        for name, compiled in runs:
            start = time.time()
            try:
                row = step_loop(name, args.micro_batch, args.steps, compile_model=compiled)
            except Exception as error:
                row = {"variant": name + ("+compile" if compiled else ""), "error": repr(error)[-1500:]}
                torch.cuda.empty_cache()
            print(f"[{time.time() - start:.0f} s] {json.dumps(row)}", flush=True)
            report["variants"].append(row)
            save()
    if "recipe" in args.parts:
        runs = {
            "eager": ([], None),
            "compile": (["train.compile=true"], None),
            "zero3": ([], "zero3.yaml"),
            "fsdp2": ([], "fsdp.yaml"),
        }
        report["recipe"] = []
        for name in args.recipe_runs:
            sets, launcher = runs[name]
            row = run_recipe(name, sets, work, launcher)
            print(json.dumps(row)[:3000], flush=True)
            report["recipe"].append(row)
            save()
    save()
    print(table(report), flush=True)


if __name__ == "__main__":
    main()
