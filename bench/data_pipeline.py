"""Data pipeline benchmark: `plait-data prepare` and the training loader on generated JSONL corpora.

For each corpus size (MB of JSONL, documents of the embedded corpus drawn at random):

- `tokenizer_tokens_per_s`: the fast tokenizer's own `encode_batch` (its thread pool on every core) on the
  first 32 MB of the same text: the ceiling preparation is compared with;
- `prepare_tokens_per_s`, `prepare_s`: `plait.train.prepare.prepare` with one worker per core, end to end
  (JSON parsing, validation, tokenisation, writing), in a fresh process;
- `peak_rss_main_mb`, `peak_rss_worker_mb`: peak resident memory of the preparing process and of its
  largest worker;
- `bytes_per_token`: the prepared directory's token and document-index files per token;
- `open_s`: opening the prepared directory (manifest, memory maps, document index) and the mixture;
- `loader_tokens_per_s`: `MixtureDataset` samples (seq_len 1024, document masking) read in the run's order;
- `first_sample_ms_at`: time to the first sample of a fresh dataset at global sample 0 and at the last
  one: resuming reads nothing it skips.

With `--litdata-mb` (litdata installed), the same corpus through litdata's `optimize` + `TokensLoader`
(the alternative compared with). With `--baseline-mb`, the same measures of the previous path
(`datasets.map` tokenisation and packing into Arrow blocks, `plait.train.data.tokenize_and_pack`,
num_proc = cores).

    python bench/data_pipeline.py --sizes-mb 64 256 1024 --baseline-mb 64 --litdata-mb 64
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

SEQ_LEN = 1024


def make_corpus(path: Path, megabytes: int, seed: int = 0) -> None:
    from plait.eval.corpus import split_documents

    docs = [json.dumps({"text": t}) + "\n" for t in split_documents("train")]
    rng = random.Random(seed)
    target, written = megabytes << 20, 0
    with open(path, "w") as f:
        while written < target:
            line = rng.choice(docs)
            f.write(line)
            written += len(line.encode())


def make_tokenizer(path: Path) -> None:
    from plait.eval.corpus import split_documents
    from plait.train.tokenizer import train_bpe_tokenizer

    tok = train_bpe_tokenizer(iter(split_documents("train")), vocab_size=16384, model_max_length=SEQ_LEN)
    tok.save_pretrained(path)


def _peaks() -> dict:
    return {
        "peak_rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def phase_tokenizer(corpus: Path, tokenizer: Path) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer).backend_tokenizer
    texts, size = [], 0
    with open(corpus) as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            size += len(line)
            if size > 32 << 20:
                break
    start = time.perf_counter()
    tokens = sum(len(e.ids) for e in tok.encode_batch_fast(texts, add_special_tokens=False))
    return {
        "tokenizer_tokens_per_s": tokens / (time.perf_counter() - start),
        "tokenizer_sample_tokens": tokens,
    }


def phase_prepare(corpus: Path, tokenizer: Path, out: Path) -> dict:
    from transformers import AutoTokenizer

    from plait.train.prepare import prepare
    from plait.train.recipe import DataRecipe

    tok = AutoTokenizer.from_pretrained(tokenizer)
    start = time.perf_counter()
    prepare(
        DataRecipe(source="files", paths=[str(corpus)]), tok, out, num_proc=os.cpu_count(), progress=False
    )
    seconds = time.perf_counter() - start
    manifest = json.loads((out / "manifest.json").read_text())
    stored = sum(p.stat().st_size for p in out.glob("*.bin"))
    return {
        "tokens": manifest["tokens"],
        "documents": manifest["documents"],
        "prepare_s": seconds,
        "prepare_tokens_per_s": manifest["tokens"] / seconds,
        "bytes_per_token": stored / manifest["tokens"],
        "workers": os.cpu_count(),
        **_peaks(),
    }


def phase_loader(out: Path, vocab_size: int) -> dict:
    from plait.train.mixture import MixtureDataset
    from plait.train.prepared import PreparedTokens

    start = time.perf_counter()
    data = MixtureDataset([PreparedTokens(out)], [1.0], SEQ_LEN, seed=0, vocab_size=vocab_size)
    open_s = time.perf_counter() - start
    n = min(len(data), 4000)
    start = time.perf_counter()
    for g in range(n):
        data[g]
    loader = n * SEQ_LEN / (time.perf_counter() - start)
    first = {}
    for g in (0, len(data) - 1):
        fresh = MixtureDataset([PreparedTokens(out)], [1.0], SEQ_LEN, seed=0, vocab_size=vocab_size)
        start = time.perf_counter()
        fresh[g]
        first[str(g)] = (time.perf_counter() - start) * 1e3
    return {
        "open_s": open_s,
        "loader_tokens_per_s": loader,
        "samples": len(data),
        "first_sample_ms_at": first,
    }


def phase_baseline(corpus: Path, tokenizer: Path, cache: Path) -> dict:
    """The previous path: `datasets` JSON loading, `map` tokenisation, packing into Arrow blocks."""
    from datasets import load_dataset
    from transformers import AutoTokenizer

    from plait.train.data import tokenize_and_pack

    tok = AutoTokenizer.from_pretrained(tokenizer)
    start = time.perf_counter()
    ds = load_dataset("json", data_files=str(corpus), split="train", cache_dir=str(cache / "hf"))
    blocks = tokenize_and_pack(
        ds, tok, SEQ_LEN, num_proc=os.cpu_count(), document_masking=True, cache_dir=cache
    )
    seconds = time.perf_counter() - start
    tokens = len(blocks) * SEQ_LEN
    stored = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
    return {
        "baseline_s": seconds,
        "baseline_tokens_per_s": tokens / seconds,
        "baseline_bytes_per_token": stored / tokens,
        **{f"baseline_{k}": v for k, v in _peaks().items()},
    }


def _litdata_tokens(piece):
    """litdata `optimize` worker: one JSONL piece's documents as int32 token tensors, EOS appended."""
    import torch
    from transformers import AutoTokenizer

    from plait.train.prepare import _batches, iter_piece

    path, start, stop, tokenizer = piece
    tok = AutoTokenizer.from_pretrained(tokenizer)
    for batch in _batches(iter_piece(Path(path), "lines", start, stop, "text", "litdata"), 512):
        for ids in tok(batch, add_special_tokens=False)["input_ids"]:
            yield torch.tensor([*ids, tok.eos_token_id], dtype=torch.int32)


