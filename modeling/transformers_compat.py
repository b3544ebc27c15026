"""The transformers API differences Plait bridges, in one place (the range is in `pyproject.toml`).

transformers 5.24 renamed the KV/state cache from `past_key_values` to `cache`: the keyword `generate` passes
to `forward`, the field of the model outputs and the argument of `create_causal_mask`; the old names still
work there but warn. Plait's modules call the cache `cache` internally, accept it from callers under either
name on every supported version (an old name warns where transformers' own models warn: `legacy_cache_names`),
and talk to transformers with the name the installed version expects, so no deprecation warning comes from
Plait's own calls.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect

from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.utils.deprecation import deprecate_kwarg

LEGACY_CACHE_NAMES = ("past_key_values", "cache_params")
# The version transformers' own models announce for removing the old names (Llama's forward:
# `@deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")`; Mamba's the same for `cache_params`).
LEGACY_CACHE_REMOVAL = "5.40.0"

# The output field and the `create_causal_mask` argument holding the cache in the installed transformers.
OUTPUT_CACHE_FIELD = next(
    name
    for name in ("cache", "past_key_values")
    if name in {f.name for f in dataclasses.fields(BaseModelOutputWithPast)}
)
MASK_CACHE_ARGUMENT = (
    "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"
)


def legacy_cache_names(forward):
    """Decorates a model's `forward(..., cache=...)` so an old cache name warns exactly as transformers' own
    models do where the installed transformers calls the cache `cache`: through the same `deprecate_kwarg`
    (a `FutureWarning`: "`past_key_values` is deprecated and will be removed in version 5.40.0 for
    `PlaitForCausalLM.forward`. Use `cache` instead."). Passing the cache under two names stays an error
    (`take_cache`), where transformers would warn and drop one. Before the rename (5.23) `past_key_values` is
    the current name: no warning."""
    if OUTPUT_CACHE_FIELD != "cache":
        return forward
    renamed = forward
    for name in LEGACY_CACHE_NAMES:
        renamed = deprecate_kwarg(name, LEGACY_CACHE_REMOVAL, new_name="cache")(renamed)

    @functools.wraps(forward)
    def forward_with_legacy_names(*args, **kwargs):
        given = [name for name in ("cache", *LEGACY_CACHE_NAMES) if kwargs.get(name) is not None]
        return (forward if len(given) > 1 else renamed)(*args, **kwargs)

    return forward_with_legacy_names


def take_cache(cache, kwargs: dict):
    """The cache given as `cache=` or under a legacy name (popped from `kwargs`); two is an error."""
    given = {name: kwargs.pop(name) for name in LEGACY_CACHE_NAMES if kwargs.get(name) is not None}
    if cache is not None:
        given["cache"] = cache
    if len(given) > 1:
        raise ValueError(f"the cache was passed twice, as {sorted(given)}: pass it once, as `cache`")
    return next(iter(given.values()), None)


def cache_output(cache) -> dict:
    """`{field: cache}` for a transformers output class, under the installed version's field name."""
    return {OUTPUT_CACHE_FIELD: cache}


def output_cache(outputs):
    """The cache held by a transformers model output, whichever name the installed version uses."""
    return getattr(outputs, OUTPUT_CACHE_FIELD, None)


def causal_mask(config, inputs_embeds, attention_mask, cache, position_ids):
    """`transformers.masking_utils.create_causal_mask` with the cache under the installed version's name.

    The mask is sized by the first attention layer's cache: transformers would take the first layer, which in
    a hybrid may be a ParaRNN state (whose sizes differ from a static cache's key slots)."""
    layer_types = list(config.layer_types)
    return create_causal_mask(
        config=config,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        layer_idx=layer_types.index("full_attention") if "full_attention" in layer_types else 0,
        **{MASK_CACHE_ARGUMENT: cache},
    )


__all__ = [
    "LEGACY_CACHE_NAMES",
    "OUTPUT_CACHE_FIELD",
    "cache_output",
    "causal_mask",
    "legacy_cache_names",
    "output_cache",
    "take_cache",
]
