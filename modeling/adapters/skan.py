"""S-KAN's down-projection φ: d_in → r with a selectable activation space per node (Yang et al.,
"Selective KAN", arXiv 2408.08338).

A node is an input feature i. Each node holds a pool of basis families, each with K functions on the
learnably scaled input u_i = s_i·x_i:

- `bspline`:   cubic B-splines on the uniform grid g_k = linspace(−range, range, K), spacing h
               (the cardinal cubic B-spline B₃((u − g_k)/h): efficient-kan's Cox–de Boor basis on a
               uniform grid)
- `rbf`:       Gaussian RBFs exp(−((u − g_k)/h)²) (FastKAN)
- `chebyshev`: T_k(tanh u), k = 0..K−1, by the three-term recurrence (ChebyKAN)
- `wavelet`:   Mexican-hat wavelets (1 − v²)·exp(−v²/2), v = (u − g_k)/h (Wav-KAN)

Each family f has its own coefficients c_f [d_in, K, r]; the node combines its families with learned weights
w[i] = softmax(a[i]) over the families still active at that node:

    φ(x)_j = Σ_i Σ_f w[i, f] Σ_k c_f[i, k, j] · basis_{f,k}(u_i)

As in NeRA (`plait.modeling.adapters.nera`), φ adds KAN's residual base branch w_b·silu(x_i) (Liu et al.,
arXiv 2404.19756; efficient-kan): the local families (B-spline, RBF, wavelet) vanish outside the grid, so
without it an outlier input would get no output and no gradient. `base_branch=False` drops it.

The paper gives no closed formula for selection and pruning; ours, in three phases:

1. all candidates: every family active, weights and coefficients trained together;
2. selective training (`select()`): each node keeps only its highest-weight family (w becomes 1 for it),
   and training continues on that family alone;
3. pruning (`prune()`): the unselected families' coefficients and the weights are deleted. What remains is
   one [d_in, K, r] coefficient tensor plus each node's family index, F times smaller than the pool, and the
   forward evaluates one family per node (F times less basis work). After `select()` pruning is exact.
   (Pruning at the end of phase 1, without `select()`, folds the winning weight into the coefficients and
   drops the other families' contributions.)

There is no Triton kernel for S-KAN (the NeRA hat basis has one in `plait.kernels.kan_basis`): each family
is evaluated by PyTorch code with a hand-written backward (`_FamilyContraction`) that recomputes the basis
and its analytic derivative instead of keeping the K-times-larger basis tensor.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .nera import base_weight

FAMILIES = ("bspline", "rbf", "chebyshev", "wavelet")


def _cubic_bspline(v: torch.Tensor, with_slope: bool):
    """The cardinal cubic B-spline B₃(v) (support |v| < 2) and, with_slope, its derivative dB₃/dv."""
    a = v.abs()
    near = a < 1
    far = (2 - a).clamp(min=0)
    value = torch.where(near, 2 / 3 - a**2 + a**3 / 2, far**3 / 6)
    if not with_slope:
        return value, None
    return value, torch.where(near, v * (1.5 * a - 2), -torch.sign(v) * far**2 / 2)


def basis(family: str, u: torch.Tensor, grid: torch.Tensor, with_slope: bool = False):
    """The K functions of `family` at u [..., D] on the uniform grid [K]: returns [..., D, K]; with_slope,
    returns (values, d values / du), both [..., D, K] (the derivative the custom backward uses)."""
    h = grid[1] - grid[0]
    if family == "chebyshev":  # T_k(t), t = tanh u; dT_k/dt = k·U_{k-1}(t) (Chebyshev of the second kind)
        t = torch.tanh(u)
        first = [torch.ones_like(t), t]
        while len(first) < grid.numel():
            first.append(2 * t * first[-1] - first[-2])
        value = torch.stack(first[: grid.numel()], dim=-1)
        if not with_slope:  # the forward: no second-kind terms
            return value
        second = [torch.ones_like(t), 2 * t]
        while len(second) < grid.numel() - 1:
            second.append(2 * t * second[-1] - second[-2])
        dt_du = 1 - t**2
        slopes = [torch.zeros_like(t)] + [k * second[k - 1] * dt_du for k in range(1, grid.numel())]
        return value, torch.stack(slopes, dim=-1)
    v = (u.unsqueeze(-1) - grid) / h
    if family == "bspline":
        value, slope = _cubic_bspline(v, with_slope)
    elif family == "rbf":
        value = torch.exp(-(v**2))
        slope = -2 * v * value if with_slope else None
    elif family == "wavelet":
        bump = torch.exp(-(v**2) / 2)
        value = (1 - v**2) * bump
        slope = v * (v**2 - 3) * bump if with_slope else None
    else:
        raise ValueError(f"unknown S-KAN family {family!r}; valid choices: {list(FAMILIES)}")
    return (value, slope / h) if with_slope else value


class _FamilyContraction(torch.autograd.Function):
    """z = Σ_i Σ_k c[i, k, :]·basis_k(u_i) for one family: u [..., D], c [D, K, r] -> [..., r].

    The [..., D, K] basis tensor is K times the input, so it is not kept for the backward: the backward
    recomputes it together with its analytic derivative (`basis(..., with_slope=True)`): the memory of
    activation checkpointing without autograd walking the basis formulas (S-KAN steps 2.6x faster on the
    CPU ViT transfer benchmark; tested equal to autograd through `basis`)."""

    @staticmethod
    def forward(ctx, family: str, u: torch.Tensor, grid: torch.Tensor, coeff: torch.Tensor) -> torch.Tensor:
        ctx.family = family
        ctx.save_for_backward(u, grid, coeff)
        return basis(family, u, grid).flatten(-2) @ coeff.flatten(0, 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        u, grid, coeff = ctx.saved_tensors
        d, k, r = coeff.shape
        value, slope = basis(ctx.family, u, grid, with_slope=True)
        grad = grad.reshape(-1, r)
        grad_coeff = (value.reshape(-1, d * k).t() @ grad).view(d, k, r) if ctx.needs_input_grad[3] else None
        grad_u = None
        if ctx.needs_input_grad[1]:
            grad_basis = (grad @ coeff.reshape(d * k, r).t()).view(-1, d, k)
            grad_u = (grad_basis * slope.reshape(-1, d, k)).sum(-1).view_as(u)
        return None, grad_u, None, grad_coeff


class SKANPhi(nn.Module):
    no_decay = ("scale", "logits")  # scales and family weights: the trainer does not decay them

    def __init__(
        self,
        in_features: int,
        r: int,
        families: tuple[str, ...] | list[str] = FAMILIES,
        grid_size: int = 8,
        grid_range: float = 3.0,
        init_std: float = 1e-3,
        pruned: bool = False,
        base_branch: bool = True,
    ):
        super().__init__()
        self.families = tuple(families)
        self.register_buffer("grid", torch.linspace(-grid_range, grid_range, grid_size), persistent=False)
        self.scale = nn.Parameter(torch.ones(in_features))
        if pruned:  # the layout `prune()` leaves; filled by loading a pruned adapter
            self.coeff = nn.Parameter(torch.zeros(in_features, grid_size, r))
            self.register_buffer("family", torch.zeros(in_features, dtype=torch.long))
        else:
            self.logits = nn.Parameter(torch.zeros(in_features, len(self.families)))
            self.coeff = nn.Parameter(torch.randn(len(self.families), in_features, grid_size, r) * init_std)
            self.register_buffer("active", torch.ones(in_features, len(self.families), dtype=torch.bool))
        self.base_weight = base_weight(in_features, r) if base_branch else None

    @property
    def pruned(self) -> bool:
        return hasattr(self, "family")

    def weights(self) -> torch.Tensor:
        """w [d_in, F]: the softmax of each node's logits over its active families (0 for inactive ones)."""
        return torch.softmax(self.logits.float().masked_fill(~self.active, float("-inf")), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.float() * self.scale.float()
        grid = self.grid.float()
        z = 0
        if self.pruned:
            for f, name in enumerate(self.families):
                idx = (self.family == f).nonzero().squeeze(1)
                if idx.numel():
                    coeff = self.coeff[idx].float()
                    z = z + _FamilyContraction.apply(name, u.index_select(-1, idx), grid, coeff)
        else:
            w = self.weights()
            for f, name in enumerate(self.families):
                if self.active[:, f].any():  # w[i, f] folded into the coefficients: Σ_k w·c·basis_k
                    coeff = self.coeff[f].float() * w[:, f, None, None]
                    z = z + _FamilyContraction.apply(name, u, grid, coeff)
        z = z.to(x.dtype)
        return z if self.base_weight is None else z + F.linear(F.silu(x), self.base_weight)

    @torch.no_grad()
    def select(self) -> None:
        """Phase 2: keep only each node's highest-weight family active. Idempotent."""
        best = self.weights().argmax(-1)
        self.active.copy_(nn.functional.one_hot(best, len(self.families)).bool())

    @torch.no_grad()
    def prune(self) -> None:
        """Phase 3: keep each node's top family's coefficients (times its weight), drop the rest."""
        w = self.weights()
        best = w.argmax(-1)
        nodes = torch.arange(best.numel(), device=best.device)
        coeff = self.coeff[best, nodes] * w[nodes, best][:, None, None].to(self.coeff.dtype)
        trainable = self.coeff.requires_grad
        del self.logits, self.coeff, self.active
        self.coeff = nn.Parameter(coeff, requires_grad=trainable)
        self.register_buffer("family", best)
