"""NeRA's KAN down-projection φ: d_in → r on learnable-knot hat bases (Deshmukh et al., "Dressing the
Imagination: A Dataset for AI-Powered Translation of Text into Fashion Outfits and A Novel NeRA Adapter for
Enhanced Feature Adaptation", arXiv 2411.13901, Sec. 4, Eq. 3-4).

    φ(x)_j = Σ_i Σ_k c[i, k, j] · max(0, 1 − |s_i x_i − t[i, k]|)

Each input i carries a learnable scale s_i (init 1) and K knots t[i, :] (init linspace(−range, range), the
reference's 8 knots on [−3, 3]); the coefficients start at N(0, init_std²) as in the reference. The adapter
output is α/r · B φ(x) with B a zero-initialised linear r → d_out (`KANLinear`), so the adapted layer is
exactly the base layer at step 0 — the reference code initialises B randomly and does not guarantee it.

Outside the grid (|s_i x_i − t| ≥ 1 for every knot, e.g. an outlier activation beyond ±(range + 1)) every hat
is 0: the spline part gives neither output nor gradient there. As in KAN (Liu et al., "KAN:
Kolmogorov-Arnold Networks", arXiv 2404.19756, Eq. 2.10) and efficient-kan, φ therefore carries a residual
base branch, w_b·silu(x_i) summed over the inputs (`base_weight` [r, d_in] on silu(x), initialised as
efficient-kan's base weight), which answers for every input; `base_branch=False` drops it (the reference).

The contraction runs through `plait.kernels.kan_basis.kan_hat` (fused Triton on CUDA, which never builds the
K-times-larger basis tensor; the PyTorch reference elsewhere).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from plait.kernels.kan_basis import kan_hat


def base_weight(in_features: int, r: int) -> nn.Parameter:
    """w_b [r, d_in] of KAN's residual branch w_b·silu(x), initialised as efficient-kan's base weight (an
    `nn.Linear`'s default). A parameter of φ itself, not a submodule: PEFT's state-dict keys need the adapter
    name second to last (`lora_kan.<adapter>.base_weight`)."""
    weight = torch.empty(r, in_features)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    return nn.Parameter(weight)


class NeRAPhi(nn.Module):
    no_decay = ("knots", "scale")  # positions and scales, not weights: the trainer does not decay them

    def __init__(
        self,
        in_features: int,
        r: int,
        grid_size: int = 8,
        grid_range: float = 3.0,
        init_std: float = 1e-3,
        base_branch: bool = True,
    ):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(in_features))
        self.knots = nn.Parameter(torch.linspace(-grid_range, grid_range, grid_size).repeat(in_features, 1))
        self.coeff = nn.Parameter(torch.randn(in_features, grid_size, r) * init_std)
        self.base_weight = base_weight(in_features, r) if base_branch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = kan_hat(x, self.scale, self.knots, self.coeff)
        return z if self.base_weight is None else z + F.linear(F.silu(x), self.base_weight)
