"""Image classification: top-1 / top-5 accuracy, per-class accuracy and the confusion matrix of any
transformers image-classification model (its `logits` over classes) on a `datasets.Dataset` with an image
column (PIL images or arrays) and an integer label column, preprocessed by the model's image processor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm


def load_image_dataset(spec: str, split: str = "test"):
    """A folder written by `save_to_disk` (a Dataset, or a DatasetDict and its `split`), an image folder
    (`datasets`' imagefolder: one sub-folder per class), or `hf:NAME:CONFIG:SPLIT` from the Hub."""
    from datasets import DatasetDict, load_dataset, load_from_disk

    if spec.startswith("hf:"):
        parts = spec[len("hf:") :].split(":")
        if len(parts) != 3:
            raise ValueError(f"image data {spec!r}: expected hf:NAME:CONFIG:SPLIT (CONFIG may be empty)")
        return load_dataset(parts[0], parts[1] or None, split=parts[2])
    folder = Path(spec)
    if not folder.is_dir():
        raise FileNotFoundError(f"image data {spec!r} is not a folder nor hf:NAME:CONFIG:SPLIT")
    if (folder / "dataset_dict.json").exists() or (folder / "dataset_info.json").exists():
        dataset = load_from_disk(spec)
    else:
        dataset = load_dataset("imagefolder", data_dir=spec)
    if isinstance(dataset, DatasetDict):
        if split not in dataset:
            raise ValueError(f"image data {spec!r} has no split {split!r}; splits: {list(dataset)}")
        dataset = dataset[split]
    return dataset


def class_names(dataset, label_column: str, model) -> list[str]:
    """The dataset's ClassLabel names, else the model's `id2label`, else the class indices."""
    feature = dataset.features.get(label_column)
    if getattr(feature, "names", None):
        return list(feature.names)
    id2label = getattr(model.config, "id2label", None) or {}
    n = model.config.num_labels
    return [str(id2label.get(i, id2label.get(str(i), i))) for i in range(n)]


@torch.no_grad()
def image_classification(
    model,
    processor,
    dataset,
    image_column: str = "image",
    label_column: str = "label",
    batch_size: int = 32,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Top-1/top-5 accuracy (with binomial stderr), per-class accuracy and the confusion matrix
    (rows: true class, columns: predicted) of `model` on `dataset`."""
    for column in (image_column, label_column):
        if column not in dataset.column_names:
            raise ValueError(f"the dataset has no column {column!r}; columns: {dataset.column_names}")
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    if len(dataset) == 0:
        raise ValueError("the dataset is empty")
    model.eval()
    device = next(model.parameters()).device
    n_classes = model.config.num_labels
    k = min(5, n_classes)
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    top_k_hits = 0
    for start in tqdm(range(0, len(dataset), batch_size), desc="image classification", disable=not progress):
        batch = dataset[start : start + batch_size]
        labels = torch.as_tensor(batch[label_column])
        if labels.min() < 0 or labels.max() >= n_classes:
            raise ValueError(
                f"labels {labels.min().item()}..{labels.max().item()} fall outside the model's "
                f"{n_classes} classes (rows {start}..{start + len(labels) - 1})"
            )
        pixels = processor(images=batch[image_column], return_tensors="pt")["pixel_values"]
        logits = model(pixel_values=pixels.to(device=device, dtype=model.dtype)).logits.float().cpu()
        top = logits.topk(k, dim=-1).indices
        np.add.at(confusion, (labels.numpy(), top[:, 0].numpy()), 1)
        top_k_hits += (top == labels[:, None]).any(dim=-1).sum().item()
    n = int(confusion.sum())
    top1 = float(np.trace(confusion)) / n
    top5 = top_k_hits / n
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    names = class_names(dataset, label_column, model)
    return {
        "top1": top1,
        "top1_stderr": (top1 * (1 - top1) / n) ** 0.5,
        f"top{k}": top5,
        f"top{k}_stderr": (top5 * (1 - top5) / n) ** 0.5,
        "examples": n,
        "classes": names,
        "per_class_accuracy": {
            name: float(acc)
            for name, acc, count in zip(names, per_class, confusion.sum(axis=1), strict=True)
            if count
        },
        "confusion_matrix": confusion.tolist(),
    }
