"""Linear recurrences h_t = A_t h_{t-1} + b_t (h_0 = 0) with diagonal or 2×2-block-diagonal A_t.

This is the inner solve of ParaRNN's Newton method (Danieli et al. 2025, "ParaRNN: Unlocking Parallel
Training of Nonlinear RNNs for Large Language Models", Sec. 3: each Newton step is a block bi-diagonal
system whose solution is a linear recurrence, computed by an associative scan over pairs (A, b) with
(A₁, b₁) ∘ (A₂, b₂) = (A₂A₁, A₂b₁ + b₂)).

Shapes (time is dim 1):
- diagonal: `A` and `b` are [batch, T, D]; A_t acts elementwise.
- block:    `A` is [batch, T, D, 2, 2] and `b` is [batch, T, D, 2]; one 2×2 matrix per channel.

Three interchangeable implementations with one signature `(A, b) -> h`:
- `linear_scan_sequential`: the ground-truth loop over t.
- `linear_scan_parallel`: pure-PyTorch log-depth scan (odd/even reduction, O(T) work), runs anywhere.
- `linear_scan_triton`: one Triton kernel per call; each program scans one (batch, channel-block) with
  `tl.associative_scan` over chunks of time, carrying the state between chunks.
`linear_scan(A, b, mode)` dispatches; `mode="auto"` picks Triton on CUDA and the parallel scan elsewhere.
All of them compute in the dtype they are given; ParaRNN calls them with fp32 tensors.
These are plain solves (no autograd): ParaRNN's backward is itself a reverse linear scan (see
`plait.modeling.pararnn`), obtained here with `reverse=True`.
"""

from __future__ import annotations

import torch

from .backend import interpreting, require_triton, tl, triton, use_triton

SCAN_MODES = ("sequential", "parallel", "triton")


def _is_block(A: torch.Tensor, b: torch.Tensor) -> bool:
    if A.shape == b.shape:
        return False
    if A.shape == (*b.shape, 2) and b.shape[-1] == 2:
        return True
    raise ValueError(f"linear scan: A {tuple(A.shape)} must equal b {tuple(b.shape)} or be b's shape + (2,)")


def _matmul2(A2: torch.Tensor, A1: torch.Tensor) -> torch.Tensor:
    """Batched 2×2 product A2 @ A1, written out elementwise (faster than matmul for 2×2 on CPU)."""
    a, b_, c, d = A2[..., 0, 0], A2[..., 0, 1], A2[..., 1, 0], A2[..., 1, 1]
    e, f, g, h = A1[..., 0, 0], A1[..., 0, 1], A1[..., 1, 0], A1[..., 1, 1]
    return torch.stack(
        (torch.stack((a * e + b_ * g, a * f + b_ * h), -1), torch.stack((c * e + d * g, c * f + d * h), -1)),
        -2,
    )


