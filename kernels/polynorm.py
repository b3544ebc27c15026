"""PolyNorm (Zhuo et al., ICLR 2025, "Polynomial Composition Activations", arXiv:2411.03884): fused Triton
kernel.

    PolyNorm(x) = w₀·norm(x³) + w₁·norm(x²) + w₂·norm(x) + b,   norm(u) = u / sqrt(mean(u², last dim) + eps)

(no gain in `norm`; weights in the reference order [cubic, square, linear]). All statistics are fp32.

- `polynorm_naive`: the plain PyTorch reference (ground truth).
- `PolyNormFunction`: one Triton program per row. The forward reads the row once and accumulates
  Σx², Σx⁴, Σx⁶ together in fp32; it saves only the input and the three per-row reciprocal RMS values.
  The backward is closed-form: with u_k = x^k, r_k = (mean(u_k²) + eps)^(-1/2) and g the output gradient,

      ∂L/∂u_k = w_k·r_k·(g − r_k²·u_k·mean(g·u_k)),   ∂L/∂x = Σ_k k·x^(k−1)·∂L/∂u_k,
      ∂L/∂w_k = Σ_rows r_k·Σ(g·u_k),                  ∂L/∂b = Σ g.

- `polynorm`: the dispatcher, Triton on CUDA, the reference elsewhere.
"""

from __future__ import annotations

import torch

from .backend import require_triton, tl, triton, use_triton


def polynorm_naive(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Reference PolyNorm over the last dimension, computed in fp32, returned in `x.dtype`."""
    xf = x.float()
    w = weight.float()

    def norm(u):
        return u * torch.rsqrt(u.square().mean(-1, keepdim=True) + eps)

    y = w[0] * norm(xf.pow(3)) + w[1] * norm(xf.square()) + w[2] * norm(xf) + bias.float()
    return y.to(x.dtype)


@triton.jit
def _polynorm_fwd_kernel(X, Y, W, B, RSTD, n_cols, stride_x, stride_y, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    valid = cols < n_cols
    x = tl.load(X + row * stride_x + cols, mask=valid, other=0.0).to(tl.float32)
    x2 = x * x
    x3 = x2 * x
    r1 = 1.0 / tl.sqrt(tl.sum(x2, axis=0) / n_cols + eps)
    r2 = 1.0 / tl.sqrt(tl.sum(x2 * x2, axis=0) / n_cols + eps)
    r3 = 1.0 / tl.sqrt(tl.sum(x3 * x3, axis=0) / n_cols + eps)
    w0 = tl.load(W).to(tl.float32)
    w1 = tl.load(W + 1).to(tl.float32)
    w2 = tl.load(W + 2).to(tl.float32)
    b = tl.load(B).to(tl.float32)
    y = w0 * r3 * x3 + w1 * r2 * x2 + w2 * r1 * x + b
    tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=valid)
    tl.store(RSTD + row * 3, r3)
    tl.store(RSTD + row * 3 + 1, r2)
    tl.store(RSTD + row * 3 + 2, r1)


@triton.jit
def _polynorm_bwd_kernel(
    X, DY, DX, W, RSTD, DWB, n_cols, stride_x, stride_dy, stride_dx, BLOCK: tl.constexpr
):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    valid = cols < n_cols
    x = tl.load(X + row * stride_x + cols, mask=valid, other=0.0).to(tl.float32)
    g = tl.load(DY + row * stride_dy + cols, mask=valid, other=0.0).to(tl.float32)
    r3 = tl.load(RSTD + row * 3)
    r2 = tl.load(RSTD + row * 3 + 1)
    r1 = tl.load(RSTD + row * 3 + 2)
    w0 = tl.load(W).to(tl.float32)
    w1 = tl.load(W + 1).to(tl.float32)
    w2 = tl.load(W + 2).to(tl.float32)
    x2 = x * x
    x3 = x2 * x
    gx1 = tl.sum(g * x, axis=0)
    gx2 = tl.sum(g * x2, axis=0)
    gx3 = tl.sum(g * x3, axis=0)
    du1 = w2 * r1 * (g - r1 * r1 * x * (gx1 / n_cols))
    du2 = w1 * r2 * (g - r2 * r2 * x2 * (gx2 / n_cols))
    du3 = w0 * r3 * (g - r3 * r3 * x3 * (gx3 / n_cols))
    dx = du1 + 2.0 * x * du2 + 3.0 * x2 * du3
    tl.store(DX + row * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=valid)
    # Per-row partial parameter gradients, summed over rows on the host in fp32.
    tl.store(DWB + row * 4, r3 * gx3)
    tl.store(DWB + row * 4 + 1, r2 * gx2)
    tl.store(DWB + row * 4 + 2, r1 * gx1)
    tl.store(DWB + row * 4 + 3, tl.sum(g, axis=0))


def _num_warps(block: int) -> int:
    """Warps per row program: one row of `block` columns spread so each thread holds ~16 elements
    (bench/gpu_kernels.py sweeps this on an H100)."""
    return min(16, max(1, block // 512))


class PolyNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps=1e-6):
        shape = x.shape
        x2d = x.reshape(-1, shape[-1]).contiguous()
        rows, cols = x2d.shape
        y = torch.empty_like(x2d)
        rstd = torch.empty(rows, 3, device=x.device, dtype=torch.float32)
        block = triton.next_power_of_2(cols)
        _polynorm_fwd_kernel[(rows,)](
            x2d,
            y,
            weight,
            bias,
            rstd,
            cols,
            x2d.stride(0),
            y.stride(0),
            eps,
            BLOCK=block,
            num_warps=_num_warps(block),
        )
        ctx.save_for_backward(x2d, weight, rstd)
        ctx.shape, ctx.block = shape, block
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy):
        x2d, weight, rstd = ctx.saved_tensors
        rows, cols = x2d.shape
        dy2d = dy.reshape(-1, cols).contiguous()
        dx = torch.empty_like(x2d)
        dwb = torch.empty(rows, 4, device=x2d.device, dtype=torch.float32)
        _polynorm_bwd_kernel[(rows,)](
            x2d,
            dy2d,
            dx,
            weight,
            rstd,
            dwb,
            cols,
            x2d.stride(0),
            dy2d.stride(0),
            dx.stride(0),
            BLOCK=ctx.block,
            num_warps=_num_warps(ctx.block),
        )
        sums = dwb.sum(0)
        return dx.view(ctx.shape), sums[:3].to(weight.dtype), sums[3:].to(weight.dtype), None


def polynorm_triton(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    require_triton(x, "polynorm_triton")
    return PolyNormFunction.apply(x, weight, bias, eps)


def polynorm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """PolyNorm over the last dimension: the fused Triton kernel on CUDA, the PyTorch reference elsewhere."""
    if use_triton(x):
        return polynorm_triton(x, weight, bias, eps)
    return polynorm_naive(x, weight, bias, eps)


__all__ = ["polynorm", "polynorm_naive", "polynorm_triton", "PolyNormFunction"]
