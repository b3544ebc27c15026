"""The held-out split of a classification fine-tune, evaluated during (`eval.every`) and after training.

The data's own `eval.split` when its source has named splits and that one exists (a `save_to_disk`
DatasetDict, a hub data set); otherwise a deterministic carve-off: `eval.held_out_fraction` of the documents,
drawn by a generator seeded with `train.seed`, never trained on. Either way the choice is recorded in the
run (`<output_dir>/held_out.json`, the carved-off indices included), so the split can be checked and a resume
or a later evaluation uses the same documents.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict, load_from_disk

from .data import load_raw
from .recipe import DataRecipe, Recipe, RecipeError

RECORD = "held_out.json"


def own_split(data: DataRecipe, split: str) -> Dataset | None:
    """The source's own `split`, or None when it has no such split (files and single-split folders have
    none: asking them for a split would return the training data again)."""
    if split == data.split or data.source in ("default", "files"):
        return None
    if data.source == "disk":
        stored = load_from_disk(str(Path(data.paths[0]).expanduser()))
        return stored[split] if isinstance(stored, DatasetDict) and split in stored else None
    try:
        return load_raw(data, split)
    except (RecipeError, ValueError, KeyError):  # the hub data set has no such split
        return None


def split_held_out(recipe: Recipe, ds: Dataset) -> tuple[Dataset, Dataset, dict[str, Any]]:
    """(training documents, held-out documents, the record of how they were split) for `ds`, the training
    split as loaded."""
    data, ev = recipe.data, recipe.eval
    own = own_split(data, ev.split)
    if own is not None:
        return ds, own, {"held_out": "split", "split": ev.split, "documents": len(own)}
    count = round(ev.held_out_fraction * len(ds))
    if not 1 <= count < len(ds):
        raise RecipeError(
            f"eval.held_out_fraction={ev.held_out_fraction} of the {len(ds)} documents of data.split="
            f"{data.split!r} leaves {count} held out and {len(ds) - count} to train on; the data has no "
            f"{ev.split!r} split (eval.split), so both need at least one document"
        )
    order = np.random.default_rng(recipe.train.seed).permutation(len(ds))
    held, kept = np.sort(order[:count]), np.sort(order[count:])
    record = {
        "held_out": "carved",
        "from_split": data.split,
        "fraction": ev.held_out_fraction,
        "seed": recipe.train.seed,
        "documents": count,
        "indices": held.tolist(),
    }
    return ds.select(kept), ds.select(held), record


def write_record(output_dir: str | Path, record: dict[str, Any]) -> None:
    path = Path(output_dir) / RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
