"""Fused stream mixing of hyper-connections: the two memory-bound ops around each sublayer.

A hyper-connection site (Zhu et al. 2024, Eq. 1-3; mHC, Xie et al. 2025, Eq. 3) computes, per token, with the
residual state x ∈ R^{n×C} and fp32 coefficients H_pre ∈ R^n, H_post ∈ R^n, H_res ∈ R^{n×n}:

    pre-mix:                h = Σ_i H_pre[i] · x[i]                       (the sublayer input, R^C)
    post-mix + res-mix + add: x'[j] = Σ_i H_res[j, i] · x[i] + H_post[j] · y  (y = F(h), R^C)

Both read the n×C state once; the mHC paper (§4.3) fuses them into kernels so the residual stream is read and
written once per site. Here each op is one Triton kernel for the forward and one for the backward (the
backward also produces the coefficient gradients, reductions over C, in the same pass).

- `pre_mix_naive`, `post_res_mix_naive`: PyTorch references (math in fp32, output in x's dtype).
- `pre_mix_triton`, `post_res_mix_triton`: the fused kernels (autograd Functions).
- `pre_mix`, `post_res_mix`: dispatchers, Triton on CUDA, the reference elsewhere.

Shapes: x [..., n, C], y/h [..., C], H_pre/H_post [..., n], H_res [..., n, n] (leading dims equal).
"""

from __future__ import annotations

import torch

from .backend import require_triton, tl, triton, use_triton


def pre_mix_naive(x: torch.Tensor, h_pre: torch.Tensor) -> torch.Tensor:
    return torch.einsum("...i,...ic->...c", h_pre.float(), x.float()).to(x.dtype)


def post_res_mix_naive(
    x: torch.Tensor, y: torch.Tensor, h_post: torch.Tensor, h_res: torch.Tensor
) -> torch.Tensor:
    mixed = torch.einsum("...ji,...ic->...jc", h_res.float(), x.float())
    return (mixed + h_post.float()[..., None] * y.float()[..., None, :]).to(x.dtype)


