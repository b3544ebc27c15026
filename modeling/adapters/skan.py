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

The paper gives no closed formula for selection and pruning; ours, in three phases:

1. all candidates: every family active, weights and coefficients trained together;
2. selective training (`select()`): each node keeps only its highest-weight family (w becomes 1 for it),
   and training continues on that family alone;
3. pruning (`prune()`): the unselected families' coefficients and the weights are deleted. What remains is
   one [d_in, K, r] coefficient tensor plus each node's family index, F times smaller than the pool, and the
   forward evaluates one family per node (F times less basis work). After `select()` pruning is exact.
   (Pruning at the end of phase 1, without `select()`, folds the winning weight into the coefficients and
   drops the other families' contributions.)

There is no fused kernel for S-KAN: the families are evaluated by this PyTorch code (the NeRA hat basis has
one in `plait.kernels.kan_basis`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

FAMILIES = ("bspline", "rbf", "chebyshev", "wavelet")


def _cubic_bspline(v: torch.Tensor) -> torch.Tensor:
    a = v.abs()
    inner = 2 / 3 - a**2 + a**3 / 2
    outer = (2 - a).clamp(min=0) ** 3 / 6
    return torch.where(a < 1, inner, outer)


def basis(family: str, u: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """The K functions of `family` at u [..., D] on the uniform grid [K]: returns [..., D, K]."""
    h = grid[1] - grid[0]
    if family == "chebyshev":
        t = torch.tanh(u)
        terms = [torch.ones_like(t), t]
        while len(terms) < grid.numel():
            terms.append(2 * t * terms[-1] - terms[-2])
        return torch.stack(terms[: grid.numel()], dim=-1)
    v = (u.unsqueeze(-1) - grid) / h
    if family == "bspline":
        return _cubic_bspline(v)
    if family == "rbf":
        return torch.exp(-(v**2))
    if family == "wavelet":
        return (1 - v**2) * torch.exp(-(v**2) / 2)
    raise ValueError(f"unknown S-KAN family {family!r}; valid choices: {list(FAMILIES)}")


def _family_term(
    family: str, u: torch.Tensor, grid: torch.Tensor, weight, coeff: torch.Tensor
) -> torch.Tensor:
    b = basis(family, u, grid.float())  # [..., D, K]
    if weight is not None:
        b = b * weight[:, None]
    return b.flatten(-2) @ coeff.float().flatten(0, 1)


def _contract(family, u, grid, weight, coeff):
    """One family's Σ_i w_i Σ_k c[i,k,:]·basis_k(u_i). The [..., D, K] basis tensor is K times the input:
    under autograd it is recomputed in the backward instead of kept (activation checkpointing)."""
    if torch.is_grad_enabled() and (u.requires_grad or coeff.requires_grad):
        return checkpoint(_family_term, family, u, grid, weight, coeff, use_reentrant=False)
    return _family_term(family, u, grid, weight, coeff)


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

    @property
    def pruned(self) -> bool:
        return hasattr(self, "family")

    def weights(self) -> torch.Tensor:
        """w [d_in, F]: the softmax of each node's logits over its active families (0 for inactive ones)."""
        return torch.softmax(self.logits.float().masked_fill(~self.active, float("-inf")), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.float() * self.scale.float()
        z = 0
        if self.pruned:
            for f, name in enumerate(self.families):
                idx = (self.family == f).nonzero().squeeze(1)
                if idx.numel():
                    z = z + _contract(name, u.index_select(-1, idx), self.grid, None, self.coeff[idx])
        else:
            w = self.weights()
            for f, name in enumerate(self.families):
                if self.active[:, f].any():
                    z = z + _contract(name, u, self.grid, w[:, f], self.coeff[f])
        return z.to(x.dtype)

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
