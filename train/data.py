"""Training data for the language model: documents in, `seq_len` token windows out.

Pretraining reads prepared directories (`plait.train.prepared`: flat token files, a document index, a
manifest) through `MixtureDataset` (`plait.train.mixture`). A recipe names them in `data.mixture` with
weights (`data.source: prepared`), or names a text source (`default`, `files`, `hub`, `disk`), which the
first run prepares into `data.cache_dir` (`plait.train.prepare`) and later runs reuse.

`load_documents` / `load_raw` read a source as a `datasets` dataset: held-out text for evaluation, labelled
data for fine-tuning. `tokenize_and_pack` packs a small in-memory dataset into blocks (the demo).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, IterableDataset, Value, load_dataset, load_from_disk

from plait.eval.corpus import split_documents

from .mixture import IGNORE_INDEX, MixtureDataset, window_fields
from .prepare import check_parquet, iter_file, plan_key, prepare
from .prepared import PreparedTokens, tokenizer_fingerprint
from .recipe import DataRecipe, RecipeError

logger = logging.getLogger(__name__)
_BUILDERS = {
    ".txt": "text",
    ".text": "text",
    ".md": "text",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
}


def _builder_for(paths: list[str]) -> str:
    builders = set()
    for i, p in enumerate(paths):
        path = Path(p).expanduser()
        if not path.exists():
            raise RecipeError(f"data.paths[{i}]={p!r} does not exist")
        if path.is_dir():
            raise RecipeError(
                f"data.paths[{i}]={p!r} is a directory; list the files (globs are not expanded)"
            )
        builders.add(_BUILDERS.get(path.suffix.lower(), "text"))
    if len(builders) > 1:
        raise RecipeError(
            f"data.paths mixes file kinds {sorted(builders)}; use one kind (text, json or parquet)"
        )
    return builders.pop()


def check_file(path: Path, text_field: str, key: str) -> None:
    """Validate a text or JSON(L) file in one streamed pass (`plait.train.prepare.iter_file`), so a bad or
    empty file is named (with its line) instead of failing deep inside a library or, worse, being skipped."""
    records = sum(1 for _ in iter_file(path, text_field, key))
    if not records:
        raise RecipeError(f"{key}={str(path)!r} holds no records; every data file needs a record")


def check_text_column(ds: Dataset, text_field: str) -> None:
    """A loaded text column holds strings only: no other type, no nulls."""
    feature = ds.features.get(text_field)
    if not (isinstance(feature, Value) and feature.dtype in ("string", "large_string")):
        raise RecipeError(f"data.text_field={text_field!r} holds {feature}, not text")
    nulls = ds.data.column(text_field).null_count
    if nulls:
        raise RecipeError(f"data.text_field={text_field!r} is null in {nulls} of {len(ds)} records")


def _default_documents(split: str, max_documents: int | None) -> Dataset:
    """The embedded corpus's `split`, read only up to `max_documents` files."""
    try:
        texts = split_documents(split, max_documents=max_documents)
    except ValueError as e:
        raise RecipeError(f"data.{e}") from e
    return Dataset.from_dict({"text": texts})


def load_raw(data: DataRecipe, split: str | None = None) -> Dataset | IterableDataset:
    """The recipe's data set as stored (every column), from files, the hub or a `save_to_disk` folder."""
    split = split or data.split
    if data.source == "files":
        builder = _builder_for(data.paths)
        for i, p in enumerate(data.paths):
            if builder == "parquet":  # columnar and typed: its text column is checked once loaded
                check_parquet(Path(p).expanduser(), f"data.paths[{i}]")
            else:
                check_file(Path(p).expanduser(), data.text_field, f"data.paths[{i}]")
        kwargs: dict[str, Any] = {"data_files": {split: list(data.paths)}}
        if builder == "text":
            kwargs["sample_by"] = "document"  # one document per file, not per line
        return load_dataset(
            builder, split=split, streaming=data.streaming, cache_dir=data.cache_dir, **kwargs
        )
    if data.source == "disk":
        ds = load_from_disk(str(Path(data.paths[0]).expanduser()))
        if isinstance(ds, DatasetDict):
            if split not in ds:
                raise RecipeError(f"data.split={split!r} is not in {data.paths[0]}; splits: {list(ds)}")
            ds = ds[split]
        return ds.to_iterable_dataset(num_shards=1) if data.streaming else ds
    try:
        return load_dataset(
            data.name, data.subset, split=split, streaming=data.streaming, cache_dir=data.cache_dir
        )
    except (ConnectionError, FileNotFoundError) as e:  # offline, or no such dataset / split
        raise RecipeError(f"data.name={data.name!r} could not be loaded: {e}") from e


