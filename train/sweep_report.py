"""A sweep's report: per size and variant, each metric as mean ± 95% t-interval over seeds, the paired
difference to the baseline (by seed) with its interval and p-value, a plain verdict on whether each difference
is resolved, learning curves with bands, and (for a size ladder) the power-law fit of the first metric against
training compute. Written as `<prefix>.json`, `<prefix>.md`, `<prefix>_curves.png` and
`<prefix>_scaling.png` (plots need matplotlib: `pip install -e .[bench]`)."""

from __future__ import annotations

import json
import platform
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

from .metrics import device_name
from .scaling import fit_power_law, predict
from .stats import CONFIDENCE, mean_interval, paired_difference
from .sweep_spec import Sweep

REDUCE = {
    "last": lambda v: v[-1],
    "min": min,
    "max": max,
    "mean": statistics.fmean,
    "median": statistics.median,
}


def metric_value(result: dict[str, Any], key: str, reduction: str) -> float | None:
    """The run's `key` reduced over its logged values, or its extras' value (wall_seconds,
    peak_memory_bytes); None when the run never logged it."""
    values = [e[key] for e in result["history"] if key in e]
    if values:
        return float(REDUCE[reduction](values))
    extra = result.get("extras", {}).get(key)
    return None if extra is None else float(extra)


def curve(result: dict[str, Any], key: str) -> dict[int, float]:
    return {e["step"]: e[key] for e in result["history"] if key in e and "step" in e}


