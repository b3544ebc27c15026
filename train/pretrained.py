"""`model.pretrained` and `data.tokenizer`: start from saved weights, all of them or none, and a tokenizer
that loads or a one-line error naming the field.

`from_pretrained` alone loads a checkpoint of another architecture, or one missing tensors or holding extra
ones, with a warning and randomly initialised gaps: a run would train something other than what was asked.
Here the checkpoint's `model_type` must be the model's, and every tensor must match one to one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoTokenizer

from .recipe import RecipeError

CONVERTERS = {"llama": "plait.modeling.convert_llama.plait_from_llama"}


def load_pretrained(name_or_path: str, model_class: type, **kwargs) -> torch.nn.Module:
    """`model_class.from_pretrained(name_or_path, **kwargs)`, refusing a foreign `model_type` or any missing,
    unexpected or mis-shaped tensor, with an error naming them."""
    key = "model.pretrained"
    check_local_path(name_or_path, key)
    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError, json.JSONDecodeError) as e:
        raise RecipeError(f"{key}={name_or_path!r}: cannot read its config.json ({e})") from None
    expected = model_class.config_class.model_type
    if config.model_type != expected:
        converter = CONVERTERS.get(config.model_type)
        how = f"; convert it first with {converter}" if converter else ""
        raise RecipeError(
            f"{key}={name_or_path!r} is a {config.model_type!r} checkpoint, not {expected!r}{how}"
        )
    try:
        model, info = model_class.from_pretrained(name_or_path, output_loading_info=True, **kwargs)
    except (OSError, SafetensorError, RuntimeError) as e:
        raise RecipeError(f"{key}={name_or_path!r}: the weights cannot be read ({e})") from None
    problems = {
        "missing": info.get("missing_keys", []),
        "unexpected": info.get("unexpected_keys", []),
        "mis-shaped": [k if isinstance(k, str) else k[0] for k in info.get("mismatched_keys", [])],
    }
    found = {kind: sorted(keys) for kind, keys in problems.items() if keys}
    if found:
        listed = "; ".join(
            f"{kind}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}" for kind, keys in found.items()
        )
        raise RecipeError(f"{key}={name_or_path!r} does not match the model tensor for tensor ({listed})")
    return model


def check_local_path(name_or_path: str, key: str) -> None:
    """A reference that can only be a local path (absolute, relative, home-relative, or more than the hub's
    'org/name') exists; transformers would report a missing one as a malformed hub repo id."""
    path = os.path.expanduser(name_or_path)
    if (path.startswith(("/", ".")) or path.count("/") > 1) and not Path(path).exists():
        raise RecipeError(f"{key}={name_or_path!r} does not exist; give a local directory or a hub name")


def load_tokenizer_from(name_or_path: str, key: str):
    """`AutoTokenizer.from_pretrained(name_or_path)`, or RecipeError naming `key`: a local path that does not
    exist, or a directory or hub name without a loadable tokenizer, with the reason."""
    check_local_path(name_or_path, key)
    try:
        return AutoTokenizer.from_pretrained(os.path.expanduser(name_or_path))
    except (OSError, ValueError, json.JSONDecodeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RecipeError(f"{key}={name_or_path!r}: cannot load a tokenizer from it ({reason})") from None


__all__ = ["check_local_path", "load_pretrained", "load_tokenizer_from"]
