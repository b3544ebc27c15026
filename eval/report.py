"""`plait-eval`'s outputs: the results JSON, a Markdown summary, and PNG plots where a picture reads better
(task accuracies against chance, loss against context length, the confusion matrix)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Chance accuracy of the multiple-choice tasks (choices per question), for the plot and the summary.
CHANCE = {
    "hellaswag": 0.25,
    "arc_easy": 0.25,
    "arc_challenge": 0.25,
    "openbookqa": 0.25,
    "sciq": 0.25,
    "mmlu": 0.25,
    "piqa": 0.5,
    "winogrande": 0.5,
    "boolq": 0.5,
    "copa": 0.5,
    "sst2": 0.5,
    "rte": 0.5,
    "mrpc": 0.5,
}
# The headline metric per task, as usually reported (acc_norm where the length of choices varies).
HEADLINE = {
    "hellaswag": "acc_norm",
    "arc_easy": "acc_norm",
    "arc_challenge": "acc_norm",
    "openbookqa": "acc_norm",
}


def write_report(results: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write results.json, summary.md and the plots into `out_dir`; returns the written paths by kind."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"results": out_dir / "results.json", "summary": out_dir / "summary.md"}
    suites = results["suites"]
    if "lm_eval" in suites:
        written["lm_eval_plot"] = plot_tasks(suites["lm_eval"], out_dir / "lm_eval.png")
    if "extrapolation" in suites:
        written["extrapolation_plot"] = plot_extrapolation(
            suites["extrapolation"], out_dir / "extrapolation.png"
        )
    if "image" in suites:
        written["confusion_plot"] = plot_confusion(suites["image"], out_dir / "confusion_matrix.png")
    results["files"] = {kind: path.name for kind, path in written.items()}
    written["results"].write_text(json.dumps(results, indent=1) + "\n")
    written["summary"].write_text(summary(results))
    return written


def headline_rows(lm_eval: dict[str, Any]) -> list[tuple[str, str, float, float | None, int | None]]:
    """(task, metric, value, stderr, documents) for each top-level task and group."""
    rows = []
    children = {c for name, kids in lm_eval.get("group_subtasks", {}).items() for c in kids}
    for name, metrics in {**lm_eval["tasks"], **lm_eval["groups"]}.items():
        if name in children:
            continue
        metric = HEADLINE.get(name, "acc")
        if metric not in metrics:  # e.g. a generative hub task: its first metric
            numeric = [k for k in metrics if not k.endswith("_stderr") and k != "n_samples"]
            if not numeric:
                continue
            metric = numeric[0]
        rows.append(
            (name, metric, metrics[metric], metrics.get(f"{metric}_stderr"), metrics.get("n_samples"))
        )
    return rows


def summary(results: dict[str, Any]) -> str:
    model, suites = results["model"], results["suites"]
    lines = [
        f"# plait-eval: {model['path']}",
        "",
        f"{model['class']}, {model['parameters'] / 1e6:.2f}M parameters, {model['dtype']} on "
        f"{results['machine']['device']}; {results['wall_seconds']:.0f} s wall time.",
        "",
    ]
    if "lm_eval" in suites:
        lm = suites["lm_eval"]
        settings = lm["lm_eval"]
        source = "hub tasks" if "hub" in settings["tasks_source"] else "offline tasks"
        limit = f", limit {settings['limit']} documents per task" if settings["limit"] else ""
        lines += [
            f"## lm-evaluation-harness {settings['version']} ({source}{limit})",
            "",
            "| task | metric | value | ± stderr | chance | documents |",
            "|---|---|---|---|---|---|",
        ]
        for name, metric, value, stderr, n in headline_rows(lm):
            chance = CHANCE.get(name)
            lines.append(
                f"| {name} | {metric} | {value:.4f} | {_fmt(stderr)} | {'' if chance is None else chance} | "
                f"{n if n is not None else ''} |"
            )
        if "lambada_openai" in lm["tasks"]:
            ppl = lm["tasks"]["lambada_openai"].get("perplexity")
            lines.append(f"\nLAMBADA perplexity (of the last word): {ppl:.4g}")
        lines.append("")
    if "perplexity" in suites:
        p = suites["perplexity"]
        lines += [
            f"## Perplexity on `{p['text']}`",
            "",
            f"{p['tokens']:,} tokens, windows of {p['context_length']} every {p['stride']}: loss "
            f"{p['loss']:.4f} nats/token, perplexity {p['perplexity']:.2f}"
            + (f", {p['bits_per_byte']:.4f} bits/byte" if "bits_per_byte" in p else "")
            + ".",
            "",
        ]
    if "extrapolation" in suites:
        x = suites["extrapolation"]
        lengths = [str(n) for n in x["lengths"]]
        lines += [
            f"## Length extrapolation on `{x['text']}` (loss in nats/token; trained at {x['train_length']})",
            "",
            "| variant | " + " | ".join(lengths) + " |",
            "|---|" + "---|" * len(lengths),
        ]
        for name, row in x["results"].items():
            lines.append(f"| {name} | " + " | ".join(f"{row[n]['loss']:.4f}" for n in lengths) + " |")
        lines.append("")
    if "image" in suites:
        im = suites["image"]
        top_k = next(k for k in im if k.startswith("top") and k != "top1" and not k.endswith("stderr"))
        lines += [
            f"## Image classification on `{im['data']}`",
            "",
            f"{im['examples']:,} images: top-1 {im['top1']:.4f} ± {im['top1_stderr']:.4f}, "
            f"{top_k} {im[top_k]:.4f} ± {im[top_k + '_stderr']:.4f}.",
            "",
            "| class | accuracy |",
            "|---|---|",
            *(f"| {name} | {acc:.4f} |" for name, acc in im["per_class_accuracy"].items()),
            "",
        ]
    lines.append(f"Files: {', '.join(results.get('files', {}).values())}")
    return "\n".join(lines) + "\n"


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_tasks(lm_eval: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    rows = [r for r in headline_rows(lm_eval) if CHANCE.get(r[0], 0) > 0 or r[1] == "acc"]
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(rows) + 1), 3.5))
    x = range(len(rows))
    ax.bar(
        x,
        [r[2] for r in rows],
        yerr=[r[3] or 0 for r in rows],
        capsize=3,
        color="tab:blue",
        ecolor="gray",
        label="model",
    )
    ax.scatter(
        x,
        [CHANCE.get(r[0], float("nan")) for r in rows],
        marker="_",
        s=600,
        c="tab:red",
        linewidths=2,
        label="chance",
    )
    ax.set_xticks(list(x), [f"{r[0]}\n({r[1]})" for r in rows], fontsize=7, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (± stderr)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_extrapolation(extrapolation: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    lengths = extrapolation["lengths"]
    for name, row in extrapolation["results"].items():
        ax.plot(lengths, [row[str(n)]["loss"] for n in lengths], marker="o", label=name)
    ax.axvline(extrapolation["train_length"], color="gray", linestyle=":", label="training length")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("loss (nats/token)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_confusion(image: dict[str, Any], path: Path) -> Path:
    import numpy as np

    plt = _pyplot()
    confusion = np.asarray(image["confusion_matrix"], dtype=float)
    normalised = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    n = len(confusion)
    fig, ax = plt.subplots(figsize=(min(12, 2 + 0.4 * n), min(11, 1.5 + 0.4 * n)))
    im = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        ax.set_xticks(range(n), image["classes"], rotation=90, fontsize=7)
        ax.set_yticks(range(n), image["classes"], fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax, label="share of the true class")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
