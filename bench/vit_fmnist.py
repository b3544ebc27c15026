"""The ViT goal: `plait-train vit_tiny_fmnist` reaching >= 91% Fashion-MNIST test top-1 within 30 minutes of
wall time on 2 CPU cores, data loading included; with --variants, the per-variant table (a sweep).

Runs the recipe through the real training path (`plait.train.trainer.run`, as `plait-train` does), times the
whole run from before the data is read, and writes the test-accuracy curve (the trainer evaluates every
`eval.every` steps and at the end), the wall time, the machine and its load average to JSON, plus a PNG
of the curves (matplotlib: `pip install -e .[bench]`).

    OMP_NUM_THREADS=2 python bench/vit_fmnist.py --out bench/results/vit_fmnist_cpu.json
    python bench/vit_fmnist.py --variants      # = plait-sweep bench/sweeps/vit_fmnist_variants.yaml

The variant table is the shipped sweep `bench/sweeps/vit_fmnist_variants.yaml` (each component as a switch,
three seeds paired by seed, mean ± 95% intervals and paired differences to plain); its report goes where that
file says (bench/results/sweep_vit_fmnist_variants_cpu.{md,json,png}). `--variants OTHER.yaml` runs another.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
import transformers
from transformers import TrainerCallback

from plait.train.recipe import load_recipe
from plait.train.sweep import run_sweep
from plait.train.trainer import device_name, run

VARIANTS = Path(__file__).parent / "sweeps" / "vit_fmnist_variants.yaml"


def curves(log_history: list[dict]) -> dict[str, list]:
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    evals = [(e["step"], e["eval_accuracy"], e["eval_loss"]) for e in log_history if "eval_accuracy" in e]
    return {
        "train_loss": [{"step": s, "loss": v} for s, v in train],
        "eval": [{"step": s, "accuracy": a, "loss": loss} for s, a, loss in evals],
    }


class EvalClock(TrainerCallback):
    """Wall seconds since the run started (data loading included) at every evaluation."""

    def __init__(self, start: float):
        self.start, self.times = start, []

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.times.append({"step": state.global_step, "wall_seconds": time.perf_counter() - self.start})


def train_variant(name: str, overrides: list[str], output_dir: Path) -> dict:
    recipe = load_recipe(
        "vit_tiny_fmnist", [*overrides, f"train.output_dir={output_dir / name}", "checkpoint.resume=null"]
    )
    load_before = os.getloadavg()
    start = time.perf_counter()
    clock = EvalClock(start)
    result = run(recipe, callbacks=[clock])
    wall = time.perf_counter() - start
    history = curves(result.log_history)
    for point, stamp in zip(history["eval"], clock.times, strict=True):
        point["wall_seconds"] = stamp["wall_seconds"]
    eval_times = [e for e in result.log_history if "eval_accuracy" in e]
    final = eval_times[-1] if eval_times else {}
    return {
        "variant": name,
        "overrides": overrides,
        "wall_seconds": wall,
        "test_accuracy": final.get("eval_accuracy"),
        "test_loss": final.get("eval_loss"),
        "steps": recipe.train.max_steps,
        "epochs": recipe.train.max_steps * recipe.train.micro_batch_size / len(result.trainer.train_dataset),
        "parameters": sum(p.numel() for p in result.trainer.model.parameters()),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "curves": history,
        "recipe": recipe.to_dict(),
    }


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        train, evals = r["curves"]["train_loss"], r["curves"]["eval"]
        left.plot([p["step"] for p in train], [p["loss"] for p in train], label=r["variant"])
        right.plot([p["step"] for p in evals], [100 * p["accuracy"] for p in evals], "o-", label=r["variant"])
    left.set(xlabel="step", ylabel="training loss", title="Plait ViT on Fashion-MNIST: training loss")
    left.set_ylim(0, 1.2)  # the start (2.3) would flatten the part where the variants differ
    right.set(xlabel="step", ylabel="test top-1 (%)", title="test accuracy")
    right.axhline(91.0, color="grey", linestyle="--", linewidth=1)
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right" if ax is left else "lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench/results/vit_fmnist_cpu.json")
    parser.add_argument(
        "--variants", nargs="?", const=str(VARIANTS), help="run the variant sweep (default: %(const)s)"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override")
    parser.add_argument("--output-dir", default="outputs/bench_vit_fmnist")
    args = parser.parse_args()
    if args.variants:
        run_sweep(args.variants)
        return
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = [train_variant("plain", args.overrides, Path(args.output_dir))]
    print(json.dumps({k: results[-1][k] for k in ("variant", "wall_seconds", "test_accuracy")}))
    report = {
        "benchmark": "plait-train vit_tiny_fmnist: Fashion-MNIST test top-1 and wall time, data included",
        "device": device_name(),
        "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "results": results,
    }
    out.write_text(json.dumps(report, indent=1))
    plot(results, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