@triton.jit
def _pre_fwd(X, H, OUT, M, C, N: tl.constexpr, BM: tl.constexpr, BC: tl.constexpr):
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    mm = rm < M
    for c0 in range(0, C, BC):
        rc = c0 + tl.arange(0, BC)
        mask = mm[:, None] & (rc[None, :] < C)
        acc = tl.zeros((BM, BC), dtype=tl.float32)
        for i in tl.static_range(N):
            h = tl.load(H + rm * N + i, mask=mm, other=0.0)
            xi = tl.load(X + rm[:, None] * (N * C) + i * C + rc[None, :], mask=mask, other=0.0).to(tl.float32)
            acc += h[:, None] * xi
        tl.store(OUT + rm[:, None] * C + rc[None, :], acc.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _pre_bwd(X, H, DOUT, DX, DH, M, C, N: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr, BC: tl.constexpr):
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    mm = rm < M
    rn = tl.arange(0, BN)
    dh = tl.zeros((BM, BN), dtype=tl.float32)
    for c0 in range(0, C, BC):
        rc = c0 + tl.arange(0, BC)
        mask = mm[:, None] & (rc[None, :] < C)
        g = tl.load(DOUT + rm[:, None] * C + rc[None, :], mask=mask, other=0.0).to(tl.float32)
        for i in tl.static_range(N):
            h = tl.load(H + rm * N + i, mask=mm, other=0.0)
            xi = tl.load(X + rm[:, None] * (N * C) + i * C + rc[None, :], mask=mask, other=0.0).to(tl.float32)
            tl.store(
                DX + rm[:, None] * (N * C) + i * C + rc[None, :],
                (h[:, None] * g).to(DX.dtype.element_ty),
                mask=mask,
            )
            dh += tl.where(rn[None, :] == i, tl.sum(xi * g, axis=1)[:, None], 0.0)
    tl.store(DH + rm[:, None] * N + rn[None, :], dh, mask=mm[:, None] & (rn[None, :] < N))


@triton.jit
def _post_fwd(X, Y, HP, HR, OUT, M, C, N: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr, BC: tl.constexpr):
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    mm = rm < M
    rj = tl.arange(0, BN)
    mj = mm[:, None] & (rj[None, :] < N)
    hp = tl.load(HP + rm[:, None] * N + rj[None, :], mask=mj, other=0.0)  # [BM, BN] over output streams j
    for c0 in range(0, C, BC):
        rc = c0 + tl.arange(0, BC)
        mask = mm[:, None] & (rc[None, :] < C)
        y = tl.load(Y + rm[:, None] * C + rc[None, :], mask=mask, other=0.0).to(tl.float32)
        acc = hp[:, :, None] * y[:, None, :]
        for i in tl.static_range(N):
            hr = tl.load(
                HR + rm[:, None] * (N * N) + rj[None, :] * N + i, mask=mj, other=0.0
            )  # H_res[:, j, i]
            xi = tl.load(X + rm[:, None] * (N * C) + i * C + rc[None, :], mask=mask, other=0.0).to(tl.float32)
            acc += hr[:, :, None] * xi[:, None, :]
        out = OUT + rm[:, None, None] * (N * C) + rj[None, :, None] * C + rc[None, None, :]
        tl.store(out, acc.to(OUT.dtype.element_ty), mask=mj[:, :, None] & (rc[None, None, :] < C))


@triton.jit
def _post_bwd(
    X,
    Y,
    HP,
    HR,
    DOUT,
    DX,
    DY,
    DHP,
    DHR,
    M,
    C,
    N: tl.constexpr,
    BN: tl.constexpr,
    BM: tl.constexpr,
    BC: tl.constexpr,
):
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    mm = rm < M
    rj = tl.arange(0, BN)
    mj = mm[:, None] & (rj[None, :] < N)
    hp = tl.load(HP + rm[:, None] * N + rj[None, :], mask=mj, other=0.0)
    dhp = tl.zeros((BM, BN), dtype=tl.float32)
    dhr = tl.zeros((BM, BN, BN), dtype=tl.float32)  # [m, j, i]
    for c0 in range(0, C, BC):
        rc = c0 + tl.arange(0, BC)
        mask = mm[:, None] & (rc[None, :] < C)
        mask3 = mj[:, :, None] & (rc[None, None, :] < C)
        g = tl.load(
            DOUT + rm[:, None, None] * (N * C) + rj[None, :, None] * C + rc[None, None, :],
            mask=mask3,
            other=0.0,
        ).to(tl.float32)  # [BM, BN(j), BC]
        y = tl.load(Y + rm[:, None] * C + rc[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(
            DY + rm[:, None] * C + rc[None, :],
            tl.sum(hp[:, :, None] * g, axis=1).to(DY.dtype.element_ty),
            mask=mask,
        )
        dhp += tl.sum(g * y[:, None, :], axis=2)
        for i in tl.static_range(N):
            hr = tl.load(HR + rm[:, None] * (N * N) + rj[None, :] * N + i, mask=mj, other=0.0)
            xi = tl.load(X + rm[:, None] * (N * C) + i * C + rc[None, :], mask=mask, other=0.0).to(tl.float32)
            dxi = tl.sum(hr[:, :, None] * g, axis=1)
            tl.store(DX + rm[:, None] * (N * C) + i * C + rc[None, :], dxi.to(DX.dtype.element_ty), mask=mask)
            dhr += tl.where(rj[None, None, :] == i, tl.sum(g * xi[:, None, :], axis=2)[:, :, None], 0.0)
    tl.store(DHP + rm[:, None] * N + rj[None, :], dhp, mask=mj)
    dhr_ptr = DHR + rm[:, None, None] * (N * N) + rj[None, :, None] * N + rj[None, None, :]
    tl.store(dhr_ptr, dhr, mask=mj[:, :, None] & (rj[None, None, :] < N))


def _blocks(n: int, c: int) -> tuple[int, int, int]:
    bn = max(2, triton.next_power_of_2(n))
    bc = min(32, triton.next_power_of_2(c))  # 64 and 128 spill registers in _post_bwd (ptxas, sm_90)
    return bn, max(1, 64 // bn), bc  # [BM, BN, BC] register tiles stay at 64·BC elements


class PreMixTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, h_pre: torch.Tensor) -> torch.Tensor:
        m, n, c = x.shape
        x, h_pre = x.contiguous(), h_pre.float().contiguous()
        out = torch.empty(m, c, device=x.device, dtype=x.dtype)
        bn, bm, bc = _blocks(n, c)
        _pre_fwd[(triton.cdiv(m, bm),)](x, h_pre, out, m, c, N=n, BM=bm, BC=bc)
        ctx.save_for_backward(x, h_pre)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, h_pre = ctx.saved_tensors
        m, n, c = x.shape
        dx = torch.empty_like(x)
        dh = torch.empty(m, n, device=x.device, dtype=torch.float32)
        bn, bm, bc = _blocks(n, c)
        _pre_bwd[(triton.cdiv(m, bm),)](x, h_pre, grad.contiguous(), dx, dh, m, c, N=n, BN=bn, BM=bm, BC=bc)
        return dx, dh


class PostResMixTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, h_post, h_res):
        m, n, c = x.shape
        x, y = x.contiguous(), y.contiguous()
        h_post, h_res = h_post.float().contiguous(), h_res.float().contiguous()
        out = torch.empty_like(x)
        bn, bm, bc = _blocks(n, c)
        _post_fwd[(triton.cdiv(m, bm),)](x, y, h_post, h_res, out, m, c, N=n, BN=bn, BM=bm, BC=bc)
        ctx.save_for_backward(x, y, h_post, h_res)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, y, h_post, h_res = ctx.saved_tensors
        m, n, c = x.shape
        dx, dy = torch.empty_like(x), torch.empty_like(y)
        dhp = torch.empty(m, n, device=x.device, dtype=torch.float32)
        dhr = torch.empty(m, n, n, device=x.device, dtype=torch.float32)
        bn, bm, bc = _blocks(n, c)
        _post_bwd[(triton.cdiv(m, bm),)](
            x, y, h_post, h_res, grad.contiguous(), dx, dy, dhp, dhr, m, c, N=n, BN=bn, BM=bm, BC=bc
        )
        return dx, dy, dhp, dhr


def pre_mix_triton(x: torch.Tensor, h_pre: torch.Tensor) -> torch.Tensor:
    require_triton(x, "pre_mix_triton")
    lead, (n, c) = x.shape[:-2], x.shape[-2:]
    h_pre = h_pre.expand(*lead, n)
    return PreMixTriton.apply(x.reshape(-1, n, c), h_pre.reshape(-1, n)).view(*lead, c)


def post_res_mix_triton(x, y, h_post, h_res):
    require_triton(x, "post_res_mix_triton")
    lead, (n, c) = x.shape[:-2], x.shape[-2:]
    h_post, h_res = h_post.expand(*lead, n), h_res.expand(*lead, n, n)
    out = PostResMixTriton.apply(
        x.reshape(-1, n, c), y.reshape(-1, c), h_post.reshape(-1, n), h_res.reshape(-1, n, n)
    )
    return out.view(*lead, n, c)


def pre_mix(x: torch.Tensor, h_pre: torch.Tensor) -> torch.Tensor:
    """h = Σ_i H_pre[i]·x[i]; Triton on CUDA, reference elsewhere."""
    if use_triton(x):
        return pre_mix_triton(x, h_pre)
    return pre_mix_naive(x, h_pre)


def post_res_mix(x: torch.Tensor, y: torch.Tensor, h_post: torch.Tensor, h_res: torch.Tensor) -> torch.Tensor:
    """x'[j] = Σ_i H_res[j,i]·x[i] + H_post[j]·y; Triton on CUDA, reference elsewhere."""
    if use_triton(x):
        return post_res_mix_triton(x, y, h_post, h_res)
    return post_res_mix_naive(x, y, h_post, h_res)


__all__ = [
    "pre_mix",
    "pre_mix_naive",
    "pre_mix_triton",
    "post_res_mix",
    "post_res_mix_naive",
    "post_res_mix_triton",
]
