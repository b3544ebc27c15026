"""LSSA / LSSAR: reference against hand-computed values and identities, Triton kernels (interpreter on CPU)
against the reference for the forward and every gradient."""

import math

import pytest
import torch
import torch.nn.functional as F

from plait.kernels.lssa import (
    key_counts,
    lssa_naive,
    lssa_triton,
    segment_counts,
    segment_mask,
    softplus_attention,
)


def softplus(x):
    return math.log1p(math.exp(x))


def test_lssa_hand_computed():
    d = 4
    q = torch.tensor([[1.0, 0, 0, 0], [2.0, 0, 0, 0]])[None, None]
    k = torch.tensor([[3.0, 0, 0, 0], [0, 0.5, 0, 0]])[None, None]
    v = torch.tensor([[1.0, 2, 3, 4], [-1.0, 0, 1, 0]])[None, None]
    out = lssa_naive(q, k, v)
    # row 0 sees one key (N=1, ln N = 0): all weight on key 0
    torch.testing.assert_close(out[0, 0, 0], v[0, 0, 0])
    # row 1: N=2, cosine scores [1, 0], scale ln(4)·ln(2)
    c = math.log(d) * math.log(2)
    a0, a1 = softplus(c), softplus(0.0)
    expected = (a0 * v[0, 0, 0] + a1 * v[0, 0, 1]) / (a0 + a1)
    torch.testing.assert_close(out[0, 0, 1], expected)


def test_lssar_hand_computed_offset_and_first_rows():
    d, p = 8, 3.0
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 5, d), torch.randn(1, 1, 5, d)
    v = torch.eye(5)[None, None, :, :].expand(1, 1, 5, 5)
    v = F.pad(v, (0, d - 5))  # out row = attention weights
    out = lssa_naive(q, k, v, reweight=True, power=p)[0, 0, :, :5]
    qn, kn = F.normalize(q[0, 0], dim=-1), F.normalize(k[0, 0], dim=-1)
    for i in range(5):
        n = i + 1
        c = math.log(d) * math.log(n)
        a = [softplus(c * float(qn[i] @ kn[j])) for j in range(n)]
        A = [x / sum(a) for x in a]
        offset = 0.0 if n <= 3 else 1.0
        r = [max(n * x - offset, 0.0) ** p for x in A]
        expected = [x / sum(r) for x in r] + [0.0] * (5 - n)
        torch.testing.assert_close(out[i], torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_identities_lssa_is_softmax_of_log_softplus_and_lssar_keeps_above_mean():
    torch.manual_seed(1)
    d, t = 16, 9
    q, k, v = torch.randn(1, 2, t, d), torch.randn(1, 2, t, d), torch.randn(1, 2, t, d)
    qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    n = torch.arange(1, t + 1, dtype=torch.float32)[:, None]
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    logits = torch.log(F.softplus(math.log(d) * torch.log(n) * (qn @ kn.transpose(-1, -2))))
    softmax = torch.softmax(logits.masked_fill(~causal, float("-inf")), -1)
    torch.testing.assert_close(lssa_naive(q, k, v), softmax @ v, rtol=1e-5, atol=1e-5)
    # Row 8 (N = 9 > 3): LSSAR = normalise(ReLU(φ − mean φ)^p), φ the LSSA weights, mean over visible keys.
    phi = softmax[0, :, 8]
    r = torch.relu(phi - phi.mean(-1, keepdim=True)).pow(15)
    torch.testing.assert_close(
        lssa_naive(q, k, v, reweight=True)[0, :, 8],
        torch.einsum("hk,hkd->hd", r / r.sum(-1, keepdim=True), v[0]),
        rtol=1e-4,
        atol=1e-5,
    )


def test_lssar_no_overflow_and_degenerate_rows():
    # N·A up to ~400 overflows fp32 with p=15 unless divided by the row maximum first.
    t, d = 400, 16
    q = torch.zeros(1, 1, t, d)
    q[..., 0] = 1.0
    k = torch.zeros(1, 1, t, d)
    k[..., 1] = 1.0
    k[:, :, 7, 0] = 1.0  # one key aligned with every query: the rest share one score
    k[:, :, 7, 1] = 0.0
    v = torch.randn(1, 1, t, d)
    out = lssa_naive(q, k, v, reweight=True)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, 0, 100], v[0, 0, 7], rtol=1e-4, atol=1e-4)  # all mass on the top key
    # Rows 3..6 see only equal scores: no key is above the mean; they keep the (uniform) LSSA weights.
    torch.testing.assert_close(out[0, 0, 5], v[0, 0, :6].mean(0), rtol=1e-5, atol=1e-5)
    # A row that sees no key at all returns zeros, not NaN.
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool).tril()
    mask[:, :, 0] = False
    out = lssa_naive(
        torch.randn(1, 1, 4, d), torch.randn(1, 1, 4, d), torch.randn(1, 1, 4, d), mask, reweight=True
    )
    assert torch.isfinite(out).all() and out[0, 0, 0].abs().sum() == 0


