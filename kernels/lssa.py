"""Softplus attention with re-weighting (Gao et al., 2025, "Softplus Attention with Re-weighting Boosts Length
Extrapolation in Large Language Models", arXiv:2501.13428): LSSA and LSSAR, reference and flash-style Triton
kernels. Equation numbers differ between the paper's arXiv versions, so the formulas are restated here.

LSSA (the paper's first stage: Softplus, a length scale from invariance entropy, l1-normalisation). With q̂, k̂
the L2-normalised query/key rows (cosine scores s_ij ∈ [−1, 1]), N_i the number of keys row i may see and d
the head dimension:

    a_ij = softplus(ln(d)·ln(N_i)·s_ij)  for visible j (0 otherwise),    A_ij = a_ij / Σ_j a_ij

LSSAR (the second stage, re-weighting) re-weights A so that only keys above the row mean keep mass:

    φ_ij = N_i·A_ij,   R_ij = ReLU(φ_ij − O_i)^p,   Â_ij = R_ij / Σ_j R_ij

with O_i = 1 except O_i = 0 on the first three rows (N_i ≤ 3), as the paper does. Computed without overflow:
R is divided by its row maximum m_i = max_j ReLU(φ_ij − O_i) before the power (the normalisation cancels
the factor, so m_i carries no gradient). A row where no key is above O_i (all scores equal, m_i = 0) keeps
the LSSA weights A instead of returning 0/0. Rows that see no key (N_i = 0) return zeros.

Degenerate rows (an instability signal, logged by `plait.train.diagnostics`): with `return_rows=True` every
entry point also returns `Rows`, which LSSAR rows had no key to select, from the row maxima m_i that both
paths compute anyway (no second pass).

- `lssa_naive(q, k, v, mask, reweight, power)`: plain PyTorch reference in fp32 (ground truth).
- `LSSAFunction`: Triton kernels, no L×L matrix in memory. LSSA needs no running max (softplus of a score in
  [−c, c] cannot overflow): one pass accumulates Σ a·V and z = Σ a per query tile, z is saved. LSSAR takes two
  passes, row statistics (z, max a) then the weighted sum (Σ w·V, S = Σ w). Backward: with dP = dO·Vᵀ and
  D_i = dO_i·O_i, the gradient with respect to A is g = dP (LSSA) or g = N·1[φ>O]·p·(t/m)^(p−1)/m·(dP − D)/S
  (LSSAR), then ds_ij = c_i·σ(c_i·s_ij)·(g_ij − E_i)/z_i with E_i = Σ_j A_ij g_ij (= D_i for LSSA; one extra
  pass over the keys for LSSAR). dq runs per query tile, dk/dv per key tile.
- `softplus_attention(...)`: dispatcher, Triton on CUDA, reference elsewhere.

Shapes: q [B, H, Tq, D], k/v [B, H, Tk, D] (heads already repeated for GQA), mask a bool tensor broadcastable
to [B, 1, Tq, Tk] (True = may attend) or None, and `causal`, the backbone's causality, passed explicitly by
every caller: with no mask, a causal call sees the keys up to its own position aligned to the last key
(Tq ≤ Tk, as in KV-cache decoding) and a non-causal one sees every key; a given mask already says what is
visible. N_i is the number of visible keys of row i, so padding and cached keys count correctly.

Packed documents: instead of a dense mask, `segment_ids` (int [B, Tk], nondecreasing along the sequence, one
value per document; query row i belongs to key position i + Tk − Tq) say which keys a query may see: those of
its own document (and, when causal, not after it). The kernels then read two ids per tile instead of an
L×L mask, and N_i is counted from the document starts/ends (`segment_counts`) without an L×L tensor.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .backend import dot_precision, interpreting, require_triton, tl, triton, use_triton

FIRST_ROWS_WITHOUT_OFFSET = 3  # LSSAR: O_i = 0 for rows that see at most this many keys
DEGENERATE_MARGIN = 1e-3  # LSSAR rows with m_i at most this are counted as degenerate (see `Rows`)


class Rows(NamedTuple):
    """Which query rows of one call were degenerate, bool [B, H, Tq] each (`return_rows=True`).

    `seen`: the rows of attention, those that see at least one key. `degenerate`: those among them whose
    LSSAR re-weighting had no key to select, m_i = max_j ReLU(N_i·A_ij − O_i) <= `DEGENERATE_MARGIN`: no key
    more than 0.1% above the row mean (a zero query, identical keys). The margin is there because the
    fallback's own test, m_i <= 0, is decided by rounding on such rows: N equal weights sum to N·A_i only
    within a few ulps, so some uniform rows keep m_i ~ 1e-7 (and re-weight to the same uniform row). Rows
    with N_i <= 3 (O_i = 0, m_i >= 1) are never degenerate; without re-weighting (LSSA) no row is.
    """

    seen: torch.Tensor
    degenerate: torch.Tensor


def _rows(n: torch.Tensor, m: torch.Tensor | None) -> Rows:
    """`Rows` from key counts N and row maxima m (None: no re-weighting ran), both [B, H, Tq]."""
    seen = n > 0
    degenerate = torch.zeros_like(seen) if m is None else seen & (m <= DEGENERATE_MARGIN)
    return Rows(seen, degenerate)


def visible_mask(mask: torch.Tensor | None, q_len: int, kv_len: int, device, causal: bool) -> torch.Tensor:
    """Bool [B or 1, 1, Tq, Tk]: the given mask, else causal visibility aligned to the last key, or all."""
    if mask is not None:
        return mask if mask.dim() == 4 else mask.view(1, 1, *mask.shape[-2:])
    visible = torch.ones(q_len, kv_len, dtype=torch.bool, device=device)
    return (visible.tril(kv_len - q_len) if causal else visible)[None, None]


def key_counts(mask: torch.Tensor) -> torch.Tensor:
    """N_i: number of visible keys of each query row, float32 [B or 1, 1, Tq]."""
    return mask.sum(-1, dtype=torch.float32)


def segment_mask(segment_ids: torch.Tensor, q_len: int, causal: bool) -> torch.Tensor:
    """The dense bool [B, 1, Tq, Tk] mask that `segment_ids` stand for (the reference; the kernels never
    build it): same document, and not a later key when causal."""
    kv_len = segment_ids.shape[-1]
    same = segment_ids[:, kv_len - q_len :, None] == segment_ids[:, None, :]
    if causal:
        same = same & torch.ones(q_len, kv_len, dtype=torch.bool, device=segment_ids.device).tril(
            kv_len - q_len
        )
    return same[:, None]


def segment_counts(segment_ids: torch.Tensor, q_len: int, causal: bool) -> torch.Tensor:
    """N_i from document boundaries, float32 [B, Tq] in O(Tk) memory: the position inside the document + 1
    when causal, else the document's length (documents are runs of equal ids)."""
    kv_len = segment_ids.shape[-1]
    idx = torch.arange(kv_len, device=segment_ids.device).expand_as(segment_ids)
    new = torch.ones_like(segment_ids, dtype=torch.bool)
    new[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    start = torch.where(new, idx, 0).cummax(-1).values
    if causal:
        counts = idx - start + 1
    else:
        last = torch.ones_like(new)
        last[:, :-1] = new[:, 1:]
        end = torch.where(last, idx, kv_len - 1).flip(-1).cummin(-1).values.flip(-1)
        counts = end - start + 1
    return counts[:, kv_len - q_len :].float()


def lssa_naive(
    q,
    k,
    v,
    mask=None,
    reweight: bool = False,
    power: float = 15.0,
    dropout: float = 0.0,
    training: bool = False,
    causal: bool = True,
    segment_ids: torch.Tensor | None = None,
    return_rows: bool = False,
):
    """Reference LSSA / LSSAR in fp32. Returns [B, H, Tq, D] in `q.dtype` (and `Rows` with `return_rows`)."""
    result = lssa_weights(q, k, mask, reweight, power, causal, segment_ids, return_rows)
    weights = result[0] if return_rows else result
    if dropout > 0.0:
        weights = F.dropout(weights, p=dropout, training=training)
    out = (weights @ v.float()).to(q.dtype)
    return (out, result[1]) if return_rows else out


def lssa_weights(
    q,
    k,
    mask=None,
    reweight: bool = False,
    power: float = 15.0,
    causal: bool = True,
    segment_ids=None,
    return_rows: bool = False,
):
    """The attention matrix of LSSA / LSSAR, fp32 [B, H, Tq, Tk]: the reference's weights (and `Rows` with
    `return_rows`)."""
    d, q_len, kv_len = q.shape[-1], q.shape[-2], k.shape[-2]
    if segment_ids is not None:
        mask = _only_one(mask, segment_mask(segment_ids, q_len, causal))
    mask = visible_mask(mask, q_len, kv_len, q.device, causal)
    n = key_counts(mask)[..., None]  # [B, 1, Tq, 1]
    scale = math.log(d) * torch.log(n.clamp_min(1.0))
    s = F.normalize(q.float(), dim=-1) @ F.normalize(k.float(), dim=-1).transpose(-1, -2)
    a = F.softplus(scale * s).masked_fill(~mask, 0.0)
    weights = a / a.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    if reweight:
        offset = (n > FIRST_ROWS_WITHOUT_OFFSET).float()
        t = torch.relu(n * weights - offset)
        m = t.amax(-1, keepdim=True).detach()
        degenerate = m <= 0
        r = (t / torch.where(degenerate, 1.0, m)).pow(power)
        r = torch.where(degenerate, weights, r)
        weights = r / r.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    if not return_rows:
        return weights
    shape = weights.shape[:-1]
    return weights, _rows(n[..., 0].expand(shape), m[..., 0] if reweight else None)


def _only_one(mask, segment_mask_or_ids):
    if mask is not None:
        raise ValueError("pass either a dense mask or segment_ids, not both")
    return segment_mask_or_ids


# ----------------------------------------------------------------------------------------------- Triton


@triton.jit
def _visible(
    offs_m,
    offs_n,
    q_len,
    kv_len,
    mask_ptr,
    stride_mq,
    stride_mk,
    seg_ptr,
    HAS_MASK: tl.constexpr,
    HAS_SEGMENTS: tl.constexpr,
    CAUSAL: tl.constexpr,
):
    inside = (offs_m[:, None] < q_len) & (offs_n[None, :] < kv_len)
    if HAS_MASK:
        ptrs = mask_ptr + offs_m[:, None] * stride_mq + offs_n[None, :] * stride_mk
        vis = inside & (tl.load(ptrs, mask=inside, other=0) != 0)
    elif CAUSAL:
        vis = inside & (offs_n[None, :] <= offs_m[:, None] + (kv_len - q_len))
    else:
        vis = inside
    if HAS_SEGMENTS:
        seg_q = tl.load(seg_ptr + offs_m + (kv_len - q_len), mask=offs_m < q_len, other=-1)
        seg_k = tl.load(seg_ptr + offs_n, mask=offs_n < kv_len, other=-2)
        vis = vis & (seg_q[:, None] == seg_k[None, :])
    return vis


@triton.jit
def _softplus(x):
    return tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _reweight(a, n, inv_z, offset, m_safe, degenerate, power):
    """Unnormalised LSSAR weight (t/m)^p, or a on degenerate rows; also returns t and t/m."""
    t = tl.maximum(n[:, None] * a * inv_z[:, None] - offset[:, None], 0.0)
    ratio = t / m_safe[:, None]
    w = tl.where(t > 0, tl.exp(power * tl.log(tl.maximum(ratio, 1e-30))), 0.0)
    w = tl.where(degenerate[:, None], a, w)
    return w, t, ratio


@triton.jit
def _row_setup(N, Z, M, row_off, offs_m, q_len, log_d):
    valid = offs_m < q_len
    n = tl.load(N + row_off + offs_m, mask=valid, other=0.0)
    c = log_d * tl.log(tl.maximum(n, 1.0))
    offset = tl.where(n > 3, 1.0, 0.0)
    z = tl.load(Z + row_off + offs_m, mask=valid, other=0.0)
    inv_z = tl.where(z > 0, 1.0 / tl.where(z > 0, z, 1.0), 0.0)
    m = tl.load(M + row_off + offs_m, mask=valid, other=0.0)
    degenerate = m <= 0
    m_safe = tl.where(degenerate, 1.0, m)
    return n, c, offset, inv_z, degenerate, m_safe


@triton.jit
def _lssa_fwd_kernel(
    Q,
    K,
    V,
    Out,
    N,
    Mask,
    Seg,
    Z,
    M,
    S,
    stride_mb,
    stride_mq,
    stride_mk,
    stride_sb,
    heads,
    q_len,
    kv_len,
    head_dim,
    log_d,
    power,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    REWEIGHT: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_SEGMENTS: tl.constexpr,
    CAUSAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    q_base = bh * q_len * head_dim
    k_base = bh * kv_len * head_dim
    row_off = bh * q_len
    mask_ptr = Mask + (bh // heads) * stride_mb
    seg_ptr = Seg + (bh // heads) * stride_sb
    q = tl.load(
        Q + q_base + offs_m[:, None] * head_dim + offs_d[None, :],
        mask=(offs_m[:, None] < q_len) & d_ok[None, :],
        other=0.0,
    )
    n = tl.load(N + row_off + offs_m, mask=offs_m < q_len, other=0.0)
    c = log_d * tl.log(tl.maximum(n, 1.0))
    if not CAUSAL:
        hi = kv_len
    else:
        hi = tl.minimum(kv_len, (pid_m + 1) * BLOCK_M + kv_len - q_len)
    z = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if REWEIGHT:
        amax = tl.zeros([BLOCK_M], dtype=tl.float32)
        for start in range(0, hi, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            k = tl.load(
                K + k_base + offs_n[:, None] * head_dim + offs_d[None, :],
                mask=(offs_n[:, None] < kv_len) & d_ok[None, :],
                other=0.0,
            )
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
            vis = _visible(
                offs_m,
                offs_n,
                q_len,
                kv_len,
                mask_ptr,
                stride_mq,
                stride_mk,
                seg_ptr,
                HAS_MASK,
                HAS_SEGMENTS,
                CAUSAL,
            )
            a = tl.where(vis, _softplus(c[:, None] * s), 0.0)
            z += tl.sum(a, axis=1)
            amax = tl.maximum(amax, tl.max(a, axis=1))
        inv_z = tl.where(z > 0, 1.0 / tl.where(z > 0, z, 1.0), 0.0)
        offset = tl.where(n > 3, 1.0, 0.0)
        m = tl.maximum(n * amax * inv_z - offset, 0.0)
        degenerate = m <= 0
        m_safe = tl.where(degenerate, 1.0, m)
        total = tl.zeros([BLOCK_M], dtype=tl.float32)
        for start in range(0, hi, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            kv_ok = (offs_n[:, None] < kv_len) & d_ok[None, :]
            k = tl.load(K + k_base + offs_n[:, None] * head_dim + offs_d[None, :], mask=kv_ok, other=0.0)
            v = tl.load(V + k_base + offs_n[:, None] * head_dim + offs_d[None, :], mask=kv_ok, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
            vis = _visible(
                offs_m,
                offs_n,
                q_len,
                kv_len,
                mask_ptr,
                stride_mq,
                stride_mk,
                seg_ptr,
                HAS_MASK,
                HAS_SEGMENTS,
                CAUSAL,
            )
            a = tl.where(vis, _softplus(c[:, None] * s), 0.0)
            w, t, ratio = _reweight(a, n, inv_z, offset, m_safe, degenerate, power)
            w = tl.where(vis, w, 0.0)
            total += tl.sum(w, axis=1)
            acc += tl.dot(w.to(v.dtype), v, input_precision=DOT_PRECISION)
        tl.store(M + row_off + offs_m, m, mask=offs_m < q_len)
        tl.store(S + row_off + offs_m, total, mask=offs_m < q_len)
    else:
        for start in range(0, hi, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            kv_ok = (offs_n[:, None] < kv_len) & d_ok[None, :]
            k = tl.load(K + k_base + offs_n[:, None] * head_dim + offs_d[None, :], mask=kv_ok, other=0.0)
            v = tl.load(V + k_base + offs_n[:, None] * head_dim + offs_d[None, :], mask=kv_ok, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
            vis = _visible(
                offs_m,
                offs_n,
                q_len,
                kv_len,
                mask_ptr,
                stride_mq,
                stride_mk,
                seg_ptr,
                HAS_MASK,
                HAS_SEGMENTS,
                CAUSAL,
            )
            a = tl.where(vis, _softplus(c[:, None] * s), 0.0)
            z += tl.sum(a, axis=1)
            acc += tl.dot(a.to(v.dtype), v, input_precision=DOT_PRECISION)
        total = z
    tl.store(Z + row_off + offs_m, z, mask=offs_m < q_len)
    inv_total = tl.where(total > 0, 1.0 / tl.where(total > 0, total, 1.0), 0.0)
    out = acc * inv_total[:, None]
    tl.store(
        Out + q_base + offs_m[:, None] * head_dim + offs_d[None, :],
        out.to(Out.dtype.element_ty),
        mask=(offs_m[:, None] < q_len) & d_ok[None, :],
    )


@triton.jit
def _grad_weights(
    s, vis, c, n, inv_z, offset, m_safe, degenerate, inv_total, dp, delta, power, REWEIGHT: tl.constexpr
):
    """Returns (final attention weights, LSSA weights A, g = dL/dA) for one tile."""
    a = tl.where(vis, _softplus(c[:, None] * s), 0.0)
    weights = a * inv_z[:, None]
    if REWEIGHT:
        w, t, ratio = _reweight(a, n, inv_z, offset, m_safe, degenerate, power)
        w = tl.where(vis, w, 0.0)
        final = w * inv_total[:, None]
        dr = (dp - delta[:, None]) * inv_total[:, None]
        dt = tl.where(
            t > 0, power * tl.exp((power - 1.0) * tl.log(tl.maximum(ratio, 1e-30))) / m_safe[:, None], 0.0
        )
        g = tl.where(degenerate[:, None], dp, n[:, None] * dt * dr)
    else:
        final = weights
        g = dp
    return final, weights, tl.where(vis, g, 0.0)


@triton.jit
def _lssa_bwd_dq_kernel(
    Q,
    K,
    V,
    DO,
    DQ,
    N,
    Mask,
    Seg,
    Z,
    M,
    S,
    Delta,
    E,
    stride_mb,
    stride_mq,
    stride_mk,
    stride_sb,
    heads,
    q_len,
    kv_len,
    head_dim,
    log_d,
    power,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    REWEIGHT: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_SEGMENTS: tl.constexpr,
    CAUSAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    q_base = bh * q_len * head_dim
    k_base = bh * kv_len * head_dim
    row_off = bh * q_len
    mask_ptr = Mask + (bh // heads) * stride_mb
    seg_ptr = Seg + (bh // heads) * stride_sb
    q_ok = (offs_m[:, None] < q_len) & d_ok[None, :]
    q = tl.load(Q + q_base + offs_m[:, None] * head_dim + offs_d[None, :], mask=q_ok, other=0.0)
    do = tl.load(DO + q_base + offs_m[:, None] * head_dim + offs_d[None, :], mask=q_ok, other=0.0)
    n, c, offset, inv_z, degenerate, m_safe = _row_setup(N, Z, M, row_off, offs_m, q_len, log_d)
    total = tl.load(S + row_off + offs_m, mask=offs_m < q_len, other=0.0)
    inv_total = tl.where(total > 0, 1.0 / tl.where(total > 0, total, 1.0), 0.0)
    delta = tl.load(Delta + row_off + offs_m, mask=offs_m < q_len, other=0.0)
    if not CAUSAL:
        hi = kv_len
    else:
        hi = tl.minimum(kv_len, (pid_m + 1) * BLOCK_M + kv_len - q_len)
    if REWEIGHT:
        e = tl.zeros([BLOCK_M], dtype=tl.float32)
        for start in range(0, hi, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            kv_ok = (offs_n[:, None] < kv_len) & d_ok[None, :]
            k = tl.load(K + k_base + offs_n[:, None] * head_dim + offs_d[None, :], mask=kv_ok, other=0.0)
            v = tl.load(V + k_base + offs_n[:, None] * head_dim + offs_d[None, :], mask=kv_ok, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
            dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
            vis = _visible(
                offs_m,
                offs_n,
                q_len,
                kv_len,
                mask_ptr,
                stride_mq,
                stride_mk,
                seg_ptr,
                HAS_MASK,
                HAS_SEGMENTS,
                CAUSAL,
            )
            final, weights, g = _grad_weights(
                s, vis, c, n, inv_z, offset, m_safe, degenerate, inv_total, dp, delta, power, REWEIGHT
            )
            e += tl.sum(weights * g, axis=1)
        tl.store(E + row_off + offs_m, e, mask=offs_m < q_len)
    else:
        e = delta
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start in range(0, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        kv_ok = (offs_n[:, None] < kv_len) & d_ok[None, :]
        k = tl.load(K + k_base + offs_n[:, None] * head_dim + offs_d[None, :], mask=kv_ok, other=0.0)
        v = tl.load(V + k_base + offs_n[:, None] * head_dim + offs_d[None, :], mask=kv_ok, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        vis = _visible(
            offs_m,
            offs_n,
            q_len,
            kv_len,
            mask_ptr,
            stride_mq,
            stride_mk,
            seg_ptr,
            HAS_MASK,
            HAS_SEGMENTS,
            CAUSAL,
        )
        final, weights, g = _grad_weights(
            s, vis, c, n, inv_z, offset, m_safe, degenerate, inv_total, dp, delta, power, REWEIGHT
        )
        ds = tl.where(vis, c[:, None] * tl.sigmoid(c[:, None] * s) * (g - e[:, None]) * inv_z[:, None], 0.0)
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
    tl.store(
        DQ + q_base + offs_m[:, None] * head_dim + offs_d[None, :], dq.to(DQ.dtype.element_ty), mask=q_ok
    )


@triton.jit
def _lssa_bwd_dkdv_kernel(
    Q,
    K,
    V,
    DO,
    DK,
    DV,
    N,
    Mask,
    Seg,
    Z,
    M,
    S,
    Delta,
    E,
    stride_mb,
    stride_mq,
    stride_mk,
    stride_sb,
    heads,
    q_len,
    kv_len,
    head_dim,
    log_d,
    power,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    REWEIGHT: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_SEGMENTS: tl.constexpr,
    CAUSAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    q_base = bh * q_len * head_dim
    k_base = bh * kv_len * head_dim
    row_off = bh * q_len
    mask_ptr = Mask + (bh // heads) * stride_mb
    seg_ptr = Seg + (bh // heads) * stride_sb
    kv_ok = (offs_n[:, None] < kv_len) & d_ok[None, :]
    k = tl.load(K + k_base + offs_n[:, None] * head_dim + offs_d[None, :], mask=kv_ok, other=0.0)
    v = tl.load(V + k_base + offs_n[:, None] * head_dim + offs_d[None, :], mask=kv_ok, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    if not CAUSAL:
        lo = 0
    else:
        lo = tl.maximum(pid_n * BLOCK_N - (kv_len - q_len), 0) // BLOCK_M * BLOCK_M
    for start in range(lo, q_len, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        q_ok = (offs_m[:, None] < q_len) & d_ok[None, :]
        q = tl.load(Q + q_base + offs_m[:, None] * head_dim + offs_d[None, :], mask=q_ok, other=0.0)
        do = tl.load(DO + q_base + offs_m[:, None] * head_dim + offs_d[None, :], mask=q_ok, other=0.0)
        n, c, offset, inv_z, degenerate, m_safe = _row_setup(N, Z, M, row_off, offs_m, q_len, log_d)
        total = tl.load(S + row_off + offs_m, mask=offs_m < q_len, other=0.0)
        inv_total = tl.where(total > 0, 1.0 / tl.where(total > 0, total, 1.0), 0.0)
        delta = tl.load(Delta + row_off + offs_m, mask=offs_m < q_len, other=0.0)
        e = tl.load(E + row_off + offs_m, mask=offs_m < q_len, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        vis = _visible(
            offs_m,
            offs_n,
            q_len,
            kv_len,
            mask_ptr,
            stride_mq,
            stride_mk,
            seg_ptr,
            HAS_MASK,
            HAS_SEGMENTS,
            CAUSAL,
        )
        final, weights, g = _grad_weights(
            s, vis, c, n, inv_z, offset, m_safe, degenerate, inv_total, dp, delta, power, REWEIGHT
        )
        dv += tl.dot(tl.trans(final.to(do.dtype)), do, input_precision=DOT_PRECISION)
        ds = tl.where(vis, c[:, None] * tl.sigmoid(c[:, None] * s) * (g - e[:, None]) * inv_z[:, None], 0.0)
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT_PRECISION)
    tl.store(
        DK + k_base + offs_n[:, None] * head_dim + offs_d[None, :], dk.to(DK.dtype.element_ty), mask=kv_ok
    )
    tl.store(
        DV + k_base + offs_n[:, None] * head_dim + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=kv_ok
    )


# CUDA launch shapes: square BLOCK×BLOCK tiles, warps per program and software-pipelining depth, for the
# forward and for both backward kernels (bench/gpu_kernels.py sweeps them on an H100). The backward's tiles
# are 32 wide: at 64 its kernels spill registers at head dim 128 with 4 or 8 warps (ptxas's report,
# bench/kernels_static.py); at 32 they take under 190 registers, two programs per SM.
CUDA_LAUNCH = {
    "fwd": {"block": 64, "num_warps": 4, "num_stages": 2},
    "bwd": {"block": 32, "num_warps": 4, "num_stages": 2},
}


def _launch(head_dim: int, phase: str) -> tuple[tuple[int, int, int], dict]:
    """((BLOCK_M, BLOCK_N, BLOCK_D), launch options) for `phase` "fwd" or "bwd"; the interpreter runs 16-wide
    tiles (its cost grows with the tile, and small tiles exercise the multi-tile paths in tests)."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    if interpreting():
        return (16, 16, block_d), {}
    options = CUDA_LAUNCH[phase]
    block = options["block"]
    return (block, block, block_d), {"num_warps": options["num_warps"], "num_stages": options["num_stages"]}


class LSSAFunction(torch.autograd.Function):
    """Triton LSSA/LSSAR core on L2-normalised q, k: (q̂, k̂, v, counts N, mask or None, segment ids or None,
    causal) -> (out, m), m the LSSAR row maxima [B·H, Tq] of the forward's statistics (zeros for LSSA; not
    differentiable)."""

    @staticmethod
    def forward(ctx, q, k, v, n, mask, segment_ids, reweight: bool, power: float, causal: bool):
        batch, heads, q_len, head_dim = q.shape
        kv_len = k.shape[2]
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out = torch.empty_like(q)
        stats = torch.zeros(3, batch * heads, q_len, device=q.device, dtype=torch.float32)  # z, m, S
        (block_m, block_n, block_d), options = _launch(head_dim, "fwd")
        mask_u8, segments = _mask_args(mask, q), _segment_args(segment_ids, q)
        flags = dict(
            REWEIGHT=reweight,
            HAS_MASK=mask is not None,
            HAS_SEGMENTS=segment_ids is not None,
            CAUSAL=causal and mask is None,
            DOT_PRECISION=dot_precision(q.dtype),
        )
        grid = (triton.cdiv(q_len, block_m), batch * heads)
        _lssa_fwd_kernel[grid](
            q,
            k,
            v,
            out,
            n,
            mask_u8,
            segments,
            stats[0],
            stats[1],
            stats[2],
            *_strides(mask_u8, segments, mask is not None),
            heads,
            q_len,
            kv_len,
            head_dim,
            math.log(head_dim),
            float(power),
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            BLOCK_D=block_d,
            **flags,
            **options,
        )
        if not reweight:
            stats[2] = stats[0]
        ctx.save_for_backward(q, k, v, out, n, mask_u8, segments, stats)
        ctx.power, ctx.flags = float(power), flags
        m = stats[1]
        ctx.mark_non_differentiable(m)
        return out, m

    @staticmethod
    def backward(ctx, dout, dm):
        q, k, v, out, n, mask_u8, segments, stats = ctx.saved_tensors
        batch, heads, q_len, head_dim = q.shape
        kv_len = k.shape[2]
        dout = dout.contiguous()
        delta = (dout.float() * out.float()).sum(-1).reshape(batch * heads, q_len).contiguous()
        e = torch.empty_like(delta) if ctx.flags["REWEIGHT"] else delta
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        (block_m, block_n, block_d), options = _launch(head_dim, "bwd")
        common = dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, **ctx.flags, **options)
        args = (
            n,
            mask_u8,
            segments,
            stats[0],
            stats[1],
            stats[2],
            delta,
            e,
            *_strides(mask_u8, segments, ctx.flags["HAS_MASK"]),
            heads,
            q_len,
            kv_len,
            head_dim,
            math.log(head_dim),
            ctx.power,
        )
        _lssa_bwd_dq_kernel[(triton.cdiv(q_len, block_m), batch * heads)](q, k, v, dout, dq, *args, **common)
        _lssa_bwd_dkdv_kernel[(triton.cdiv(kv_len, block_n), batch * heads)](
            q, k, v, dout, dk, dv, *args, **common
        )
        return dq, dk, dv, None, None, None, None, None, None


def _mask_args(mask, q):
    if mask is None:
        return torch.zeros(1, device=q.device, dtype=torch.uint8)
    return mask[:, 0].to(torch.uint8).contiguous()  # [B or 1, Tq, Tk]


def _segment_args(segment_ids, q):
    if segment_ids is None:
        return torch.zeros(1, device=q.device, dtype=torch.int32)
    return segment_ids.to(torch.int32).contiguous()  # [B, Tk]


def _strides(mask_u8, segments, has_mask: bool):
    """(mask batch, query, key strides; segment batch stride); 0 where there is one row for every batch."""
    mask_strides = (0, 0, 0)
    if has_mask:
        mask_strides = (
            (mask_u8.stride(0) if mask_u8.shape[0] > 1 else 0),
            mask_u8.stride(1),
            mask_u8.stride(2),
        )
    return *mask_strides, segments.stride(0) if segments.dim() == 2 else 0


def lssa_triton(
    q,
    k,
    v,
    mask=None,
    reweight: bool = False,
    power: float = 15.0,
    causal: bool = True,
    segment_ids: torch.Tensor | None = None,
    return_rows: bool = False,
):
    """Triton LSSA/LSSAR, same contract as `lssa_naive`: normalises q, k in fp32, counts keys, runs it."""
    require_triton(q, "lssa_triton")
    batch, heads, q_len, _ = q.shape
    kv_len = k.shape[2]
    if segment_ids is not None:
        _only_one(mask, segment_ids)
        if segment_ids.shape != (batch, kv_len):
            raise ValueError(
                f"segment_ids must be [batch, kv_len] = {[batch, kv_len]}, got {list(segment_ids.shape)}"
            )
        counts = segment_counts(segment_ids, q_len, causal)[:, None]
    else:
        counts_mask = visible_mask(mask, q_len, kv_len, q.device, causal)
        counts = key_counts(counts_mask)
        mask = None if mask is None else counts_mask
    n = counts.expand(batch, heads, q_len).reshape(batch * heads, q_len).contiguous()
    qn = F.normalize(q.float(), dim=-1).to(q.dtype)
    kn = F.normalize(k.float(), dim=-1).to(k.dtype)
    out, m = LSSAFunction.apply(qn, kn, v, n, mask, segment_ids, reweight, power, causal)
    if not return_rows:
        return out
    shape = (batch, heads, q_len)
    return out, _rows(n.view(shape), m.view(shape) if reweight else None)


def softplus_attention(
    q,
    k,
    v,
    mask=None,
    reweight: bool = False,
    power: float = 15.0,
    dropout: float = 0.0,
    training: bool = False,
    causal: bool = True,
    segment_ids: torch.Tensor | None = None,
    return_rows: bool = False,
):
    """LSSA (`reweight=False`) or LSSAR: Triton kernels on CUDA, the PyTorch reference elsewhere (and when
    attention dropout is active, which the kernels do not implement). With `return_rows`: (out, `Rows`)."""
    if use_triton(q) and not (dropout > 0.0 and training):
        return lssa_triton(q, k, v, mask, reweight, power, causal, segment_ids, return_rows)
    return lssa_naive(q, k, v, mask, reweight, power, dropout, training, causal, segment_ids, return_rows)


__all__ = [
    "DEGENERATE_MARGIN",
    "Rows",
    "lssa_naive",
    "lssa_weights",
    "lssa_triton",
    "softplus_attention",
    "LSSAFunction",
    "visible_mask",
    "key_counts",
    "segment_counts",
    "segment_mask",
]
