"""Length extrapolation: loss and perplexity at 1x, 2x, ... 16x the training length, for any causal LM.

Every length scores the same tokens (the first `multiples[-1] x train_length x windows` of the stream) in
disjoint windows of that length (`sliding_window_perplexity` with stride = length), so the rows differ only
in how much context the model sees. Variants are the same weights under another config — e.g. a softmax- or
LSSA-trained Plait model evaluated with `attention="lssar"` — built by `with_config`, never by patching
modules.
"""

from __future__ import annotations

from typing import Any

import torch

from .perplexity import sliding_window_perplexity

DEFAULT_MULTIPLES = (1, 2, 4, 8, 16)


def with_config(model, **overrides):
    """A new model of `model`'s class from its config with `overrides` (validated by the config class as when
    it is first built), holding the same weights (strict load: the overrides must not change parameters)."""
    if not overrides:
        return model
    unknown = [k for k in overrides if not hasattr(model.config, k)]
    if unknown:
        raise ValueError(f"config override(s) {unknown} are not fields of {type(model.config).__name__}")
    config = type(model.config).from_dict({**model.config.to_dict(), **overrides})
    config._attn_implementation = model.config._attn_implementation
    switched = type(model)(config)
    switched.load_state_dict(model.state_dict(), strict=True)
    return switched.to(device=next(model.parameters()).device, dtype=next(model.parameters()).dtype).eval()


def length_extrapolation(
    model,
    ids: torch.Tensor,
    train_length: int,
    multiples: tuple[int, ...] = DEFAULT_MULTIPLES,
    windows_at_longest: int = 2,
    variants: dict[str, dict[str, Any]] | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """Loss and perplexity at `train_length x m` for each m in `multiples`, for the model as it is and for
    each named variant ({"lssar at inference": {"attention": "lssar"}}). The stream must hold
    `windows_at_longest` windows of the longest length."""
    if train_length < 2:
        raise ValueError(f"train_length={train_length} must be at least 2")
    multiples = tuple(sorted(set(multiples)))
    if not multiples or multiples[0] < 1:
        raise ValueError(f"multiples={multiples} must be positive integers")
    budget = multiples[-1] * train_length * windows_at_longest
    if len(ids) < budget:
        raise ValueError(
            f"the text holds {len(ids)} tokens; {windows_at_longest} windows of "
            f"{multiples[-1]}x{train_length} tokens need {budget}: use more text, fewer windows or smaller "
            "multiples"
        )
    ids = ids[:budget]
    rows: dict[str, dict[str, dict[str, float]]] = {}
    for name, overrides in {"as trained": {}, **(variants or {})}.items():
        variant = with_config(model, **overrides)
        rows[name] = {}
        for m in multiples:
            length = m * train_length
            scored = sliding_window_perplexity(variant, ids, length, batch_size=batch_size, progress=progress)
            rows[name][str(length)] = {"loss": scored["loss"], "perplexity": scored["perplexity"]}
    return {
        "train_length": train_length,
        "lengths": [m * train_length for m in multiples],
        "tokens": budget,
        "variants": {"as trained": {}, **(variants or {})},
        "results": rows,
    }