def phase_litdata(corpus: Path, tokenizer: Path, out: Path) -> dict:
    """The same corpus through litdata (`optimize` with a `TokensLoader`, then `StreamingDataset` windows):
    the alternative compared with (installed separately: `pip install litdata`)."""
    import litdata
    from litdata import StreamingDataset, TokensLoader, optimize

    from plait.train.prepare import CHUNK_BYTES

    size = corpus.stat().st_size
    pieces = [
        (str(corpus), s, min(size, s + CHUNK_BYTES), str(tokenizer)) for s in range(0, size, CHUNK_BYTES)
    ]
    start = time.perf_counter()
    optimize(
        fn=_litdata_tokens,
        inputs=pieces,
        output_dir=str(out),
        chunk_size=(SEQ_LEN + 1) * 4096,
        item_loader=TokensLoader(),
        num_workers=os.cpu_count(),
    )
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    data = StreamingDataset(
        str(out), item_loader=TokensLoader(block_size=SEQ_LEN), shuffle=True, drop_last=True
    )
    open_s = time.perf_counter() - start
    n = min(len(data), 4000)
    start = time.perf_counter()
    for i in range(n):
        data[i]
    loader = n * SEQ_LEN / (time.perf_counter() - start)
    tokens = len(data) * SEQ_LEN
    stored = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {
        "litdata_version": litdata.__version__,
        "litdata_prepare_s": seconds,
        "litdata_prepare_tokens_per_s": tokens / seconds,
        "litdata_bytes_per_token": stored / tokens,
        "litdata_open_s": open_s,
        "litdata_loader_tokens_per_s_no_document_masking": loader,
        **{f"litdata_{k}": v for k, v in _peaks().items()},
    }


