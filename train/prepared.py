"""The prepared-data format: a directory of flat token files, a document index and a manifest.

    <dir>/manifest.json        format version, tokenizer name and fingerprint, vocabulary size, dtype,
                               per-source documents / tokens / bytes (and each file's size and mtime), shards
    <dir>/tokenizer/           the tokenizer the tokens were made with (a run without data.tokenizer uses it)
    <dir>/tokens-NNNNN.bin     the shard's token ids, documents concatenated, each followed by EOS (uint16
                               when the vocabulary fits, else uint32)
    <dir>/docs-NNNNN.bin       uint64: the end offset of each document in the shard's tokens

This is the layout of nanoGPT's `.bin` and Megatron's `.bin/.idx`, read with `numpy.memmap`: opening a
directory maps its files (nothing is read until a window is asked for), so a run starts in milliseconds
whatever the corpus size. `PreparedTokens` is one directory opened, checked against its manifest.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from .recipe import RecipeError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def dtype_for(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds every token id."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the fast tokenizer's whole definition (vocabulary, merges, normaliser, added tokens)."""
    return hashlib.md5(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


def shard_files(directory: Path, index: int) -> tuple[Path, Path]:
    return directory / f"tokens-{index:05d}.bin", directory / f"docs-{index:05d}.bin"


def read_manifest(directory: Path, key: str) -> dict:
    """The directory's manifest, of a format version this code reads; `key` names the recipe field."""
    path = directory / MANIFEST
    if not path.exists():
        raise RecipeError(
            f"{key}={str(directory)!r} is not a prepared directory (no {MANIFEST}); run `plait-data prepare`"
        )
    try:
        manifest = json.loads(path.read_text())
    except ValueError as e:
        raise RecipeError(f"{key}={str(directory)!r}: {MANIFEST} is not valid JSON ({e})") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise RecipeError(
            f"{key}={str(directory)!r} has format_version={version!r}; this Plait reads version "
            f"{FORMAT_VERSION}: prepare it again"
        )
    return manifest


class PreparedTokens:
    """One prepared directory as a single token stream with document starts, memory-mapped.

    Opening checks every shard against the manifest (a missing, truncated or empty token file is named) and
    builds the document start offsets of the whole stream (8 bytes per document)."""

    def __init__(self, directory: str | Path, key: str = "data.mixture"):
        self.directory = Path(directory).expanduser()
        self.manifest = read_manifest(self.directory, key)
        self.dtype = np.dtype(self.manifest["dtype"])
        self.name = self.manifest.get("name") or self.directory.name
        self.shards: list[np.memmap] = []
        starts, offsets, base = [], [0], 0
        for shard in self.manifest["shards"]:
            tokens_path, docs_path = shard_files(self.directory, shard["index"])
            for path, count, dtype in (
                (tokens_path, shard["tokens"], self.dtype),
                (docs_path, shard["documents"], np.dtype(np.uint64)),
            ):
                if not path.exists():
                    raise RecipeError(f"{key}: {path} is missing (the manifest lists it); prepare again")
                size = path.stat().st_size
                if size != count * dtype.itemsize:
                    raise RecipeError(
                        f"{key}: {path} holds {size} bytes, the manifest says {count * dtype.itemsize} "
                        "(truncated or replaced); prepare again"
                    )
            if shard["tokens"] == 0:
                raise RecipeError(f"{key}: {tokens_path} is empty; prepare again")
            self.shards.append(np.memmap(tokens_path, dtype=self.dtype, mode="r"))
            ends = np.fromfile(docs_path, dtype=np.uint64).astype(np.int64)
            starts.append(base + np.concatenate([[0], ends[:-1]]))
            base += shard["tokens"]
            offsets.append(base)
        if not self.shards:
            raise RecipeError(f"{key}={str(self.directory)!r} holds no tokens")
        self.offsets = np.array(offsets, dtype=np.int64)  # each shard's first token in the stream
        self.doc_starts = np.concatenate(starts)
        self.tokens = base

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of the stream as int64 (a span may cross shards)."""
        pieces = []
        shard = int(np.searchsorted(self.offsets, start, side="right")) - 1
        while start < stop:
            end = min(stop, int(self.offsets[shard + 1]))
            local = start - int(self.offsets[shard])
            pieces.append(self.shards[shard][local : local + end - start])
            start, shard = end, shard + 1
        return np.concatenate(pieces).astype(np.int64)

    def starts_in(self, start: int, stop: int) -> np.ndarray:
        """Offsets (relative to `start`) of the documents that start in [start, stop)."""
        lo, hi = np.searchsorted(self.doc_starts, [start, stop])
        return self.doc_starts[lo:hi] - start


def check_mixture(mixture: list[dict]) -> None:
    """`data.mixture`: {path, weight} entries, each directory once, weights positive and finite."""
    if not mixture:
        raise RecipeError(
            "data.mixture is empty but data.source='prepared'; list {path: DIR, weight: W} entries"
        )
    seen: dict[Path, int] = {}
    for i, entry in enumerate(mixture):
        unknown = sorted(set(entry) - {"path", "weight"})
        if unknown or not isinstance(entry.get("path"), str):
            raise RecipeError(f"data.mixture[{i}]={entry!r} is not valid; expected {{path: DIR, weight: W}}")
        weight = entry.setdefault("weight", 1.0)
        if (
            isinstance(weight, bool)
            or not isinstance(weight, (int, float))
            or not math.isfinite(weight)
            or weight <= 0
        ):
            raise RecipeError(
                f"data.mixture[{i}].weight={weight!r} is not valid; expected a positive finite number"
            )
        path = Path(entry["path"]).expanduser().resolve()
        if path in seen:
            raise RecipeError(
                f"data.mixture[{i}].path={entry['path']!r} repeats data.mixture[{seen[path]}]; list a source "
                "once (raise its weight instead)"
            )
        seen[path] = i
        read_manifest(path, f"data.mixture[{i}].path")
