"""KAN hat-basis expansion fused with its coefficient contraction (the NeRA down-projection φ).

NeRA (Deshmukh et al., arXiv 2411.13901, Eq. 3-4) replaces LoRA's linear A by a KAN layer d_in → r whose
edge functions are degree-1 "hat" splines at learnable knots, evaluated on a learnably scaled input:

    z[n, j] = Σ_i Σ_k c[i, k, j] · hat(s_i · x[n, i] − t[i, k]),      hat(v) = max(0, 1 − |v|)

x [N, D], s [D], t [D, K], c [D, K, R]. The basis tensor hat(·) is [N, D, K], K times the input activation.

- `kan_hat_naive`: the PyTorch reference (ground truth); it materialises the basis tensor.
- `KanHatFunction`: Triton forward and backward that never materialise it. The forward tiles N × R, loops
  over D tiles and the K knots, builds each [BN, BD] basis tile in registers and feeds it to `tl.dot`.
  With g = ∂L/∂z, b_k = hat(s·x − t_k), b'_k = ∂b_k/∂u = −sign(u − t_k)·[|u − t_k| < 1] (u = s·x):

      ∂L/∂c[:, k, :] = b_kᵀ g                                      (kernel over D × R tiles and k)
      db_k = g c[:, k, :]ᵀ,   ∂L/∂u = Σ_k db_k · b'_k                (kernel over N × D tiles)
      ∂L/∂x = s · ∂L/∂u,   ∂L/∂s = Σ_n x · ∂L/∂u,   ∂L/∂t[:, k] = −Σ_n db_k · b'_k

  The per-N-tile partial sums of ∂L/∂s and ∂L/∂t are reduced on the host in fp32.
- `kan_hat`: the dispatcher: Triton on CUDA, the reference elsewhere (under autograd with activation
  checkpointing, so the backward recomputes the basis tensor rather than keeping it).

All arithmetic is fp32; the result has x's dtype. Gradients at the kinks (|u − t| ∈ {0, 1}) are 0, as
PyTorch's abs/relu subgradients give.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from .backend import dot_precision, require_triton, tl, triton, use_triton


def kan_hat_naive(
    x: torch.Tensor, scale: torch.Tensor, knots: torch.Tensor, coeff: torch.Tensor
) -> torch.Tensor:
    """Reference: materialise hat(s·x − t) [..., D, K] and contract it with c [D, K, R]; returns [..., R]."""
    d, k, r = coeff.shape
    u = x.float().unsqueeze(-1) * scale.float()[:, None]  # [..., D, 1]
    basis = torch.relu(1 - (u - knots.float()).abs())  # [..., D, K]
    z = basis.reshape(*x.shape[:-1], d * k) @ coeff.float().reshape(d * k, r)
    return z.to(x.dtype)


@triton.jit
def _hat_fwd_kernel(
    X,
    S,
    T,
    C,
    Z,
    N,
    D,
    R,
    K: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
    BR: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    rr = tl.program_id(1) * BR + tl.arange(0, BR)
    acc = tl.zeros([BN, BR], dtype=tl.float32)
    for d0 in range(0, D, BD):
        rd = d0 + tl.arange(0, BD)
        dmask = rd < D
        x = tl.load(X + rn[:, None] * D + rd[None, :], mask=(rn[:, None] < N) & dmask[None, :], other=0.0)
        s = tl.load(S + rd, mask=dmask, other=0.0).to(tl.float32)
        u = x.to(tl.float32) * s[None, :]
        for k in range(K):
            t = tl.load(T + rd * K + k, mask=dmask, other=0.0).to(tl.float32)
            b = tl.maximum(1.0 - tl.abs(u - t[None, :]), 0.0)
            c = tl.load(
                C + (rd[:, None] * K + k) * R + rr[None, :],
                mask=dmask[:, None] & (rr[None, :] < R),
                other=0.0,
            )
            acc += tl.dot(b, c.to(tl.float32), input_precision=DOT_PRECISION)  # padded D lanes have c = 0
    tl.store(
        Z + rn[:, None] * R + rr[None, :],
        acc.to(Z.dtype.element_ty),
        mask=(rn[:, None] < N) & (rr[None, :] < R),
    )


@triton.jit
def _hat_bwd_coeff_kernel(
    X,
    S,
    T,
    G,
    DC,
    N,
    D,
    R,
    K: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
    BR: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    rd = tl.program_id(0) * BD + tl.arange(0, BD)
    rr = tl.program_id(1) * BR + tl.arange(0, BR)
    k = tl.program_id(2)
    dmask = rd < D
    s = tl.load(S + rd, mask=dmask, other=0.0).to(tl.float32)
    t = tl.load(T + rd * K + k, mask=dmask, other=0.0).to(tl.float32)
    acc = tl.zeros([BD, BR], dtype=tl.float32)
    for n0 in range(0, N, BN):
        rn = n0 + tl.arange(0, BN)
        nmask = rn < N
        x = tl.load(X + rn[:, None] * D + rd[None, :], mask=nmask[:, None] & dmask[None, :], other=0.0)
        b = tl.maximum(1.0 - tl.abs(x.to(tl.float32) * s[None, :] - t[None, :]), 0.0)
        g = tl.load(G + rn[:, None] * R + rr[None, :], mask=nmask[:, None] & (rr[None, :] < R), other=0.0)
        acc += tl.dot(
            tl.trans(b), g.to(tl.float32), input_precision=DOT_PRECISION
        )  # padded N rows have g = 0
    tl.store(DC + (rd[:, None] * K + k) * R + rr[None, :], acc, mask=dmask[:, None] & (rr[None, :] < R))


@triton.jit
def _hat_bwd_input_kernel(
    X,
    S,
    T,
    C,
    G,
    DX,
    DS_PART,
    DT_PART,
    N,
    D,
    R,
    K: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
    BR: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    rn = pid_n * BN + tl.arange(0, BN)
    rd = tl.program_id(1) * BD + tl.arange(0, BD)
    nmask, dmask = rn < N, rd < D
    mask = nmask[:, None] & dmask[None, :]
    x = tl.load(X + rn[:, None] * D + rd[None, :], mask=mask, other=0.0).to(tl.float32)
    s = tl.load(S + rd, mask=dmask, other=0.0).to(tl.float32)
    u = x * s[None, :]
    du = tl.zeros([BN, BD], dtype=tl.float32)
    for k in range(K):
        t = tl.load(T + rd * K + k, mask=dmask, other=0.0).to(tl.float32)
        db = tl.zeros([BN, BD], dtype=tl.float32)
        for r0 in range(0, R, BR):
            rr = r0 + tl.arange(0, BR)
            rmask = rr < R
            g = tl.load(G + rn[:, None] * R + rr[None, :], mask=nmask[:, None] & rmask[None, :], other=0.0)
            c = tl.load(
                C + (rd[None, :] * K + k) * R + rr[:, None],
                mask=rmask[:, None] & dmask[None, :],
                other=0.0,
            )
            db += tl.dot(
                g.to(tl.float32), c.to(tl.float32), input_precision=DOT_PRECISION
            )  # c loaded transposed: [BR, BD]
        v = u - t[None, :]
        slope = tl.where(tl.abs(v) < 1.0, tl.where(v > 0, -1.0, tl.where(v < 0, 1.0, 0.0)), 0.0)
        contrib = tl.where(mask, db * slope, 0.0)
        du += contrib
        tl.store(DT_PART + pid_n * D * K + rd * K + k, -tl.sum(contrib, axis=0), mask=dmask)
    tl.store(DX + rn[:, None] * D + rd[None, :], (du * s[None, :]).to(DX.dtype.element_ty), mask=mask)
    tl.store(DS_PART + pid_n * D + rd, tl.sum(du * x, axis=0), mask=dmask)


def _blocks(d: int, r: int) -> tuple[int, int, int]:
    # tl.dot needs every tile dimension >= 16; 32 rows spill registers in the backward at rank 64 (ptxas).
    return 16, min(64, max(16, triton.next_power_of_2(d))), min(64, max(16, triton.next_power_of_2(r)))


class KanHatFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, knots, coeff):
        d, k, r = coeff.shape
        lead = x.shape[:-1]
        x2 = x.reshape(-1, d).contiguous()
        scale, knots, coeff = scale.contiguous(), knots.contiguous(), coeff.contiguous()
        n = x2.shape[0]
        z = torch.empty(n, r, device=x.device, dtype=x.dtype)
        bn, bd, br = _blocks(d, r)
        precision = dot_precision(torch.float32)  # the basis and coefficients meet in fp32
        _hat_fwd_kernel[(triton.cdiv(n, bn), triton.cdiv(r, br))](
            x2, scale, knots, coeff, z, n, d, r, K=k, BN=bn, BD=bd, BR=br, DOT_PRECISION=precision
        )
        ctx.save_for_backward(x2, scale, knots, coeff)
        ctx.lead = lead
        return z.reshape(*lead, r)

    @staticmethod
    def backward(ctx, dz):
        x2, scale, knots, coeff = ctx.saved_tensors
        d, k, r = coeff.shape
        n = x2.shape[0]
        g = dz.reshape(n, r).contiguous()
        bn, bd, br = _blocks(d, r)
        precision = dot_precision(torch.float32)  # the basis and coefficients meet in fp32
        dc = torch.empty(d, k, r, device=x2.device, dtype=torch.float32)
        _hat_bwd_coeff_kernel[(triton.cdiv(d, bd), triton.cdiv(r, br), k)](
            x2, scale, knots, g, dc, n, d, r, K=k, BN=bn, BD=bd, BR=br, DOT_PRECISION=precision
        )
        tiles_n = triton.cdiv(n, bn)
        dx = torch.empty_like(x2)
        ds_part = torch.empty(tiles_n, d, device=x2.device, dtype=torch.float32)
        dt_part = torch.empty(tiles_n, d, k, device=x2.device, dtype=torch.float32)
        _hat_bwd_input_kernel[(tiles_n, triton.cdiv(d, bd))](
            x2,
            scale,
            knots,
            coeff,
            g,
            dx,
            ds_part,
            dt_part,
            n,
            d,
            r,
            K=k,
            BN=bn,
            BD=bd,
            BR=br,
            DOT_PRECISION=precision,
        )
        return (
            dx.reshape(*ctx.lead, d),
            ds_part.sum(0).to(scale.dtype),
            dt_part.sum(0).to(knots.dtype),
            dc.to(coeff.dtype),
        )


def kan_hat_triton(
    x: torch.Tensor, scale: torch.Tensor, knots: torch.Tensor, coeff: torch.Tensor
) -> torch.Tensor:
    require_triton(x, "kan_hat_triton")
    return KanHatFunction.apply(x, scale, knots, coeff)


def kan_hat(x: torch.Tensor, scale: torch.Tensor, knots: torch.Tensor, coeff: torch.Tensor) -> torch.Tensor:
    """z = Σ_{i,k} c[i,k,:]·hat(s_i x_i − t[i,k]): fused Triton on CUDA, the reference elsewhere."""
    if use_triton(x):
        return kan_hat_triton(x, scale, knots, coeff)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, scale, knots, coeff)):
        # The reference keeps [N, D, K] basis tensors for its backward: recompute them there instead.
        return checkpoint(kan_hat_naive, x, scale, knots, coeff, use_reentrant=False)
    return kan_hat_naive(x, scale, knots, coeff)


__all__ = ["kan_hat", "kan_hat_naive", "kan_hat_triton", "KanHatFunction"]