def in_subprocess(phase: str, *args: str) -> dict:
    """Each phase in a fresh process: its peak memory is its own."""
    cmd = [sys.executable, __file__, "--phase", phase, *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["corpus_mb"] for r in results]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (
        ("tokenizer_tokens_per_s", "tokenizer encode_batch (ceiling)"),
        ("prepare_tokens_per_s", "plait-data prepare"),
        ("loader_tokens_per_s", "training loader (per process)"),
    ):
        ax.plot(sizes, [r[key] / 1e6 for r in results], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.minorticks_off()
    ax.set_xlabel("corpus size (MB of JSONL)")
    ax.set_ylabel("M tokens / s")
    ax.set_title(f"data pipeline, {os.cpu_count()} CPU cores")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--baseline-mb", type=int, help="also measure the previous path at this size")
    parser.add_argument("--litdata-mb", type=int, help="also measure litdata (if installed) at this size")
    parser.add_argument("--work-dir", default="/tmp/plait-data-bench")
    parser.add_argument("--out", default="bench/results/data_pipeline_cpu.json")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        phases = {
            "tokenizer": phase_tokenizer,
            "prepare": phase_prepare,
            "loader": phase_loader,
            "baseline": phase_baseline,
            "litdata": phase_litdata,
        }
        values = [int(a) if a.isdigit() else Path(a) for a in args.args]
        print(json.dumps(phases[args.phase](*values)))
        return

    import numpy
    import tokenizers
    import transformers

    if args.litdata_mb and importlib.util.find_spec("litdata") is None:
        parser.error("--litdata-mb needs litdata installed (pip install litdata)")
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = work / "tokenizer"
    if not (tokenizer / "tokenizer.json").exists():
        make_tokenizer(tokenizer)
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(tokenizer))
    results = []
    for mb in args.sizes_mb:
        corpus = work / f"corpus-{mb}mb.jsonl"
        if not corpus.exists():
            make_corpus(corpus, mb)
        prepared = work / f"prepared-{mb}mb"
        shutil.rmtree(prepared, ignore_errors=True)
        row = {"corpus_mb": mb, "corpus_bytes": corpus.stat().st_size}
        row |= in_subprocess("tokenizer", str(corpus), str(tokenizer))
        row |= in_subprocess("prepare", str(corpus), str(tokenizer), str(prepared))
        row["prepare_vs_tokenizer"] = row["prepare_tokens_per_s"] / row["tokenizer_tokens_per_s"]
        row |= in_subprocess("loader", str(prepared), str(vocab))
        if mb == args.baseline_mb:
            cache = work / f"baseline-{mb}mb"
            shutil.rmtree(cache, ignore_errors=True)
            row |= in_subprocess("baseline", str(corpus), str(tokenizer), str(cache))
            shutil.rmtree(cache, ignore_errors=True)
        if mb == args.litdata_mb:
            lit = work / f"litdata-{mb}mb"
            shutil.rmtree(lit, ignore_errors=True)
            row |= in_subprocess("litdata", str(corpus), str(tokenizer), str(lit))
            shutil.rmtree(lit, ignore_errors=True)
        shutil.rmtree(prepared, ignore_errors=True)
        print(json.dumps(row), flush=True)
        results.append(row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "device": f"CPU ({platform.processor() or platform.machine()}), {os.cpu_count()} cores, shared",
        "versions": {
            "python": platform.python_version(),
            "numpy": numpy.__version__,
            "tokenizers": tokenizers.__version__,
            "transformers": transformers.__version__,
        },
        "tokenizer": {"kind": "byte-level BPE trained on the embedded corpus", "vocab_size": vocab},
        "seq_len": SEQ_LEN,
        "document_masking": True,
        "results": results,
    }
    out.write_text(json.dumps(report, indent=1))
    plot(results, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