def test_dispatcher_uses_reference_on_cpu():
    q, k, v = torch.randn(3, 1, 2, 5, 16).unbind(0)
    torch.testing.assert_close(
        softplus_attention(q, k, v, reweight=True), lssa_naive(q, k, v, reweight=True), rtol=0, atol=0
    )


def _padded_mask(batch, q_len, kv_len, device):
    mask = (
        torch.ones(q_len, kv_len, dtype=torch.bool, device=device)
        .tril(kv_len - q_len)[None, None]
        .repeat(batch, 1, 1, 1)
    )
    mask[1, :, :, :3] = False  # second sequence left-padded by 3 keys
    return mask


CASES = [
    # (batch, heads, q_len, kv_len, head_dim, mask builder)
    (1, 2, 19, 19, 16, None),  # causal, odd length, several tiles
    (2, 1, 5, 23, 24, None),  # decoding against a longer cache, head dim not a power of two
    (2, 2, 13, 13, 16, _padded_mask),  # padded batch
]


@pytest.mark.parametrize("reweight", [False, True], ids=["lssa", "lssar"])
@pytest.mark.parametrize("case", CASES, ids=["causal", "cache", "padded"])
def test_triton_forward_and_gradients_match_reference(case, reweight, device):
    batch, heads, q_len, kv_len, d, make_mask = case
    torch.manual_seed(0)
    q = torch.randn(batch, heads, q_len, d, device=device)
    k = torch.randn(batch, heads, kv_len, d, device=device)
    v = torch.randn(batch, heads, kv_len, d, device=device)
    k[:, :, 2] = q[:, :, -1] * 3  # a dominant key so LSSAR's re-weighting is sharply peaked somewhere
    mask = make_mask(batch, q_len, kv_len, device) if make_mask else None
    grad = torch.randn(batch, heads, q_len, d, device=device)
    results = []
    for fn in (lssa_naive, lssa_triton):
        qi, ki, vi = (t.clone().requires_grad_() for t in (q, k, v))
        out = fn(qi, ki, vi, mask, reweight=reweight, power=4.0 if reweight else 15.0)
        out.backward(grad)
        results.append((out.detach(), qi.grad, ki.grad, vi.grad))
    for name, ref, got in zip(("out", "dq", "dk", "dv"), *results, strict=True):
        torch.testing.assert_close(got, ref, rtol=2e-4, atol=2e-4, msg=name)


def test_triton_lssar_default_power_and_degenerate_rows(device):
    torch.manual_seed(0)
    q = torch.randn(1, 1, 9, 16, device=device)
    k = torch.randn(1, 1, 9, 16, device=device)
    k[:, :, :6] = torch.randn(16, device=device)  # rows 3..5 see identical keys: degenerate
    v = torch.randn(1, 1, 9, 16, device=device)
    results = []
    for fn in (lssa_naive, lssa_triton):
        qi, ki, vi = (t.clone().requires_grad_() for t in (q, k, v))
        out = fn(qi, ki, vi, reweight=True)
        out.sum().backward()
        results.append((out.detach(), qi.grad, ki.grad, vi.grad))
    for ref, got in zip(*results, strict=True):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, ref, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reweight", [False, True], ids=["lssa", "lssar"])
@pytest.mark.parametrize("fn", [lssa_naive, lssa_triton], ids=["naive", "triton"])
def test_half_precision_large_activations_stay_finite(fn, reweight, dtype, device, skip_interpreted_bf16_dot):
    if fn is lssa_triton:
        skip_interpreted_bf16_dot(dtype)
    torch.manual_seed(0)
    q, k, v = ((torch.randn(1, 1, 17, 16, device=device) * 300).to(dtype).requires_grad_() for _ in range(3))
    out = fn(q, k, v, reweight=reweight)
    assert out.dtype == dtype and torch.isfinite(out).all()
    out.float().sum().backward()
    assert all(torch.isfinite(t.grad.float()).all() for t in (q, k, v))