def load_documents(data: DataRecipe, split: str | None = None) -> Dataset | IterableDataset:
    """The training documents as a (possibly streaming) dataset with a `text` column."""
    split = split or data.split
    if data.source == "default":
        ds = _default_documents(split, data.max_documents)
        if data.streaming:
            ds = ds.to_iterable_dataset(num_shards=1)
        text_field = "text"
    else:
        ds = load_raw(data, split)
        text_field = data.text_field
        columns = ds.column_names
        if columns is not None and text_field not in columns:
            raise RecipeError(
                f"data.text_field={text_field!r} is not a column of the data; columns: {columns}"
            )
        if isinstance(ds, Dataset):
            check_text_column(ds, text_field)
        if data.max_documents is not None:
            ds = (
                ds.take(data.max_documents)
                if data.streaming
                else ds.select(range(min(len(ds), data.max_documents)))
            )
    if text_field != "text":
        ds = ds.rename_column(text_field, "text")
    keep = ["text"]
    drop = [c for c in (ds.column_names or []) if c not in keep]
    return ds.remove_columns(drop) if drop else ds


def iter_texts(ds: Dataset | IterableDataset, limit: int) -> Iterator[str]:
    for i, row in enumerate(ds):
        if i >= limit:
            return
        yield row["text"]


