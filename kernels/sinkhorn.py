"""Sinkhorn-Knopp projection of exp(logits) onto doubly stochastic matrices, in the log domain, fp32.

mHC (Xie et al., DeepSeek 2025, "mHC: Manifold-Constrained Hyper-Connections", Eq. 8-9) sets
H_res = Sinkhorn(exp(H̃_res)) with 20 alternating normalisations. We run them in the log domain (each step
subtracts a log-sum-exp, which is max-subtracted), so wide logit ranges neither underflow exp nor give
"dead" zero gradients. One iteration normalises the columns, then the rows; ending on the rows makes every
row sum exactly 1 (row j of H_res mixes the input streams into output stream j, so each output stream is an
exact convex combination of the inputs); column sums converge at the Sinkhorn rate.

- `sinkhorn_naive(logits, iters)`: the PyTorch reference (autograd unrolls every step).
- `sinkhorn_triton(logits, iters)`: one Triton kernel for the forward; the forward also writes each step's
  log normaliser (2·iters vectors of n floats per matrix, no n×n iterates). The backward kernel rebuilds the
  iterates in reverse from the output and these normalisers (y_{k-1} = y_k + lse_k) and back-propagates
  through every step, so its gradient is that of the unrolled iteration, not of the fixed point.
- `sinkhorn(logits, iters)`: the dispatcher: Triton on CUDA, the reference elsewhere.

Shapes: logits [..., n, n] (any leading dims); the result has the same shape, dtype fp32.
"""

from __future__ import annotations

import torch

from .backend import require_triton, tl, triton, use_triton


def sinkhorn_naive(logits: torch.Tensor, iters: int) -> torch.Tensor:
    """Reference: `iters` × (column then row) log-domain normalisation of `logits`, returns exp, fp32."""
    y = logits.float()
    for _ in range(iters):
        y = y - torch.logsumexp(y, dim=-2, keepdim=True)  # columns sum to 1
        y = y - torch.logsumexp(y, dim=-1, keepdim=True)  # rows sum to 1
    return y.exp()


@triton.jit
def _lse(y, axis: tl.constexpr):
    m = tl.max(y, axis=axis)
    return m + tl.log(tl.sum(tl.exp(y - tl.expand_dims(m, axis)), axis=axis))


@triton.jit
def _sinkhorn_fwd_kernel(L, P, LSE, M, ITERS, N: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr):
    pid = tl.program_id(0)
    rm = pid * BM + tl.arange(0, BM)
    ri = tl.arange(0, BN)
    rj = tl.arange(0, BN)
    offs = rm[:, None, None] * N * N + ri[None, :, None] * N + rj[None, None, :]
    mask = (rm[:, None, None] < M) & (ri[None, :, None] < N) & (rj[None, None, :] < N)
    y = tl.load(L + offs, mask=mask, other=-1e30).to(tl.float32)
    lse_base = LSE + rm[:, None] * (2 * ITERS * BN) + rj[None, :]
    for k in range(ITERS):
        c = _lse(y, 1)  # [BM, BN] over rows i: column normalisers
        y = tl.where(mask, y - tl.expand_dims(c, 1), -1e30)
        tl.store(lse_base + (2 * k) * BN, c, mask=rm[:, None] < M)
        r = _lse(y, 2)  # [BM, BN] over columns j: row normalisers
        y = tl.where(mask, y - tl.expand_dims(r, 2), -1e30)
        tl.store(lse_base + (2 * k + 1) * BN, r, mask=rm[:, None] < M)
    tl.store(P + offs, tl.exp(y), mask=mask)


@triton.jit
def _sinkhorn_bwd_kernel(P, LSE, DP, DL, M, ITERS, N: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr):
    pid = tl.program_id(0)
    rm = pid * BM + tl.arange(0, BM)
    ri = tl.arange(0, BN)
    rj = tl.arange(0, BN)
    offs = rm[:, None, None] * N * N + ri[None, :, None] * N + rj[None, None, :]
    mask = (rm[:, None, None] < M) & (ri[None, :, None] < N) & (rj[None, None, :] < N)
    p = tl.load(P + offs, mask=mask, other=0.0)
    y = tl.where(
        mask & (p > 0), tl.log(tl.maximum(p, 1e-38)), -1e30
    )  # the last iterate y_K (p may underflow)
    dy = tl.where(mask, tl.load(DP + offs, mask=mask, other=0.0) * p, 0.0)
    lse_base = LSE + rm[:, None] * (2 * ITERS * BN) + rj[None, :]
    for kk in range(ITERS):
        k = ITERS - 1 - kk
        # row step: y_out = y_in - lse_j(y_in); dy_in = dy_out - exp(y_out) * rowsum(dy_out)
        dy = dy - tl.exp(y) * tl.expand_dims(tl.sum(dy, axis=2), 2)
        r = tl.load(lse_base + (2 * k + 1) * BN, mask=rm[:, None] < M, other=0.0)
        y = tl.where(mask, y + tl.expand_dims(r, 2), -1e30)
        # column step
        dy = dy - tl.exp(y) * tl.expand_dims(tl.sum(dy, axis=1), 1)
        c = tl.load(lse_base + (2 * k) * BN, mask=rm[:, None] < M, other=0.0)
        y = tl.where(mask, y + tl.expand_dims(c, 1), -1e30)
        dy = tl.where(mask, dy, 0.0)
    tl.store(DL + offs, dy, mask=mask)


def _block_sizes(n: int) -> tuple[int, int]:
    bn = max(2, triton.next_power_of_2(n))
    return bn, max(1, 256 // (bn * bn))


class SinkhornTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, iters: int) -> torch.Tensor:
        n = logits.shape[-1]
        flat = logits.float().reshape(-1, n, n).contiguous()
        m = flat.shape[0]
        bn, bm = _block_sizes(n)
        p = torch.empty_like(flat)
        lse = torch.empty(m, 2 * iters, bn, device=flat.device, dtype=torch.float32)
        _sinkhorn_fwd_kernel[(triton.cdiv(m, bm),)](flat, p, lse, m, iters, N=n, BN=bn, BM=bm)
        ctx.save_for_backward(p, lse)
        ctx.iters = iters
        return p.view(logits.shape)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        p, lse = ctx.saved_tensors
        m, n, _ = p.shape
        bn, bm = _block_sizes(n)
        dl = torch.empty_like(p)
        grad = grad.float().reshape(-1, n, n).contiguous()
        _sinkhorn_bwd_kernel[(triton.cdiv(m, bm),)](p, lse, grad, dl, m, ctx.iters, N=n, BN=bn, BM=bm)
        return dl, None


def sinkhorn_triton(logits: torch.Tensor, iters: int) -> torch.Tensor:
    """Fused Sinkhorn (Triton forward + backward); same result as `sinkhorn_naive`."""
    require_triton(logits, "sinkhorn_triton")
    shape = logits.shape
    return SinkhornTriton.apply(logits.reshape(-1, shape[-1], shape[-1]), iters).view(shape)


def sinkhorn(logits: torch.Tensor, iters: int) -> torch.Tensor:
    """Dispatcher: the fused Triton kernel on CUDA, the PyTorch reference on CPU."""
    if use_triton(logits):
        return sinkhorn_triton(logits, iters)
    return sinkhorn_naive(logits, iters)


__all__ = ["sinkhorn", "sinkhorn_naive", "sinkhorn_triton"]