@pytest.mark.parametrize("reweight", [False, True], ids=["lssa", "lssar"])
def test_bidirectional_triton_matches_reference_and_an_all_visible_mask(reweight, device):
    """causal=False without a mask (the ViT): every query sees every key, N_i = Tk."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 21, 16, device=device) for _ in range(3))
    grad = torch.randn(2, 2, 21, 16, device=device)
    everything = torch.ones(1, 1, 21, 21, dtype=torch.bool, device=device)
    power = 4.0 if reweight else 15.0
    results = []
    for fn, mask in ((lssa_naive, everything), (lssa_naive, None), (lssa_triton, None)):
        qi, ki, vi = (t.clone().requires_grad_() for t in (q, k, v))
        out = fn(qi, ki, vi, mask, reweight=reweight, power=power, causal=False)
        out.backward(grad)
        results.append((out.detach(), qi.grad, ki.grad, vi.grad))
    for got in results[1:]:
        for name, ref, value in zip(("out", "dq", "dk", "dv"), results[0], got, strict=True):
            torch.testing.assert_close(value, ref, rtol=2e-4, atol=2e-4, msg=name)
    causal = lssa_naive(q, k, v, reweight=reweight, power=power, causal=True)
    assert not torch.allclose(causal[:, :, 0], results[0][0][:, :, 0])  # the first row now sees every key


def _segments(lengths: list[list[int]], device) -> torch.Tensor:
    """Segment ids [B, T] of packed documents with the given lengths per row."""
    return torch.stack(
        [torch.repeat_interleave(torch.arange(len(row)), torch.tensor(row)) for row in lengths]
    ).to(device)


def test_segment_counts_match_the_dense_mask():
    segments = _segments([[1, 5, 12, 3], [21]], "cpu")
    for causal in (True, False):
        for q_len in (21, 4):
            dense = segment_mask(segments, q_len, causal)
            torch.testing.assert_close(segment_counts(segments, q_len, causal), key_counts(dense)[:, 0])


@pytest.mark.parametrize("reweight", [False, True], ids=["lssa", "lssar"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_triton_segments_match_the_dense_mask_reference(causal, reweight, device):
    """Packed documents by segment ids (no L×L mask in the kernels) equal the reference with the dense
    block-diagonal mask: output and every gradient; documents span several 16-wide tiles, one has a token."""
    torch.manual_seed(0)
    segments = _segments([[1, 17, 9, 10], [30, 7]], device)
    q, k, v = (torch.randn(2, 2, 37, 16, device=device) for _ in range(3))
    grad = torch.randn(2, 2, 37, 16, device=device)
    dense = segment_mask(segments, 37, causal)
    power = 4.0 if reweight else 15.0
    results = []
    for fn, kwargs in ((lssa_naive, {"mask": dense}), (lssa_triton, {"segment_ids": segments})):
        qi, ki, vi = (t.clone().requires_grad_() for t in (q, k, v))
        out = fn(qi, ki, vi, reweight=reweight, power=power, causal=causal, **kwargs)
        out.backward(grad)
        results.append((out.detach(), qi.grad, ki.grad, vi.grad))
    for name, ref, got in zip(("out", "dq", "dk", "dv"), *results, strict=True):
        torch.testing.assert_close(got, ref, rtol=2e-4, atol=2e-4, msg=name)


def test_segments_and_a_mask_are_exclusive(device):
    q = torch.randn(1, 1, 4, 16, device=device)
    segments = torch.zeros(1, 4, dtype=torch.long, device=device)
    with pytest.raises(ValueError, match="either a dense mask or segment_ids"):
        lssa_triton(q, q, q, torch.ones(1, 1, 4, 4, dtype=torch.bool, device=device), segment_ids=segments)


@pytest.mark.parametrize("visibility", ["mask", "causal", "segments"])
def test_triton_reports_the_reference_degenerate_rows(visibility, device):
    """LSSAR's degenerate rows (`return_rows`) from the Triton path's row maxima equal the reference's, and
    are exactly the planted ones: rows with N_i > 3 whose query is zero (head 0, rows 20..23) or which see
    only the eight identical keys 0..7. Rows that see no key are no rows of attention (dense mask: the
    second sequence is left-padded by 3 keys, and row 30 of the first is masked out)."""
    torch.manual_seed(0)
    batch, heads, length, d = 2, 2, 37, 16
    q, k, v = (torch.randn(batch, heads, length, d, device=device) for _ in range(3))
    q[:, 0, 20:24] = 0.0
    k[:, :, :8] = torch.randn(d, device=device)
    kwargs, visible = {}, torch.ones(length, length, dtype=torch.bool, device=device).tril()[None, None]
    if visibility == "mask":
        visible = _padded_mask(batch, length, length, device)
        visible[0, :, 30] = False
        kwargs["mask"] = visible
    elif visibility == "segments":
        kwargs["segment_ids"] = _segments([[1, 17, 9, 10], [30, 7]], device)
        visible = segment_mask(kwargs["segment_ids"], length, causal=True)
    n = visible.sum(-1).expand(batch, heads, length)
    only_planted = (visible & (torch.arange(length, device=device) >= 8)).sum(-1) == 0
    zero_query = torch.zeros(batch, heads, length, dtype=torch.bool, device=device)
    zero_query[:, 0, 20:24] = True
    expected = (n > 3) & (zero_query | only_planted)
    assert 0 < int(expected.sum()) < int((n > 0).sum())
    for fn in (lssa_naive, lssa_triton):
        out, rows = fn(q, k, v, reweight=True, return_rows=True, **kwargs)
        torch.testing.assert_close(out, fn(q, k, v, reweight=True, **kwargs), rtol=0, atol=0)
        assert torch.equal(rows.seen, n > 0), fn.__name__
        assert torch.equal(rows.degenerate, expected), fn.__name__
    _, rows = lssa_triton(q, k, v, return_rows=True, **kwargs)
    assert torch.equal(rows.seen, n > 0) and not rows.degenerate.any()  # LSSA does not re-weight
