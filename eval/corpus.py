"""The embedded default corpus: the running Python's own standard-library source.

Every machine with Python has it, so demos and tests train on real text with no download. Files are read in
sorted order and split into train/validation *by file* with a hash of the relative path, so the split is
deterministic and does not move when a Python release adds or drops files.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

from datasets import Dataset, DatasetDict

EXCLUDED_DIRS = ("site-packages", "dist-packages", "__pycache__")
VALIDATION_PERCENT = 2.0  # share of files (by path hash) held out for validation


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path | None = None) -> list[Path]:
    """All `.py` files of the standard library, sorted by relative path (third-party packages excluded)."""
    root = root or stdlib_root()
    files = [
        p for p in root.rglob("*.py") if not any(part in EXCLUDED_DIRS for part in p.relative_to(root).parts)
    ]
    if not files:
        raise FileNotFoundError(f"no Python source files found under the standard library at {root}")
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def is_validation(relative_path: str, validation_percent: float) -> bool:
    digest = hashlib.md5(relative_path.encode("utf-8")).hexdigest()
    return int(digest[:8], 16) % 10_000 < validation_percent * 100


def split_documents(
    split: str, validation_percent: float = VALIDATION_PERCENT, max_documents: int | None = None
) -> list[str]:
    """The texts of one split (`"train"` or `"validation"`) in file order, at most `max_documents` of them."""
    if split not in ("train", "validation"):
        raise ValueError(f"split={split!r} is not a split of the default corpus; use 'train' or 'validation'")
    root = stdlib_root()
    texts = []
    for path in stdlib_files(root):
        if is_validation(path.relative_to(root).as_posix(), validation_percent) == (split == "validation"):
            texts.append(read_source(path))
            if max_documents is not None and len(texts) >= max_documents:
                break
    return texts


def read_source(path: Path) -> str:
    # A few stdlib test fixtures are deliberately not UTF-8; keep them byte-exact with `replace`.
    return path.read_text(encoding="utf-8", errors="replace")


def default_corpus(
    validation_percent: float = VALIDATION_PERCENT, max_files: int | None = None
) -> DatasetDict:
    """The standard library as a `DatasetDict` with `train` and `validation` splits of `{"path", "text"}`."""
    if not 0 < validation_percent < 100:
        raise ValueError(f"validation_percent={validation_percent!r} must lie in (0, 100)")
    root = stdlib_root()
    files = stdlib_files(root)[:max_files]
    splits: dict[str, dict[str, list[str]]] = {s: {"path": [], "text": []} for s in ("train", "validation")}
    for path in files:
        relative = path.relative_to(root).as_posix()
        text = read_source(path)
        split = "validation" if is_validation(relative, validation_percent) else "train"
        splits[split]["path"].append(relative)
        splits[split]["text"].append(text)
    if not splits["validation"]["path"]:
        raise ValueError(
            f"validation split is empty with validation_percent={validation_percent} on {len(files)} files"
        )
    return DatasetDict({name: Dataset.from_dict(columns) for name, columns in splits.items()})
