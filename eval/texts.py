"""Text sources for perplexity and length extrapolation, named by one string (the CLI's `--text`):

- `lambada`: the 5,153 LAMBADA (OpenAI) test passages from the data cache (`make data`);
- `default-corpus`: the validation split of Plait's default corpus (the standard-library source the demo
  trains on);
- `hf:NAME:CONFIG:SPLIT[:COLUMN]`: a Hub data set through `datasets.load_dataset` (needs the network or
  the datasets cache; CONFIG may be empty), column `text` unless named, e.g.
  `hf:Salesforce/wikitext:wikitext-2-raw-v1:test`;
- a folder written by `Dataset.save_to_disk` (column `text`);
- a file path or glob of text files, one document per file.
"""

from __future__ import annotations

import glob
from pathlib import Path

from datasets import load_dataset, load_from_disk

from .corpus import split_documents


def load_texts(spec: str, max_documents: int | None = None) -> list[str]:
    """The documents `spec` names (see the module docstring), at most `max_documents` of them."""
    if spec == "lambada":
        from .task_docs import lambada_openai

        texts = lambada_openai()["test"]["text"]
    elif spec == "default-corpus":
        texts = split_documents("validation", max_documents=max_documents)
    elif spec.startswith("hf:"):
        texts = _hub_texts(spec)
    elif Path(spec).is_dir() and (Path(spec) / "dataset_info.json").exists():
        texts = _column(load_from_disk(spec), "text", spec)
    else:
        files = sorted(glob.glob(spec, recursive=True))
        if not files:
            raise FileNotFoundError(
                f"text source {spec!r} is not 'lambada', 'default-corpus', 'hf:NAME:CONFIG:SPLIT[:COLUMN]', "
                "a save_to_disk folder, nor an existing file or glob"
            )
        texts = [Path(f).read_text(encoding="utf-8", errors="replace") for f in files if Path(f).is_file()]
    texts = list(texts[:max_documents])
    if not texts:
        raise ValueError(f"text source {spec!r} holds no documents")
    return texts


def _hub_texts(spec: str) -> list[str]:
    parts = spec[len("hf:") :].split(":")
    if len(parts) not in (3, 4) or not parts[0] or not parts[2]:
        raise ValueError(
            f"text source {spec!r}: expected hf:NAME:CONFIG:SPLIT[:COLUMN] (CONFIG may be empty)"
        )
    name, config, split, column = (parts + ["text"])[:4]
    return _column(load_dataset(name, config or None, split=split), column, spec)


def _column(dataset, column: str, spec: str) -> list[str]:
    if column not in dataset.column_names:
        raise ValueError(f"text source {spec!r} has no column {column!r}; columns: {dataset.column_names}")
    return dataset[column]
