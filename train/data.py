"""Training data: load documents, tokenise them with `datasets.map`, pack them into fixed-length blocks.

Sources: the embedded default corpus (`plait.eval.corpus.default_corpus`), local text / JSON(L) / parquet
files, or a `datasets` hub name (when online). Tokenisation and packing are `datasets.map` calls (batched,
multiprocess with `num_proc`, cached on disk under `cache_dir`); in streaming mode they run lazily on an
`IterableDataset`, so corpora that do not fit on disk can be used.

Packing concatenates documents, each followed by EOS, and cuts the stream into blocks of `seq_len` tokens
(the tail of each 1000-document packing batch that does not fill a block is dropped). With
`document_masking`, every block carries `position_ids` that restart at 0 where a document starts (and at
the block start): transformers' `create_causal_mask` reads such position ids, when no attention mask is
passed and no cache is used, as a packed batch and builds a block-diagonal causal mask, so attention does
not cross documents. The label of a document's first token is set to -100, so no token is trained to
predict the next document from the last.

Order is deterministic: map-style datasets are shuffled by the Trainer's seeded sampler, streaming ones by a
seeded buffer; both resume at the exact batch (the Trainer skips the batches already consumed).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets import Dataset, DatasetDict, IterableDataset, Value, load_dataset, load_from_disk

from plait.eval.corpus import split_documents

from .recipe import DataRecipe, RecipeError

IGNORE_INDEX = -100
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


def check_file(path: Path, builder: str, text_field: str, key: str) -> None:
    """Read a data file once before `datasets` does, so a bad file is named with its line (a binary or
    non-UTF-8 file, a malformed JSON line, a missing, null or non-string text field), and an empty or
    unreadable one is named too, instead of failing deep inside a library or, worse, being skipped."""
    if builder == "parquet":
        check_parquet(path, key)  # columnar and typed: its text column is checked once loaded
        return
    raw = path.read_bytes()
    if not raw.strip():
        raise RecipeError(f"{key}={str(path)!r} is empty; every data file needs at least one record")
    if b"\0" in raw[:8192]:
        raise RecipeError(
            f"{key}={str(path)!r} looks binary (NUL bytes); give UTF-8 text, JSON(L) or parquet"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise RecipeError(
            f"{key}={str(path)!r} line {line}: not UTF-8 ({e.reason}); re-encode the file"
        ) from None
    if builder != "json":
        return
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise RecipeError(f"{key}={str(path)!r} line {e.lineno}: invalid JSON ({e.msg})") from None
        lines = [(1, row) for row in rows]
    else:
        lines = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                lines.append((number, json.loads(line)))
            except json.JSONDecodeError as e:
                raise RecipeError(f"{key}={str(path)!r} line {number}: invalid JSON ({e.msg})") from None
    if not lines:
        raise RecipeError(f"{key}={str(path)!r} holds no records; every data file needs at least one")
    for number, row in lines:
        value = row.get(text_field) if isinstance(row, dict) else None
        if not isinstance(value, str):
            problem = "is missing" if not isinstance(row, dict) or text_field not in row else f"is {value!r}"
            raise RecipeError(
                f"{key}={str(path)!r} line {number}: the text field {text_field!r} {problem}; every record "
                "needs a string (set data.text_field to the right column)"
            )


def check_parquet(path: Path, key: str) -> None:
    """A parquet file whose footer reads (not truncated, not another format) and that holds rows."""
    try:
        rows = pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowException, OSError) as e:
        raise RecipeError(f"{key}={str(path)!r} is not a readable parquet file ({e})") from None
    if rows == 0:
        raise RecipeError(f"{key}={str(path)!r} is empty; every data file needs at least one record")


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
            check_file(Path(p).expanduser(), builder, data.text_field, f"data.paths[{i}]")
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


def tokenizer_fingerprint(tokenizer) -> str:
    return hashlib.md5(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


def pack_documents(
    token_lists: list[list[int]], seq_len: int, document_masking: bool
) -> dict[str, list[list[int]]]:
    """Concatenate tokenised documents (EOS already appended) and cut them into `seq_len` blocks.

    Returns `input_ids` and `labels` (and `position_ids` when `document_masking`); a tail shorter than one
    block is dropped."""
    flat = np.fromiter((t for doc in token_lists for t in doc), dtype=np.int64)
    starts = np.zeros(len(flat), dtype=bool)
    offsets = (
        np.cumsum([0] + [len(doc) for doc in token_lists[:-1]])
        if token_lists
        else np.zeros(0, dtype=np.int64)
    )
    starts[offsets[offsets < len(flat)]] = True
    n_blocks = len(flat) // seq_len
    out: dict[str, list[list[int]]] = {"input_ids": [], "labels": []}
    if document_masking:
        out["position_ids"] = []
    for b in range(n_blocks):
        ids = flat[b * seq_len : (b + 1) * seq_len]
        if not document_masking:
            out["input_ids"].append(ids.tolist())
            out["labels"].append(ids.tolist())
            continue
        block_starts = starts[b * seq_len : (b + 1) * seq_len].copy()
        labels = ids.copy()
        labels[block_starts] = (
            IGNORE_INDEX  # never predict a document's first token from the previous document
        )
        block_starts[0] = True
        # position = index - index of the latest segment start at or before it
        idx = np.arange(seq_len)
        last_start = np.maximum.accumulate(np.where(block_starts, idx, 0))
        out["input_ids"].append(ids.tolist())
        out["labels"].append(labels.tolist())
        out["position_ids"].append((idx - last_start).tolist())
    return out


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


def build_lm_dataset(
    ds: Dataset | IterableDataset,
    tokenizer,
    data: DataRecipe,
    cache_dir: str | Path | None = None,
    seed: int = 0,
) -> Dataset | IterableDataset:
    """The recipe's training blocks: `tokenize_and_pack`, or lazily (tokenise, pack, seeded shuffle buffer)
    for a streaming dataset."""
    if isinstance(ds, IterableDataset):
        if tokenizer.eos_token_id is None:
            raise RecipeError("the tokenizer has no eos_token; packing needs one to mark document ends")
        ds = ds.map(_tokenizer_fn(tokenizer, "text"), batched=True, remove_columns=["text"])
        ds = ds.map(
            _packer_fn(data.seq_len, data.document_masking),
            batched=True,
            batch_size=PACK_BATCH,
            remove_columns=["input_ids"],
        )
        return ds.shuffle(seed=seed, buffer_size=data.shuffle_buffer)
    try:
        return tokenize_and_pack(
            ds, tokenizer, data.seq_len, "text", data.num_proc, data.document_masking, cache_dir
        )
    except ValueError as e:
        raise RecipeError(f"data (seq_len={data.seq_len}): {e}") from e
