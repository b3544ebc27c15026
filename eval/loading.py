"""Find and load the model `plait-eval` scores: a saved model directory, a training checkpoint, or a training
run directory (its `final/` model, else its latest `checkpoint-N`)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoConfig

import plait.modeling  # noqa: F401  (registers Plait with the Auto classes)


def resolve_model_dir(path: str | Path) -> Path:
    """The directory holding `config.json`: `path` itself, or a run directory's `final/` or latest
    `checkpoint-N`."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model path {str(path)!r} is not a directory")
    if (path / "config.json").exists():
        return path
    if (path / "final" / "config.json").exists():
        return path / "final"
    steps = [p for p in path.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    if steps:
        return max(steps, key=lambda p: int(p.name.split("-")[-1]))
    raise FileNotFoundError(
        f"{str(path)!r} holds no model: expected config.json, or a training run with final/ or checkpoint-N/"
    )


def is_image_classifier(model_dir: Path) -> bool:
    architectures = AutoConfig.from_pretrained(model_dir).architectures or []
    return any(name.endswith("ForImageClassification") for name in architectures)


def tokenizer_dir(model_dir: Path) -> Path:
    """Where the tokenizer lives: beside the weights (saved models, Trainer checkpoints) or, for a checkpoint
    of a `plait-train` run that trained its own, in the run's `tokenizer/` folder."""
    for candidate in (model_dir, model_dir.parent / "tokenizer", model_dir.parent.parent / "tokenizer"):
        if (candidate / "tokenizer_config.json").exists() or (candidate / "tokenizer.json").exists():
            return candidate
    raise FileNotFoundError(
        f"no tokenizer in {model_dir} nor in its run's tokenizer/ folder; pass --tokenizer"
    )


def load_causal_lm(model_dir: Path, tokenizer: str | Path | None, device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    tok = AutoTokenizer.from_pretrained(tokenizer or tokenizer_dir(model_dir))
    return model, tok


def load_image_classifier(model_dir: Path, device: str, dtype: torch.dtype):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    return model, AutoImageProcessor.from_pretrained(model_dir)


def training_length(model_dir: Path) -> int | None:
    """The sequence length the model was trained at, from the `plait-train` run's recipe.json if there is
    one (the model's `max_position_embeddings` may be larger than what training used)."""
    for folder in (model_dir, model_dir.parent, model_dir.parent.parent):
        recipe = folder / "recipe.json"
        if recipe.exists():
            return json.loads(recipe.read_text()).get("data", {}).get("seq_len")
    return None