def summarize(sweep: Sweep, results: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON-able report of a sweep's collected runs (`plait.train.sweep.collect`)."""
    spec, baseline = sweep.spec, sweep.baseline
    sizes = sorted({r["size"] for r in results}, key=lambda s: -1 if s is None else s)
    finished = [r for r in results if r["status"] == "finished"]
    groups = []
    for size in sizes:
        runs = [r for r in finished if r["size"] == size]
        base = {
            key: {r["seed"]: metric_value(r, key, red) for r in runs if r["variant"] == baseline}
            for key, red in spec.metrics.items()
        }
        rows = []
        for variant in dict.fromkeys(r["variant"] for r in results if r["size"] == size):
            mine = [r for r in runs if r["variant"] == variant]
            planned = next(r for r in results if r["size"] == size and r["variant"] == variant)
            row = {
                "variant": variant,
                "parameters": planned["parameters"],
                "training_flops": planned["training_flops"],
                "matched": planned["matched"],
                "seeds": sorted(r["seed"] for r in mine),
                "metrics": {},
                "vs_baseline": {},
            }
            for key, red in spec.metrics.items():
                values = {r["seed"]: metric_value(r, key, red) for r in mine}
                values = {s: v for s, v in values.items() if v is not None}
                row["metrics"][key] = {**mean_interval(list(values.values())), "values": values}
                paired = [s for s in values if base[key].get(s) is not None]
                if variant != baseline:
                    row["vs_baseline"][key] = {
                        **paired_difference([values[s] for s in paired], [base[key][s] for s in paired]),
                        "seeds": paired,
                    }
            rows.append(row)
        groups.append({"size": size, "variants": rows, "curves": _curves(runs, list(spec.metrics))})
    summary = {
        "sweep": sweep.name,
        "sweep_file": str(sweep.path),
        "base_recipe": spec.recipe,
        "baseline": baseline,
        "seeds": spec.seeds,
        "confidence": CONFIDENCE,
        "metrics": spec.metrics,
        "device": device_name(),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "sizes": groups,
        "runs": [{k: v for k, v in r.items() if k != "history"} for r in results],
        "failed": [{"id": r["id"], "error": r.get("error", "")} for r in results if r["status"] == "failed"],
        "not_finished": [r["id"] for r in results if r["status"] in ("unfinished", "pending")],
    }
    if spec.ladder is not None:
        summary["scaling"] = _scaling(finished, next(iter(spec.metrics)), spec.metrics)
    return summary


def _curves(runs: list[dict[str, Any]], keys: list[str]) -> dict[str, dict[str, Any]]:
    """Per metric logged at two or more steps, per variant: the steps every finished seed logged, with the
    mean and 95% band over seeds."""
    out: dict[str, dict[str, Any]] = {}
    for key in keys:
        for variant in dict.fromkeys(r["variant"] for r in runs):
            per_seed = [curve(r, key) for r in runs if r["variant"] == variant]
            steps = sorted(set.intersection(*(set(c) for c in per_seed))) if per_seed else []
            if len(steps) < 2:
                continue
            bands = [mean_interval([c[s] for c in per_seed]) for s in steps]
            out.setdefault(key, {})[variant] = {
                "steps": steps,
                "mean": [b["mean"] for b in bands],
                "low": [b["low"] for b in bands],
                "high": [b["high"] for b in bands],
            }
    return out


def _scaling(finished: list[dict[str, Any]], key: str, metrics: dict[str, str]) -> dict[str, Any]:
    fits = {}
    for variant in dict.fromkeys(r["variant"] for r in finished):
        points = [
            (r["training_flops"], metric_value(r, key, metrics[key]))
            for r in finished
            if r["variant"] == variant
        ]
        points = [(c, v) for c, v in points if v is not None]
        fits[variant] = {
            **fit_power_law([c for c, _ in points], [v for _, v in points]),
            "points": points,
        }
    return {"metric": key, "form": "L(C) = E + A * (C / C0)^-alpha, C = training FLOPs", "fits": fits}


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def _cell(m: dict[str, Any]) -> str:
    if m["mean"] is None:
        return "–"
    if m["low"] is None:
        return f"{_number(m['mean'])} (n=1)"
    return f"{_number(m['mean'])} ± {_number(m['high'] - m['mean'])} (n={m['n']})"


def _difference(d: dict[str, Any]) -> str:
    if d["mean"] is None:
        return "–"
    if d["low"] is None:
        return f"{d['mean']:+.4g} (n=1)"
    return f"{d['mean']:+.4g} [{d['low']:+.4g}, {d['high']:+.4g}] p={d['p']:.2g}" + (
        " ✓" if d["resolved"] else ""
    )


def verdict(variant: str, baseline: str, key: str, d: dict[str, Any]) -> str:
    """One plain sentence on whether `variant - baseline` on `key` is resolved at the seeds run."""
    head = f"{variant} − {baseline} on {key}"
    if d["n"] < 2:
        return f"{head}: not resolved, {d['n']} paired seed(s) finished; an interval needs at least 2"
    where = f"{d['mean']:+.4g}, 95% interval [{d['low']:+.4g}, {d['high']:+.4g}], p = {d['p']:.2g}"
    if d["resolved"]:
        side = "higher" if d["mean"] > 0 else "lower"
        return f"{head}: {where}: resolved at {d['n']} seeds ({variant} is {side})"
    return f"{head}: {where}: NOT resolved at {d['n']} seeds (the interval contains 0)"


def markdown(summary: dict[str, Any]) -> str:
    keys = list(summary["metrics"])
    baseline = summary["baseline"]
    lines = [
        f"# Sweep `{summary['sweep']}`",
        "",
        f"Base recipe `{summary['base_recipe']}`, seeds {summary['seeds']}, baseline `{baseline}`, "
        f"device {summary['device']}, torch {summary['versions']['torch']}. Each cell: mean ± half-width of "
        "the 95% t-interval over seeds (n finished seeds). Δ: variant − baseline, paired by seed (same "
        "initial-weights seed, same data order), with its 95% t-interval and the paired t-test p-value; "
        "✓ marks an interval that excludes 0. Metrics (reduction over each run's log): "
        + ", ".join(f"`{k}` ({r})" for k, r in summary["metrics"].items())
        + ".",
    ]
    sentences = []
    for group in summary["sizes"]:
        title = "Results" if group["size"] is None else f"Size {group['size']}"
        header = ["variant", "parameters", "training FLOPs"] + [f"{k}" for k in keys]
        header += [f"Δ {k}" for k in keys]
        lines += ["", f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in group["variants"]:
            params = f"{row['parameters']:,}"
            if row["matched"]:
                m = row["matched"]
                params += f" ({m['width'].split('.')[-1]}={m['value']}, {m['deviation']:+.2%} {m['by']})"
            cells = [f"`{row['variant']}`", params, f"{row['training_flops']:.3g}"]
            cells += [_cell(row["metrics"][k]) for k in keys]
            cells += ["–" if row["variant"] == baseline else _difference(row["vs_baseline"][k]) for k in keys]
            lines.append("| " + " | ".join(cells) + " |")
            for k, d in row["vs_baseline"].items():
                prefix = "" if group["size"] is None else f"size {group['size']}: "
                sentences.append(prefix + verdict(row["variant"], baseline, k, d))
    lines += ["", "## Verdict", ""] + [f"- {s}" for s in sentences]
    if summary.get("scaling"):
        scaling = summary["scaling"]
        lines += [
            "",
            f"## Scaling fit of `{scaling['metric']}`",
            "",
            f"{scaling['form']}; 95% intervals.",
            "",
        ]
        lines += ["| variant | E | A | alpha | C0 | points |", "|---|---|---|---|---|---|"]
        for variant, fit in scaling["fits"].items():
            if "error" in fit:
                lines.append(f"| `{variant}` | {fit['error']} | | | | {fit['n']} |")
                continue
            cells = []
            for name in ("E", "A", "alpha"):
                p = fit[name]
                spread = "" if p["low"] is None else f" [{p['low']:.4g}, {p['high']:.4g}]"
                cells.append(f"{p['value']:.4g}{spread}")
            lines.append(f"| `{variant}` | " + " | ".join(cells) + f" | {fit['c0']:.3g} | {fit['n']} |")
        for variant, fit in scaling["fits"].items():
            if fit.get("at_bound"):
                lines.append(
                    f"\n`{variant}`: {', '.join(fit['at_bound'])} ended on a bound of the fit, so it is not "
                    "determined by these points (more sizes, or sizes further apart, are needed)."
                )
    if summary["failed"] or summary["not_finished"]:
        lines += ["", "## Runs left out", ""]
        lines += [f"- `{f['id']}` failed: {f['error']}" for f in summary["failed"]]
        lines += [f"- `{i}` has not finished" for i in summary["not_finished"]]
    return "\n".join(lines) + "\n"


def write_report(summary: dict[str, Any], prefix: Path) -> None:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{prefix}.json").write_text(json.dumps(summary, indent=1) + "\n")
    Path(f"{prefix}.md").write_text(markdown(summary))
    try:
        import matplotlib
    except ImportError:
        print("plait-sweep: matplotlib is not installed (pip install -e .[bench]): no plots written")
        return
    matplotlib.use("Agg")
    plot_curves(summary, Path(f"{prefix}_curves.png"))
    if summary.get("scaling"):
        plot_scaling(summary, Path(f"{prefix}_scaling.png"))


def plot_curves(summary: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    groups = [g for g in summary["sizes"] if g["curves"]]
    keys = list(dict.fromkeys(k for g in groups for k in g["curves"]))
    if not keys:
        return
    fig, axes = plt.subplots(
        len(groups), len(keys), figsize=(5 * len(keys), 3.6 * len(groups)), squeeze=False
    )
    for row, group in zip(axes, groups, strict=True):
        for ax, key in zip(row, keys, strict=True):
            for variant, c in group["curves"].get(key, {}).items():
                (line,) = ax.plot(c["steps"], c["mean"], label=variant)
                if c["low"][0] is not None:
                    ax.fill_between(c["steps"], c["low"], c["high"], color=line.get_color(), alpha=0.2)
            size = "" if group["size"] is None else f" (size {group['size']})"
            ax.set(xlabel="step", ylabel=key, title=f"{summary['sweep']}: {key}{size}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(f"mean and 95% band over seeds {summary['seeds']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scaling(summary: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    scaling = summary["scaling"]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for variant, fit in scaling["fits"].items():
        points = np.asarray(fit["points"], dtype=float)
        (dots,) = ax.plot(points[:, 0], points[:, 1], "o", alpha=0.6, label=variant)
        if "error" not in fit:
            grid = np.geomspace(points[:, 0].min(), points[:, 0].max() * 4, 100)
            alpha = fit["alpha"]
            ax.plot(
                grid,
                predict(fit, grid),
                color=dots.get_color(),
                label=f"{variant}: E={fit['E']['value']:.3g}, alpha={alpha['value']:.2g}",
            )
    ax.set_xscale("log")
    ax.set(xlabel="training FLOPs", ylabel=scaling["metric"], title=f"{summary['sweep']}: {scaling['form']}")
    ax.title.set_fontsize(8)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
