"""Diagnostics of the residual stream for studying hyper-connection stability.

`residual_mixing(model, input_ids)` (or any model inputs: `residual_mixing(model, pixel_values=x)`) runs one
forward pass and returns, per layer and site (`"mixer"`/`"mlp"`),
the H_pre [B, T, n], H_post [B, T, n] and H_res [B, T, n, n] actually used (fp32), plus the composite gain of
the residual path (mHC, Xie et al. 2025, §3.1 / Fig. 3): with P = H_res^(L) ⋯ H_res^(1) per token,
`forward` = max over tokens of the largest absolute row sum of P (signal amplification) and `backward` = the
largest absolute column sum (gradient amplification). The mHC paper reports ≈3000 for unconstrained HC and
≈1.6 for mHC at 27B; doubly stochastic mixers give exactly 1, orthogonal / spectral-sphere ones at most √n.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .hyper_connections import HCSite


@dataclass
class ResidualMixing:
    sites: list[dict] = field(default_factory=list)  # {"layer", "site", "h_pre", "h_post", "h_res"}
    composite_gain: dict[str, float] = field(default_factory=dict)  # {"forward", "backward", "max"}
    outputs: Any = None  # the model's output on the inputs (e.g. `.logits`)


def composite_gain(h_res_by_depth: list[torch.Tensor]) -> dict[str, float]:
    """Max absolute row (forward) and column (backward) sums of the product of the H_res over depth."""
    if not h_res_by_depth:
        return {"forward": 1.0, "backward": 1.0, "max": 1.0}
    product = h_res_by_depth[0].double()
    for h in h_res_by_depth[1:]:
        product = h.double() @ product  # x_L = H_L ⋯ H_1 x_0
    forward = product.abs().sum(-1).max().item()
    backward = product.abs().sum(-2).max().item()
    return {"forward": forward, "backward": backward, "max": max(forward, backward)}


@torch.no_grad()
def residual_mixing(
    model: nn.Module, input_ids: torch.Tensor | None = None, **inputs: torch.Tensor
) -> ResidualMixing:
    """Per layer and site, the H_pre / H_post / H_res used on the inputs, and the composite gain.

    Works on every Plait model: token ids for the LM (run without a cache), or the model's own inputs
    (`pixel_values` for the ViT); a model with `residual="plain"` has no sites and gain 1.
    """
    if input_ids is not None:
        inputs = {"input_ids": input_ids, "use_cache": False, **inputs}
    sites = sorted((m for m in model.modules() if isinstance(m, HCSite)), key=lambda m: m.site_idx)
    for site in sites:
        site.record = True
    try:
        outputs = model(**inputs)
    finally:
        for site in sites:
            site.record = False
    result = ResidualMixing(outputs=outputs)
    for site in sites:
        recorded, site.recorded = site.recorded, None
        layer, kind = divmod(site.site_idx, 2)
        result.sites.append({"layer": layer, "site": "mlp" if kind else "mixer", **recorded})
    result.composite_gain = composite_gain([s["h_res"] for s in result.sites])
    return result


__all__ = ["ResidualMixing", "composite_gain", "residual_mixing"]