def pack_documents(
    token_lists: list[list[int]], seq_len: int, document_masking: bool
) -> dict[str, list[list[int]]]:
    """Concatenate tokenised documents (EOS already appended) and cut them into `seq_len` blocks, each with
    the fields of `window_fields`; a tail shorter than one block is dropped."""
    flat = np.fromiter((t for doc in token_lists for t in doc), dtype=np.int64)
    starts = np.cumsum([0] + [len(doc) for doc in token_lists[:-1]]).astype(np.int64)
    out: dict[str, list[list[int]]] = {}
    for b in range(len(flat) // seq_len):
        lo = b * seq_len
        block_starts = starts[(starts >= lo) & (starts < lo + seq_len)] - lo
        for name, value in window_fields(flat[lo : lo + seq_len], block_starts, document_masking).items():
            out.setdefault(name, []).append(value.tolist())
    return out or {"input_ids": [], "labels": []}


def tokenize_and_pack(
    dataset: Dataset,
    tokenizer,
    block_size: int,
    text_column: str = "text",
    num_proc: int | None = None,
    document_masking: bool = False,
    cache_dir: str | Path | None = None,
) -> Dataset:
    """Tokenise (`map`, batched, `num_proc` workers, cached) and pack into blocks of exactly `block_size`
    tokens: `{"input_ids", "labels"}`, plus `position_ids` restarting per document with `document_masking`
    (labels at document starts are then -100; see the module docstring). With `cache_dir` the two `map`
    results are cached there under a key of the data, the tokenizer and the packing settings."""
    if block_size < 2:
        raise ValueError(f"block_size={block_size} must be at least 2")
    if text_column not in dataset.column_names:
        raise ValueError(f"text_column={text_column!r} not in the dataset's columns {dataset.column_names}")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token: documents could not be separated when packed")
    tok_kwargs: dict[str, Any] = {}
    pack_kwargs: dict[str, Any] = {}
    if cache_dir is not None:
        key = hashlib.md5(
            f"{dataset._fingerprint}-{tokenizer_fingerprint(tokenizer)}-{block_size}-{document_masking}".encode()
        ).hexdigest()[:16]
        cache = Path(cache_dir)
        cache.mkdir(parents=True, exist_ok=True)
        tok_kwargs["cache_file_name"] = str(cache / f"tokenized-{key}.arrow")
        pack_kwargs["cache_file_name"] = str(cache / f"packed-{key}.arrow")
    if num_proc is not None and (num_proc < 2 or len(dataset) < num_proc):
        num_proc = None
    tokenized = dataset.map(
        _tokenizer_fn(tokenizer, text_column),
        batched=True,
        remove_columns=dataset.column_names,
        num_proc=num_proc,
        desc="tokenize",
        **tok_kwargs,
    )
    packed = tokenized.map(
        _packer_fn(block_size, document_masking),
        batched=True,
        batch_size=PACK_BATCH,
        remove_columns=["input_ids"],
        num_proc=num_proc,
        desc=f"pack into {block_size}",
        **pack_kwargs,
    )
    if len(packed) == 0:
        raise ValueError(f"no complete block of {block_size} tokens: the dataset holds too little text")
    trainable = pc.sum(pc.not_equal(pc.list_flatten(packed.data.column("labels")), IGNORE_INDEX)).as_py()
    if not trainable:
        raise ValueError("no token has a label to learn (are the documents empty?)")
    return packed


PACK_BATCH = (
    1000  # documents concatenated per packing batch (a tail shorter than a block is dropped per batch)
)


def _tokenizer_fn(tokenizer, text_column: str):
    eos = tokenizer.eos_token_id

    def tokenize(batch):
        # Whole documents are longer than the model context on purpose: they are cut into blocks when packed.
        ids = tokenizer(batch[text_column], add_special_tokens=False, verbose=False)["input_ids"]
        return {"input_ids": [doc + [eos] for doc in ids]}

    return tokenize


def _packer_fn(block_size: int, document_masking: bool):
    def pack(batch):
        return pack_documents(batch["input_ids"], block_size, document_masking)

    return pack


def open_mixture(
    data: DataRecipe, tokenizer, cache_dir: str | Path
) -> tuple[list[PreparedTokens], list[float]]:
    """The recipe's prepared sources and weights: `data.mixture`, or its text source prepared into
    `cache_dir` (by one process under a lock; the others wait for it, later runs reuse it). Each source's
    manifest must name this tokenizer."""
    if data.source == "prepared":
        entries = data.mixture
    else:
        out = Path(cache_dir).expanduser() / f"prepared-{plan_key(data, tokenizer)}"
        prepare(data, tokenizer, out, num_proc=data.num_proc, wait=True, progress=False)
        entries = [{"path": str(out), "weight": 1.0}]
    sources, fingerprint = [], tokenizer_fingerprint(tokenizer)
    for i, entry in enumerate(entries):
        tokens = PreparedTokens(entry["path"], f"data.mixture[{i}].path")
        if tokens.manifest["tokenizer_fingerprint"] != fingerprint:
            raise RecipeError(
                f"data.mixture[{i}].path={entry['path']!r} was prepared with another tokenizer (fingerprint "
                f"{tokens.manifest['tokenizer_fingerprint']}, this run's is {fingerprint}); prepare it with "
                "the run's tokenizer"
            )
        if data.document_masking and tokens.tokens == len(tokens.doc_starts):
            raise RecipeError(
                f"data.mixture[{i}].path={entry['path']!r}: no token has a label to learn (every document is "
                "empty: only its EOS)"
            )
        sources.append(tokens)
    return sources, [float(e["weight"]) for e in entries]


def build_lm_dataset(
    data: DataRecipe, tokenizer, cache_dir: str | Path, seed: int, samples_needed: int
) -> MixtureDataset:
    """The training windows of `open_mixture`'s sources, refused when the run needs more samples than the
    mixture gives within `data.max_repeats`; a source that will be read more than once is announced."""
    sources, weights = open_mixture(data, tokenizer, cache_dir)
    dataset = MixtureDataset(
        sources, weights, data.seq_len, seed, len(tokenizer), data.document_masking, data.max_repeats
    )
    if samples_needed > len(dataset):
        raise RecipeError(
            f"data: the run needs {samples_needed} samples of {data.seq_len} tokens but the data gives "
            f"{len(dataset)} within data.max_repeats={data.max_repeats}; raise data.max_repeats or add data"
        )
    for source, drawn, windows in zip(sources, dataset.drawn(samples_needed), dataset.windows, strict=True):
        if drawn > windows:
            logger.warning(
                "data: source %s will be read %.2f times (%d windows of %d tokens; data.max_repeats=%d)",
                source.name,
                drawn / windows,
                windows,
                data.seq_len,
                data.max_repeats,
            )
    return dataset
