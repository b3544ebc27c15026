"""MkDocs hook: every benchmark table and plot in the docs comes from `bench/results/` at build time.

A page writes `<!-- bench: NAME -->` on a line of its own; the hook replaces it with the table that the
renderer NAME (below) builds from its JSON, followed by a line naming the result file, the machine and the
date recorded in it (or, for a JSON without a date, the date of the commit that last changed it). So a
number in the docs is always the one in the file, and a renderer whose JSON lost a field fails the build.
The PNGs in `bench/results/` are published under `bench-results/` so pages embed them by relative link.

The hook also lays out the `plait` package tree for mkdocstrings (see `on_startup`).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
PACKAGES = ("modeling", "kernels", "train", "eval", "launch")
MARKER = re.compile(r"^<!-- bench: ([a-z0-9_]+) -->$", re.MULTILINE)

# Published 0-shot scores of two small reference models, shown beside the demo model's: they are not
# measured by Plait, so they are the one set of numbers kept here rather than in bench/results/.
REFERENCE_SCORES = {
    ("lambada_openai", "acc"): {"GPT-2 124M": 0.326, "Pythia-160M": 0.328},
    ("lambada_openai", "perplexity"): {"GPT-2 124M": 40.1},
    ("hellaswag", "acc_norm"): {"GPT-2 124M": 0.311},
    ("piqa", "acc"): {"Pythia-160M": 0.627},
    ("arc_easy", "acc"): {"Pythia-160M": 0.435},
    ("winogrande", "acc"): {"Pythia-160M": 0.531},
}
CHANCE = {
    "hellaswag": 0.25,
    "piqa": 0.5,
    "arc_easy": 0.25,
    "arc_challenge": 0.25,
    "winogrande": 0.5,
    "mmlu": 0.25,
}

RENDERERS: dict[str, tuple[tuple[str, ...], Callable[..., list[list[str]]]]] = {}


def table(name: str, *result_files: str):
    """Register `fn(json, ...) -> rows` (the first row is the header) as the table NAME, built from the
    JSON of each of `result_files` in order; the first one's machine and date label the table."""

    def register(fn):
        RENDERERS[name] = (result_files, fn)
        return fn

    return register


def _load(result_file: str) -> dict:
    return json.loads((RESULTS / result_file).read_text())


def header(columns: str) -> list[str]:
    """A header row written as one string, "a | b | c"."""
    return columns.split(" | ")


def _markdown(rows: list[list[str]]) -> str:
    header, *body = rows
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _machine(data: dict) -> str:
    compiled_for = f"compiled for {data['target']} on a CPU (no GPU)" if "target" in data else None
    device = data.get("device") or data.get("machine", {}).get("device") or compiled_for or "not recorded"
    threads = data.get("threads") or data.get("cpu_threads") or data.get("torch_threads")
    return f"{device}, {threads} thread{'s' if threads != 1 else ''}" if threads else device