def _matvec2(A: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.stack(
        (
            A[..., 0, 0] * v[..., 0] + A[..., 0, 1] * v[..., 1],
            A[..., 1, 0] * v[..., 0] + A[..., 1, 1] * v[..., 1],
        ),
        -1,
    )


def _flip(A: torch.Tensor, b: torch.Tensor):
    return A.flip(1), b.flip(1)


def linear_scan_sequential(A: torch.Tensor, b: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """Ground truth: h_t = A_t h_{t-1} + b_t, one step at a time (`reverse`: t runs from T down to 1)."""
    if reverse:
        return linear_scan_sequential(*_flip(A, b)).flip(1)
    block = _is_block(A, b)
    h = torch.zeros_like(b[:, 0])
    out = []
    for t in range(b.shape[1]):
        h = (_matvec2(A[:, t], h) if block else A[:, t] * h) + b[:, t]
        out.append(h)
    return torch.stack(out, 1)


def linear_scan_parallel(A: torch.Tensor, b: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """Log-depth scan in plain PyTorch by odd/even reduction: combine neighbouring pairs, solve the
    half-length system recursively, then fill in the even positions. O(T) work, O(log T) depth."""
    if reverse:
        return linear_scan_parallel(*_flip(A, b)).flip(1)
    block = _is_block(A, b)
    mul = _matmul2 if block else torch.mul
    app = _matvec2 if block else torch.mul
    T = b.shape[1]
    if T == 1:
        return b.clone()
    if T % 2:  # pad with the identity step (A = I, b = 0), which leaves the state unchanged
        eye = (
            torch.eye(2, dtype=A.dtype, device=A.device).expand_as(A[:, :1])
            if block
            else torch.ones_like(A[:, :1])
        )
        A = torch.cat((A, eye), 1)
        b = torch.cat((b, torch.zeros_like(b[:, :1])), 1)
    A_even, A_odd = A[:, 0::2], A[:, 1::2]
    b_even, b_odd = b[:, 0::2], b[:, 1::2]
    # pair (2k, 2k+1) as one step: h_{2k+1} = A_{2k+1} A_{2k} h_{2k-1} + (A_{2k+1} b_{2k} + b_{2k+1})
    h_odd = linear_scan_parallel(mul(A_odd, A_even), app(A_odd, b_even) + b_odd)
    # h_{2k} = A_{2k} h_{2k-1} + b_{2k}, with h_{-1} = 0
    h_prev = torch.cat((torch.zeros_like(h_odd[:, :1]), h_odd[:, :-1]), 1)
    h_even = app(A_even, h_prev) + b_even
    h = torch.stack((h_even, h_odd), 2).flatten(1, 2)
    return h[:, :T]


# ---------------------------------------------------------------------------------------------- Triton


@triton.jit
def _combine_diag(a1, b1, a2, b2):
    return a2 * a1, a2 * b1 + b2


@triton.jit
def _combine_block(a1, b1, c1, d1, x1, y1, a2, b2, c2, d2, x2, y2):
    # (A1, v1) then (A2, v2): A = A2 A1, v = A2 v1 + v2; A = [[a, b], [c, d]], v = [x, y]
    return (
        a2 * a1 + b2 * c1,
        a2 * b1 + b2 * d1,
        c2 * a1 + d2 * c1,
        c2 * b1 + d2 * d1,
        a2 * x1 + b2 * y1 + x2,
        c2 * x1 + d2 * y1 + y2,
    )


@triton.jit
def _scan_diag_kernel(A, B, H, T, D, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_b, pid_d = tl.program_id(0), tl.program_id(1)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    rows = tl.arange(0, BLOCK_T)
    base = pid_b * T * D
    carry = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        t = t0 + rows
        mask = (t[:, None] < T) & (cols[None, :] < D)
        offs = base + t[:, None] * D + cols[None, :]
        a = tl.load(A + offs, mask=mask, other=1.0).to(tl.float32)  # padding = identity step
        b = tl.load(B + offs, mask=mask, other=0.0).to(tl.float32)
        a_cum, b_cum = tl.associative_scan((a, b), 0, _combine_diag)
        h = a_cum * carry[None, :] + b_cum
        tl.store(H + offs, h.to(H.dtype.element_ty), mask=mask)
        carry = tl.sum(tl.where(rows[:, None] == BLOCK_T - 1, h, 0.0), 0)  # padded rows keep the state


@triton.jit
def _scan_block_kernel(A, B, H, T, D, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_b, pid_d = tl.program_id(0), tl.program_id(1)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    rows = tl.arange(0, BLOCK_T)
    base = pid_b * T * D
    cx = tl.zeros((BLOCK_D,), dtype=tl.float32)
    cy = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        t = t0 + rows
        mask = (t[:, None] < T) & (cols[None, :] < D)
        idx = base + t[:, None] * D + cols[None, :]
        a = tl.load(A + idx * 4 + 0, mask=mask, other=1.0).to(tl.float32)
        b = tl.load(A + idx * 4 + 1, mask=mask, other=0.0).to(tl.float32)
        c = tl.load(A + idx * 4 + 2, mask=mask, other=0.0).to(tl.float32)
        d = tl.load(A + idx * 4 + 3, mask=mask, other=1.0).to(tl.float32)
        x = tl.load(B + idx * 2 + 0, mask=mask, other=0.0).to(tl.float32)
        y = tl.load(B + idx * 2 + 1, mask=mask, other=0.0).to(tl.float32)
        a, b, c, d, x, y = tl.associative_scan((a, b, c, d, x, y), 0, _combine_block)
        hx = a * cx[None, :] + b * cy[None, :] + x
        hy = c * cx[None, :] + d * cy[None, :] + y
        tl.store(H + idx * 2 + 0, hx.to(H.dtype.element_ty), mask=mask)
        tl.store(H + idx * 2 + 1, hy.to(H.dtype.element_ty), mask=mask)
        last = rows[:, None] == BLOCK_T - 1
        cx = tl.sum(tl.where(last, hx, 0.0), 0)
        cy = tl.sum(tl.where(last, hy, 0.0), 0)


# CUDA launch shapes per system kind: the time chunk one `tl.associative_scan` covers, channels per program
# and warps. A program holds 2 (diagonal) or 6 (block) fp32 values per (t, channel) of its chunk, so the
# chunk is kept far below the interpreter's (bench/gpu_kernels.py sweeps these on an H100).
CUDA_LAUNCH = {
    "diag": {"block_t": 128, "block_d": 32, "num_warps": 4},  # 256 spills registers (ptxas, sm_90)
    "block": {"block_t": 64, "block_d": 32, "num_warps": 4},  # 128 spills registers (ptxas, sm_90)
}


def linear_scan_triton(
    A: torch.Tensor,
    b: torch.Tensor,
    reverse: bool = False,
    block_t: int | None = None,
    block_d: int | None = None,
) -> torch.Tensor:
    """Fused Triton scan (CUDA, or CPU tensors under `TRITON_INTERPRET=1`). `block_t` is the time chunk one
    `tl.associative_scan` covers, `block_d` the channels per program (defaults: `CUDA_LAUNCH` on CUDA; under
    the interpreter the whole sequence up to 1024 and 32 channels); longer sequences loop over chunks."""
    require_triton(b, "linear_scan_triton")
    if reverse:
        return linear_scan_triton(*_flip(A, b), block_t=block_t, block_d=block_d).flip(1)
    block = _is_block(A, b)
    batch, T, D = b.shape[:3]
    A, b = A.contiguous(), b.contiguous()
    h = torch.empty_like(b)
    if not interpreting():
        launch = CUDA_LAUNCH["block" if block else "diag"]
        block_t, block_d = block_t or launch["block_t"], block_d or launch["block_d"]
        options = {"num_warps": launch["num_warps"]}
    else:
        block_t, block_d, options = block_t or 1024, block_d or 32, {}
    BLOCK_T = min(block_t, triton.next_power_of_2(T))
    BLOCK_D = min(block_d, triton.next_power_of_2(D))
    grid = (batch, triton.cdiv(D, BLOCK_D))
    (_scan_block_kernel if block else _scan_diag_kernel)[grid](
        A, b, h, T, D, BLOCK_T=BLOCK_T, BLOCK_D=BLOCK_D, **options
    )
    return h


_SCANS = {
    "sequential": linear_scan_sequential,
    "parallel": linear_scan_parallel,
    "triton": linear_scan_triton,
}


def resolve_mode(mode: str, device: torch.device) -> str:
    """`"auto"` → `"triton"` on CUDA, `"parallel"` elsewhere; other values pass through (validated)."""
    if mode == "auto":
        return "triton" if use_triton(device) else "parallel"
    if mode not in _SCANS:
        raise ValueError(f"linear scan mode={mode!r} is not valid; valid choices: {['auto', *SCAN_MODES]}")
    if mode == "triton":
        require_triton(device, "linear scan mode='triton'")
    return mode


def linear_scan(A: torch.Tensor, b: torch.Tensor, mode: str = "auto", reverse: bool = False) -> torch.Tensor:
    """Solve h_t = A_t h_{t-1} + b_t (h_0 = 0) by `mode`; `reverse` runs t from T down to 1."""
    return _SCANS[resolve_mode(mode, b.device)](A, b, reverse=reverse)


__all__ = [
    "linear_scan",
    "linear_scan_sequential",
    "linear_scan_parallel",
    "linear_scan_triton",
    "resolve_mode",
    "SCAN_MODES",
]
