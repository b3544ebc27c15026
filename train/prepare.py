"""`prepare`: tokenise a recipe's text source once into a prepared directory (`plait.train.prepared`).

The input is streamed: a JSONL file is cut into byte ranges of `CHUNK_BYTES` at line starts, a parquet file
into row groups, and each piece is read, validated and tokenised by a worker process that writes its own
shard; a hub / `save_to_disk` / embedded-corpus source is read in the main process in batches of
`SHARD_DOCUMENTS` documents that workers tokenise. Memory is bounded by the piece size times the workers,
whatever the file sizes. A text file (.txt, .md, other suffixes) is one document, as before; a `.json` file
holding one JSON array is parsed whole (JSON has no line boundaries to cut it at).

Workers call the fast tokenizer's `encode_batch` single-threaded (one process per core: JSON parsing and
tokenisation both run in parallel). A finished shard is renamed into place with a small `shard-NNNNN.json`
written last, so an interrupted preparation continues at the first unfinished shard. A file lock refuses a
second preparation into the same directory (or, for a training run's ranks, makes them wait for the first).

Every record is validated in the same pass (file and line named): a binary or non-UTF-8 file, a malformed
JSON line, a missing, null or non-string text field, a token id outside the vocabulary.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict
from itertools import chain, islice, repeat
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .prepared import FORMAT_VERSION, MANIFEST, dtype_for, read_manifest, shard_files, tokenizer_fingerprint
from .recipe import DataRecipe, RecipeError

CHUNK_BYTES = 16 << 20  # a JSONL file is tokenised in pieces of this many bytes
SHARD_DOCUMENTS = 4096  # documents per shard of a hub / disk / embedded source
ENCODE_BATCH = 512  # documents per encode_batch call
PLAN = "plan.json"  # what an unfinished preparation is making (a resumed one must make the same)
LOCK = ".prepare.lock"
PLAN_KEYS = (
    "source",
    "name",
    "subset",
    "split",
    "text_field",
    "max_documents",
)  # the DataRecipe fields it reads
JSON_SUFFIXES = {".json", ".jsonl"}


def expand_paths(paths: list[str]) -> list[Path]:
    """`data.paths` with `~` and globs expanded (sorted), each checked to be a file."""
    files = []
    for i, p in enumerate(paths):
        pattern = os.path.expanduser(p)
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches or not Path(matches[0]).exists():
            raise RecipeError(f"data.paths[{i}]={p!r} does not exist")
        for m in matches:
            if Path(m).is_dir():
                raise RecipeError(f"data.paths[{i}]={p!r} is a directory; list its files or use a glob")
            files.append(Path(m))
    if len(set(files)) != len(files):
        raise RecipeError(f"data.paths={paths!r} names the same file twice")
    return files


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return "parquet"
    if suffix in JSON_SUFFIXES:
        with open(path, "rb") as f:
            head = f.read(4096).lstrip()
        return "json-array" if suffix == ".json" and head.startswith(b"[") else "lines"
    return "document"


def check_parquet(path: Path, key: str):
    """The opened `pyarrow.parquet.ParquetFile`: its footer reads (not truncated, not another format) and it
    holds rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise RecipeError(f"{key}={str(path)!r} is not a readable parquet file ({e})") from None
    if parquet.metadata.num_rows == 0:
        raise RecipeError(f"{key}={str(path)!r} is empty; every data file needs at least one record")
    return parquet


def _pieces(files: list[Path]) -> list[tuple[int, str, int, int]]:
    """(file index, kind, start, stop) work units: byte ranges of JSONL, row groups of parquet."""
    pieces = []
    for i, path in enumerate(files):
        kind = _kind(path)
        if kind == "lines":
            size = path.stat().st_size
            with open(path, "rb") as f:
                head = f.read(CHUNK_BYTES if size <= CHUNK_BYTES else 0)
            if size <= CHUNK_BYTES and not head.strip():
                raise RecipeError(f"data.paths[{i}]={str(path)!r} is empty; every data file needs a record")
            pieces += [(i, kind, s, min(size, s + CHUNK_BYTES)) for s in range(0, max(size, 1), CHUNK_BYTES)]
        elif kind == "parquet":
            groups = check_parquet(path, f"data.paths[{i}]").num_row_groups
            pieces += [(i, kind, g, g + 1) for g in range(groups)]
        else:
            pieces.append((i, kind, 0, 0))
    return pieces