def _date(data: dict, result_file: str) -> str:
    if data.get("date"):
        return f"recorded {data['date'][:10]}"
    try:
        out = subprocess.run(
            ["git", "log", "-1", "--format=%cs", "--", f"bench/results/{result_file}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except FileNotFoundError:  # no git: a source archive
        out = ""
    return f"committed {out}" if out else "date not recorded"


def _versions(data: dict) -> str:
    versions = data.get("versions") or {k: data[k] for k in ("torch", "transformers") if k in data}
    return ", ".join(f"{k} {v}" for k, v in versions.items() if k in ("torch", "transformers", "triton"))


def render(name: str) -> str:
    if name not in RENDERERS:
        raise PluginError(f"bench table {name!r} is not defined; defined: {sorted(RENDERERS)}")
    result_files, fn = RENDERERS[name]
    data = [_load(result_file) for result_file in result_files]
    try:
        rows = fn(*data)
    except (KeyError, IndexError, TypeError) as err:
        raise PluginError(f"bench table {name!r}: {', '.join(result_files)} lack {err!r}") from err
    files = ", ".join(f"`bench/results/{result_file}`" for result_file in result_files)
    source = f"{files} · {_machine(data[0])} · {_versions(data[0])} · {_date(data[0], result_files[0])}"
    return f"{_markdown(rows)}\n\n<small>Source: {source}</small>\n"


def _x(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}×"


def _pm(mean_std: list[float], scale: float = 1.0, digits: int = 1) -> str:
    mean, std = mean_std
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def _bytes(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


@table("hyper_connections_cost", "hyper_connections_cpu.json")
def _hc_cost(d):
    rows = [header("residual | parameters | step time vs plain | activation memory vs plain")]
    for name, r in d["results"].items():
        rows.append([name, f"{r['parameters']:,}", _x(r["step_time_vs_plain"]), _x(r["memory_vs_plain"])])
    return rows


@table("kernels", "kernels_cpu.json")
def _kernels(d):
    rows = [header("operator (fp32) | shape | forward + backward ms | saved for backward")]
    for p in d["polynorm"]:
        shape = " × ".join(map(str, p["shape"]))
        rows.append(
            [
                "PolyNorm eager reference",
                shape,
                f"{p['eager']['fwd_bwd_ms']:.0f}",
                _bytes(p["eager"]["saved_bytes"]),
            ]
        )
        rows.append(["PolyNorm fused Triton", shape, "not timed", _bytes(p["fused_triton"]["saved_bytes"])])
    labels = {
        "sdpa_softmax": "SDPA softmax (causal)",
        "lssa_reference": "LSSA reference",
        "lssar_reference": "LSSAR reference",
        "lssa_triton": "LSSA Triton",
        "lssar_triton": "LSSAR Triton",
    }
    for a in d["attention"]:
        s = a["shape"]
        shape = f"B{s['batch']} H{s['heads']} L{s['length']} D{s['head_dim']}"
        for key, label in labels.items():
            ms = a[key].get("fwd_bwd_ms")
            rows.append(
                [label, shape, f"{ms:.0f}" if ms is not None else "not timed", _bytes(a[key]["saved_bytes"])]
            )
    return rows


@table("extrapolation", "extrapolation_cpu.json")
def _extrapolation(d):
    losses = d["validation_loss"]
    lengths = list(next(iter(losses.values())))
    train_length = d["settings"]["length"]
    rows = [[f"attention (trained at L = {train_length})", *[f"loss at {n}" for n in lengths]]]
    for name, by_length in losses.items():
        rows.append([name, *[f"{by_length[n]:.3f}" for n in lengths]])
    return rows


def _pararnn(d):
    rows = [
        header(
            "cell | batch × width | T | sequential s | parallel s | speedup | Newton iters to 1e-5 | after 3"
        )
    ]
    for r in d["results"]:
        rows.append(
            [
                r["cell"].upper(),
                f"{r['batch']} × {r['width']}",
                str(r["length"]),
                f"{r['sequential_s']:.3f}",
                f"{r['parallel_s']:.3f}",
                f"{r['parallel_speedup']:.1f}×",
                str(r["newton_iters_to_1e-5"]),
                f"{r['newton_residual_by_iters'][2]:.0e}",
            ]
        )
    return rows


table("pararnn", "pararnn_cpu.json")(_pararnn)
table("pararnn_2x128", "pararnn_cpu_2x128.json")(_pararnn)


@table("throughput", "throughput_cpu.json")
def _throughput(d):
    s = d["shapes"]
    shape = (
        f"{s['layers']} layers × {s['hidden_size']}, batch {s['batch_size']} × {s['seq_len']}, {s['dtype']}"
    )
    rows = [header("model | shape | tokens/s | vs Llama")]
    rows.append(["Plait baseline", shape, f"{d['tokens_per_s']['plait']:.0f}", _x(d["plait_over_llama"])])
    rows.append(["transformers Llama", shape, f"{d['tokens_per_s']['llama']:.0f}", _x(1.0)])
    return rows


@table("train_throughput", "train_throughput_cpu.json")
def _train_throughput(d):
    engines = {"single": "one process", "ddp": "DDP", "zero2": "ZeRO-2", "zero3": "ZeRO-3", "fsdp": "FSDP2"}
    rows = [
        header(
            "recipe | engine | processes | tokens/s | TFLOP/s per device | MFU (vs matmul peak) | final loss"
        )
    ]
    for r in d["results"]:
        rows.append(
            [
                r["size"],
                engines.get(r["engine"], r["engine"]),
                str(r["processes"]),
                f"{r['tokens_per_s']:.1f}",
                f"{r['tflops_per_device']:.4f}",
                f"{r['mfu_vs_measured_matmul_peak']:.0%}",
                f"{r['final_loss']:.3f}",
            ]
        )
    return rows


def _task_metric(tasks: dict, task: str, metric: str) -> str:
    r = tasks.get(task)
    if r is None or metric not in r:
        return "–"
    if metric == "perplexity":
        return f"{r[metric]:.1e}"
    return f"{r[metric]:.3f} ± {r[metric + '_stderr']:.3f}"


@table("eval_demo", "plait_eval_demo_limit100_cpu.json", "plait_eval_demo_full_reference_tasks_cpu.json")
def _eval_demo(d, d_full):
    limited = {**d["suites"]["lm_eval"]["tasks"], **d["suites"]["lm_eval"]["groups"]}
    full = d_full["suites"]["lm_eval"]["tasks"]
    references = ["GPT-2 124M", "Pythia-160M"]
    rows = [["task (metric)", "demo, 100 documents/task", "demo, full split", *references, "chance"]]
    cells = [
        ("lambada_openai", "acc"),
        ("lambada_openai", "perplexity"),
        ("hellaswag", "acc_norm"),
        ("piqa", "acc"),
        ("arc_easy", "acc"),
        ("arc_challenge", "acc_norm"),
        ("winogrande", "acc"),
        ("mmlu", "acc"),
    ]
    for task, metric in cells:
        refs = REFERENCE_SCORES.get((task, metric), {})
        rows.append(
            [
                f"{task} ({metric})",
                _task_metric(limited, task, metric),
                _task_metric(full, task, metric),
                *[str(refs.get(ref, "–")) for ref in references],
                str(CHANCE.get(task, "–")),
            ]
        )
    return rows


@table("eval_demo_text", "plait_eval_demo_limit100_cpu.json")
def _eval_demo_text(d):
    p = d["suites"]["perplexity"]
    e = d["suites"]["extrapolation"]
    rows = [header("measure | value")]
    rows.append(["text", f"{p['text']} ({p['documents']} validation files, {p['tokens']:,} tokens)"])
    rows.append(
        ["perplexity (window / stride)", f"{p['perplexity']:.1f} ({p['context_length']} / {p['stride']})"]
    )
    rows.append(["loss (nats/token), bits per byte", f"{p['loss']:.3f}, {p['bits_per_byte']:.3f}"])
    for length, r in e["results"]["as trained"].items():
        rows.append([f"loss at {length} tokens (trained at {e['train_length']})", f"{r['loss']:.3f}"])
    return rows


@table("finetune_minilm_sst2", "finetune_minilm_sst2_cpu.json")
def _finetune_minilm(d):
    rows = [
        header(
            "method | trainable | seeds | SST-2 acc. % | MRPC AUC drop | embedding drift | step s | RSS MB"
        )
    ]
    for r in d["summary"]:
        method = r["method"] + (f" (r={r['rank']})" if r["rank"] else "")
        rows.append(
            [
                method,
                f"{r['trainable_params']:,}",
                str(r["seeds"]),
                _pm(r["sst2_accuracy"], 100),
                _pm(r["forgetting_auc"], 100),
                _pm(r["embedding_drift"], 1, 3),
                f"{r['step_time_s']:.2f}",
                f"{r['peak_rss_mb']:.0f}",
            ]
        )
    base = d["base"]
    rows.append(
        [
            "base model",
            "0",
            "",
            f"{base['sst2_majority'] * 100:.1f} (majority class)",
            f"AUC {base['mrpc_auc'] * 100:.1f}",
            "",
            "",
            "",
        ]
    )
    return rows


@table("finetune_lm_transfer", "finetune_lm_transfer_cpu.json")
def _finetune_lm(d):
    rows = [
        header(
            "method | trainable | English ppl (new) | Python ppl (old) | Python ppl / base | step s | RSS MB"
        )
    ]
    base = d["base"]
    rows.append(["base", "0", f"{base['english_ppl']:.1f}", f"{base['python_ppl']:.2f}", "1.00", "", ""])
    for r in d["summary"]:
        rows.append(
            [
                r["method"],
                f"{r['trainable_params']:,}",
                _pm(r["english_ppl"]),
                _pm(r["python_ppl"], digits=2),
                f"{r['forgetting'][0]:.2f}",
                f"{r['step_time_s'][0]:.3f}",
                f"{r['peak_rss_mb'][0]:.0f}",
            ]
        )
    return rows


@table("finetune_vit_transfer", "finetune_vit_transfer_cpu.json")
def _finetune_vit(d):
    rows = [
        header(
            "method | trainable | digits top-1 % (new) | FMNIST top-1 % (old) | points lost | step s | RSS MB"
        )
    ]
    rows.append(["base", "0", "", f"{d['base']['fmnist_top1'] * 100:.1f}", "0", "", ""])
    for r in d["summary"]:
        rows.append(
            [
                r["method"],
                f"{r['trainable_params']:,}",
                _pm(r["digits_top1"], 100),
                _pm(r["fmnist_top1"], 100),
                f"{r['forgetting'][0] * 100:.1f}",
                f"{r['step_time_s'][0]:.3f}",
                f"{r['peak_rss_mb'][0]:.0f}",
            ]
        )
    return rows


def _vit_rows(d):
    header = ["variant", "parameters", "epochs"]
    evals = max(len(r["curves"]["eval"]) for r in d["results"])
    header += [f"eval {i + 1}" for i in range(evals - 1)] + ["final top-1", "wall (data included)"]
    rows = [header]
    for r in d["results"]:
        accuracies = [f"{e['accuracy'] * 100:.1f}" for e in r["curves"]["eval"][:-1]]
        accuracies += [""] * (evals - 1 - len(accuracies))
        rows.append(
            [
                r["variant"],
                f"{r['parameters'] / 1000:.0f}k",
                f"{r['epochs']:g}",
                *accuracies,
                f"{r['test_accuracy'] * 100:.2f}%",
                f"{r['wall_seconds'] / 60:.1f} min",
            ]
        )
    return rows


table("vit_fmnist", "vit_fmnist_cpu.json")(_vit_rows)


def _m(x: float) -> str:
    return f"{x / 1e6:.2f} M"


@table("data_pipeline", "data_pipeline_cpu.json")
def _data_pipeline(d):
    rows = [
        header(
            "JSONL corpus | tokens | tokenizer `encode_batch` | `plait-data prepare` | prepare / tokenizer | "
            "bytes per token | peak RSS: main / largest worker | open | loader (document masking) | "
            "first sample at 0 / at the last"
        )
    ]
    for r in d["results"]:
        first, last = (r["first_sample_ms_at"][k] for k in sorted(r["first_sample_ms_at"], key=int))
        rows.append(
            [
                f"{r['corpus_mb']} MB",
                _m(r["tokens"]),
                f"{_m(r['tokenizer_tokens_per_s'])}/s",
                f"{_m(r['prepare_tokens_per_s'])}/s",
                f"{r['prepare_vs_tokenizer']:.0%}",
                f"{r['bytes_per_token']:.3f}",
                f"{r['peak_rss_main_mb']:.0f} / {r['peak_rss_worker_mb']:.0f} MB",
                f"{r['open_s'] * 1e3:.0f} ms",
                f"{_m(r['loader_tokens_per_s'])} tokens/s",
                f"{first:.2f} / {last:.2f} ms",
            ]
        )
    return rows


@table("data_pipeline_compare", "data_pipeline_compare_cpu.json")
def _data_pipeline_compare(d):
    r = d["results"][0]
    rows = [
        header("pipeline | preparation | bytes per token | peak RSS: main / largest worker | training reads")
    ]
    rows.append(
        [
            "`plait-data prepare` + `MixtureDataset`",
            f"{_m(r['prepare_tokens_per_s'])} tokens/s ({r['prepare_vs_tokenizer']:.0%} of `encode_batch`'s "
            f"{_m(r['tokenizer_tokens_per_s'])})",
            f"{r['bytes_per_token']:.1f}",
            f"{r['peak_rss_main_mb']:.0f} / {r['peak_rss_worker_mb']:.0f} MB",
            f"{_m(r['loader_tokens_per_s'])} tokens/s, document-masked windows",
        ]
    )
    rows.append(
        [
            "previous path: `datasets.map` tokenise + pack into Arrow blocks",
            f"{_m(r['baseline_tokens_per_s'])} tokens/s",
            f"{r['baseline_bytes_per_token']:.1f}",
            f"{r['baseline_peak_rss_main_mb']:.0f} / {r['baseline_peak_rss_worker_mb']:.0f} MB",
            "the packed blocks",
        ]
    )
    rows.append(
        [
            f"litdata {r['litdata_version']}: `optimize` + `TokensLoader`",
            f"{_m(r['litdata_prepare_tokens_per_s'])} tokens/s",
            f"{r['litdata_bytes_per_token']:.1f} (int32 tensors)",
            f"{r['litdata_peak_rss_main_mb']:.0f} / {r['litdata_peak_rss_worker_mb']:.0f} MB",
            f"{_m(r['litdata_loader_tokens_per_s_no_document_masking'])} tokens/s, no document index",
        ]
    )
    return rows


def _range(values) -> str:
    low, high = min(values), max(values)
    return f"{low}" if low == high else f"{low}–{high}"


def _per_kernel(report: dict) -> dict[str, list[dict]]:
    kernels: dict[str, list[dict]] = {}
    for launch in report["launches"]:
        kernels.setdefault(launch["kernel"], []).append(launch)
    return kernels


@table("kernels_static", "kernels_static_sm90.json", "kernels_static_sm80.json")
def _kernels_static(sm90, sm80):
    rows = [
        header(
            "kernel | launches | sm_90 registers / thread | sm_90 spill bytes | sm_90 max shared memory | "
            "sm_90 min resident warps / SM | sm_80 registers / thread | sm_80 spill bytes | "
            "sm_80 max shared memory"
        )
    ]
    hopper, ampere = _per_kernel(sm90), _per_kernel(sm80)
    for name in sorted(hopper):
        cells = [f"`{name}`", str(len(hopper[name]))]
        for target, launches in (("sm_90", hopper[name]), ("sm_80", ampere[name])):
            cells += [
                _range([x["registers"] for x in launches]),
                str(max(x["local_bytes"] + x["stack_bytes"] for x in launches)),
                f"{max(x['shared_bytes'] for x in launches) / 1024:.1f} KiB",
            ]
            if target == "sm_90":
                cells.append(str(min(x["programs_per_sm"] * x["num_warps"] for x in launches)))
        rows.append(cells)
    return rows


@table("kernels_predicted", "kernels_static_sm90.json")
def _kernels_predicted(d):
    p = d["predicted"]
    device = p["device"]
    rows = [
        header(f"kernel at the 1b shapes | bytes moved | FLOPs | predicted floor, {device['name']} | bound")
    ]
    for name, k in p["kernels"].items():
        rows.append(
            [
                name,
                f"{k['bytes'] / 1e6:.0f} MB",
                f"{k['flops'] / 1e9:.0f} GFLOP",
                f"{k['predicted_floor_ms']:.3f} ms (predicted)",
                k["bound"],
            ]
        )
    return rows


ENGINE_NAMES = {
    "ddp": "DDP",
    "fsdp2": "FSDP2, synchronous save",
    "fsdp2_async": "FSDP2, background write",
    "zero3": "DeepSpeed ZeRO-3",
}


@table("checkpoint_stall", "checkpoint_stall_cpu.json")
def _checkpoint_stall(d):
    rows = [header("engine | stall per checkpoint | checkpoint size | median step | steps during a write")]
    for engine, r in d["results"].items():
        during = r["step_s_during_a_write_median"]
        rows.append(
            [
                ENGINE_NAMES.get(engine, engine),
                f"{r['stall_s']:.2f} s",
                f"{r['checkpoint_mb'] / 1000:.1f} GB",
                f"{r['step_s_median']:.1f} s",
                f"{r['steps_during_a_write']} (median {during:.1f} s)" if during is not None else "0",
            ]
        )
    return rows


def _g(x: float) -> str:
    return f"{x:.4g}"


def _sweep(d):
    """A `plait-sweep` report: per size and variant, each metric's mean with its 95% interval over seeds
    and the paired difference to the baseline (interval, p-value; ✓ where the interval excludes 0)."""
    metrics = list(d["metrics"])
    ladder = any(size["size"] is not None for size in d["sizes"])
    cols = (["size"] if ladder else []) + ["variant", "parameters", "seeds"]
    cols += [f"{m} (mean [95% CI])" for m in metrics] + [f"Δ {m} vs {d['baseline']}" for m in metrics]
    rows = [cols]
    for size in d["sizes"]:
        for v in size["variants"]:
            cells = ([str(size["size"])] if ladder else []) + [f"`{v['variant']}`", f"{v['parameters']:,}"]
            cells.append(str(len(v["seeds"])))
            for m in metrics:
                r = v["metrics"].get(m)
                interval = f"{_g(r['mean'])} [{_g(r['low'])}, {_g(r['high'])}]" if r and r["n"] > 1 else "–"
                cells.append(interval)
            for m in metrics:
                r = (v.get("vs_baseline") or {}).get(m)
                if not r or r["n"] < 2:
                    cells.append("–")
                    continue
                mark = " ✓" if r["resolved"] else ""
                cells.append(f"{r['mean']:+.3g} [{r['low']:+.3g}, {r['high']:+.3g}] p={r['p']:.2g}{mark}")
            rows.append(cells)
    return rows


for _name in ("hc_ablation", "vit_fmnist_variants", "hc_ladder", "pararnn_lm"):
    table(f"sweep_{_name}", f"sweep_{_name}_cpu.json")(_sweep)


def on_startup(command: str, dirty: bool) -> None:
    """Lay out `plait/<folder>` as links to the repository's folders, where mkdocstrings' `paths` points.

    The repository has no `plait/` folder (setuptools maps the folders at install time), and griffe reads
    source by path; this runs before the plugins are configured, so the tree exists when griffe looks.
    """
    tree = ROOT / "build" / "docs-api-src" / "plait"
    tree.mkdir(parents=True, exist_ok=True)
    for package in PACKAGES:
        link = tree / package
        if link.is_symlink() and link.readlink() != ROOT / package:  # a moved checkout
            link.unlink()
        if not link.is_symlink():
            link.symlink_to(ROOT / package, target_is_directory=True)


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Publish bench/results/*.png as bench-results/*.png."""
    for png in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"bench-results/{png.name}", abs_src_path=str(png)))
    return files


def on_page_markdown(markdown: str, **kwargs) -> str:
    return MARKER.sub(lambda m: render(m.group(1)), markdown)