def _line_of(path: Path, offset: int) -> int:
    """The 1-based line number of byte `offset` (counted in blocks: only when reporting an error)."""
    count, done = 1, 0
    with open(path, "rb") as f:
        while done < offset:
            block = f.read(min(1 << 22, offset - done))
            if not block:
                break
            count += block.count(b"\n")
            done += len(block)
    return count


def _record_text(row, path: Path, line: int, text_field: str, key: str) -> str:
    value = row.get(text_field) if isinstance(row, dict) else None
    if not isinstance(value, str):
        problem = "is missing" if not isinstance(row, dict) or text_field not in row else f"is {value!r}"
        raise RecipeError(
            f"{key}={str(path)!r} line {line}: the text field {text_field!r} {problem}; every record needs "
            "a string (set data.text_field to the right column)"
        )
    return value


def _decode(raw: bytes, path: Path, offset: int, key: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = _line_of(path, offset + e.start)
        raise RecipeError(
            f"{key}={str(path)!r} line {line}: not UTF-8 ({e.reason}); re-encode the file"
        ) from None


def iter_piece(path: Path, kind: str, start: int, stop: int, text_field: str, key: str) -> Iterator[str]:
    """The validated texts of one work unit, read as a stream."""
    if kind == "parquet":
        import pyarrow.parquet as pq

        table = pq.ParquetFile(path).read_row_group(start)
        if text_field not in table.column_names:
            raise RecipeError(
                f"{key}={str(path)!r}: data.text_field={text_field!r} is not a column; "
                f"columns: {table.column_names}"
            )
        column = table.column(text_field)
        if not (column.type == "string" or column.type == "large_string"):
            raise RecipeError(
                f"{key}={str(path)!r}: data.text_field={text_field!r} holds {column.type}, not text"
            )
        if column.null_count:
            raise RecipeError(
                f"{key}={str(path)!r} row group {start}: data.text_field={text_field!r} is null in "
                f"{column.null_count} of {len(column)} records"
            )
        yield from column.to_pylist()
        return
    if kind in ("document", "json-array"):
        raw = path.read_bytes()  # one document (or one JSON value): it is needed whole anyway
        if b"\0" in raw[:8192]:
            raise RecipeError(
                f"{key}={str(path)!r} looks binary (NUL bytes); give UTF-8 text, JSON(L) or parquet"
            )
        text = _decode(raw, path, 0, key)
        if not text.strip():
            raise RecipeError(f"{key}={str(path)!r} is empty; every data file needs a record")
        if kind == "document":
            yield text
            return
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise RecipeError(f"{key}={str(path)!r} line {e.lineno}: invalid JSON ({e.msg})") from None
        if rows == []:
            raise RecipeError(f"{key}={str(path)!r} holds no records; every data file needs a record")
        for row in rows if isinstance(rows, list) else [rows]:
            yield _record_text(row, path, 1, text_field, key)
        return
    with open(path, "rb") as f:
        if start:
            f.seek(start - 1)
            f.readline()  # a line belongs to the piece it starts in
        pos = f.tell()
        while pos < stop:
            raw = f.readline()
            if not raw:
                break
            if b"\0" in raw:
                raise RecipeError(
                    f"{key}={str(path)!r} line {_line_of(path, pos)} looks binary (NUL bytes); give UTF-8 "
                    "text, JSON(L) or parquet"
                )
            text = _decode(raw, path, pos, key)
            if text.strip():
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as e:
                    line = _line_of(path, pos)
                    raise RecipeError(f"{key}={str(path)!r} line {line}: invalid JSON ({e.msg})") from None
                if isinstance(row, dict) and isinstance(row.get(text_field), str):
                    yield row[text_field]
                else:
                    yield _record_text(row, path, _line_of(path, pos), text_field, key)  # raises
            pos += len(raw)


def iter_file(path: Path, text_field: str, key: str) -> Iterator[str]:
    """One file's validated texts, read as a stream."""
    for _, kind, start, stop in _pieces([path]):
        yield from iter_piece(path, kind, start, stop, text_field, key)


def iter_documents(data: DataRecipe) -> Iterator[str]:
    """The source's document texts as a validated stream (`data.max_documents` of them at most)."""
    if data.source != "files":
        from .data import load_documents

        return (row["text"] for row in load_documents(data))
    files = expand_paths(data.paths)
    texts = chain.from_iterable(
        iter_piece(files[i], kind, start, stop, data.text_field, f"data.paths[{i}]")
        for i, kind, start, stop in _pieces(files)
    )
    return islice(texts, data.max_documents)


def _batches(items, size: int) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


# One worker's state: the tokenizer and the output settings, set once by `_init_worker`.
_WORKER: dict = {}


def _init_worker(tokenizer_json: str, eos: int, vocab: int, out: str, threads: bool) -> None:
    if not threads:  # one process per core: the Rust thread pool would only oversubscribe
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer

    _WORKER.update(
        tokenizer=Tokenizer.from_str(tokenizer_json),
        eos=eos,
        vocab=vocab,
        dtype=dtype_for(vocab),
        out=Path(out),
    )


def _write_shard(index: int, texts, source: int, label: str) -> dict:
    """Tokenise `texts` into shard `index` (renamed into place, its `shard-NNNNN.json` written last)."""
    w = _WORKER
    tokens_path, docs_path = shard_files(w["out"], index)
    tmp_tokens, tmp_docs = tokens_path.with_suffix(".tmp"), docs_path.with_suffix(".tmp")
    documents = tokens = nbytes = 0
    with open(tmp_tokens, "wb") as f_tokens, open(tmp_docs, "wb") as f_docs:
        for batch in _batches(texts, ENCODE_BATCH):
            ids = [e.ids for e in w["tokenizer"].encode_batch_fast(batch, add_special_tokens=False)]
            lengths = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
            flat = np.fromiter(
                chain.from_iterable(chain.from_iterable(zip(ids, repeat([w["eos"]])))),
                dtype=np.int64,
                count=int(lengths.sum()),
            )
            if flat.size and (flat.max() >= w["vocab"] or flat.min() < 0):
                raise RecipeError(
                    f"{label}: token id {int(flat.max())} does not fit the tokenizer's vocabulary of "
                    f"{w['vocab']} (stored as {w['dtype'].name})"
                )
            f_tokens.write(flat.astype(w["dtype"]).tobytes())
            f_docs.write((tokens + np.cumsum(lengths)).astype(np.uint64).tobytes())
            documents, tokens = documents + len(ids), tokens + int(flat.size)
            nbytes += sum(len(t.encode("utf-8")) for t in batch)
    tmp_tokens.rename(tokens_path)
    tmp_docs.rename(docs_path)
    meta = {"index": index, "source": source, "documents": documents, "tokens": tokens, "bytes": nbytes}
    _write_json(w["out"] / f"shard-{index:05d}.json", meta)
    return meta


def _piece_job(index: int, source: int, path: str, kind: str, start: int, stop: int, text_field: str) -> dict:
    key = f"data.paths[{source}]"
    texts = iter_piece(Path(path), kind, start, stop, text_field, key)
    return _write_shard(index, texts, source, f"{key}={path!r}")


def _texts_job(index: int, texts: list[str]) -> dict:
    return _write_shard(
        index, texts, 0, f"documents {index * SHARD_DOCUMENTS}-{(index + 1) * SHARD_DOCUMENTS}"
    )


def _write_json(path: Path, value) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    tmp.rename(path)


@contextmanager
def _locked(directory: Path, wait: bool):
    """An exclusive `flock` on the directory's lock file: without `wait`, a second preparation is refused."""
    with open(directory / LOCK, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise RecipeError(
                f"{directory} is being prepared by {holder}; wait for it to finish or prepare elsewhere"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        yield


def _plan(data: DataRecipe, tokenizer, files: list[Path]) -> dict:
    """What the preparation makes: a resumed or reused one must match it exactly."""
    source = {k: v for k, v in asdict(data).items() if k in PLAN_KEYS}
    source["files"] = [
        {"path": str(p.resolve()), "size": p.stat().st_size, "mtime": p.stat().st_mtime} for p in files
    ]
    return {
        "format_version": FORMAT_VERSION,
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "vocab_size": len(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "dtype": dtype_for(len(tokenizer)).name,
        "source": source,
    }


def plan_key(data: DataRecipe, tokenizer) -> str:
    """A short hash of the plan: the cache directory a training run prepares this source into."""
    files = expand_paths(data.paths) if data.source == "files" else []
    return hashlib.md5(json.dumps(_plan(data, tokenizer, files), sort_keys=True).encode()).hexdigest()[:16]


def prepare(
    data: DataRecipe,
    tokenizer,
    output_dir: str | Path,
    num_proc: int | None = None,
    wait: bool = False,
    progress: bool = True,
) -> Path:
    """Tokenise `data`'s source into `output_dir` (see the module docstring); returns the directory.

    A directory already holding this preparation is reused as is; one holding another preparation (other
    data, another tokenizer, a changed source file) is refused. `num_proc` worker processes tokenise (1 or
    None: in this process, with the tokenizer's own threads); `wait` waits for a concurrent preparation of
    the same directory instead of refusing it."""
    out = Path(output_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer.eos_token_id is None:
        raise RecipeError("the tokenizer has no eos_token; documents could not be separated in the stream")
    files = expand_paths(data.paths) if data.source == "files" else []
    plan = _plan(data, tokenizer, files)
    with _locked(out, wait):
        if (out / MANIFEST).exists():
            manifest = read_manifest(out, "prepared directory")
            if manifest["plan"] != plan:
                raise RecipeError(
                    f"{out} already holds a preparation of other data or another tokenizer "
                    f"(plan {manifest['plan']['source']}); prepare into another directory"
                )
            return out
        if (out / PLAN).exists() and json.loads((out / PLAN).read_text()) != plan:
            raise RecipeError(
                f"{out} holds an unfinished preparation of other data or another tokenizer; remove it or "
                "prepare into another directory"
            )
        _write_json(out / PLAN, plan)
        done = {m["index"] for m in (json.loads(p.read_text()) for p in out.glob("shard-*.json"))}
        if files and data.max_documents is None:
            jobs = (
                (_piece_job, (index, source, str(files[source]), kind, start, stop, data.text_field))
                for index, (source, kind, start, stop) in enumerate(_pieces(files))
                if index not in done
            )
        else:
            jobs = (
                (_texts_job, (index, batch))
                for index, batch in enumerate(_batches(iter_documents(data), SHARD_DOCUMENTS))
                if index not in done
            )
        init = (tokenizer.backend_tokenizer.to_str(), tokenizer.eos_token_id, len(tokenizer), str(out))
        _run(jobs, init, num_proc or 1, progress)
        shards = sorted(
            (json.loads(p.read_text()) for p in out.glob("shard-*.json")), key=lambda m: m["index"]
        )
        tokenizer.save_pretrained(out / "tokenizer")
        manifest = _manifest(plan, shards, files, data)
        _write_json(out / MANIFEST, {"tokenizer": getattr(tokenizer, "name_or_path", None), **manifest})
        (out / PLAN).unlink()
    return out


def _run(jobs, init: tuple, num_proc: int, progress: bool) -> None:
    """Run the shard jobs (in `num_proc` forked workers, at most two each in flight), with a progress bar
    in tokens/s. A worker's error stops the preparation (finished shards are kept)."""
    bar = tqdm(desc="prepare", unit="tok", unit_scale=True, disable=not progress, mininterval=1)
    count = lambda meta: bar.update(meta["tokens"])  # noqa: E731
    try:
        if num_proc == 1:
            _init_worker(*init, threads=True)
            for fn, args in jobs:
                count(fn(*args))
            return
        pool = ProcessPoolExecutor(
            num_proc, mp_context=get_context("fork"), initializer=_init_worker, initargs=(*init, False)
        )
        pending: set = set()
        try:
            for fn, args in jobs:
                pending.add(pool.submit(fn, *args))
                while len(pending) >= 2 * num_proc:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        count(future.result())
            for future in pending:
                count(future.result())
        finally:
            pool.shutdown(cancel_futures=True)
    finally:
        bar.close()


def _manifest(plan: dict, shards: list[dict], files: list[Path], data: DataRecipe) -> dict:
    names = [str(p) for p in files] or [data.name or data.source]
    sources = [
        {
            "source": name,
            "documents": 0,
            "tokens": 0,
            "bytes": 0,
            **(plan["source"]["files"][i] if files else {}),
        }
        for i, name in enumerate(names)
    ]
    for meta in shards:
        for field in ("documents", "tokens", "bytes"):
            sources[meta["source"]][field] += meta[field]
    for i, source in enumerate(sources):
        if files and not source["documents"]:
            raise RecipeError(
                f"data.paths[{i}]={source['source']!r} holds no records; every data file needs a record"
            )
    kept = [
        {"index": m["index"], "documents": m["documents"], "tokens": m["tokens"]}
        for m in shards
        if m["tokens"]
    ]
    return {
        **{k: v for k, v in plan.items() if k != "source"},
        "plan": plan,
        "documents": sum(s["documents"] for s in sources),
        "tokens": sum(s["tokens"] for s in sources),
        "sources": sources,
        "shards": kept,
    }
