"""Chunked linear + cross-entropy against the full-logits reference: loss and both gradients."""

import pytest
import torch

from plait.kernels.linear_cross_entropy import (
    linear_cross_entropy_chunked,
    linear_cross_entropy_naive,
    z_loss,
)


def problem(n=37, d=24, v=101, ignored=(0, 5, 36), seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g)
    weight = torch.randn(v, d, generator=g) * 0.3
    targets = torch.randint(0, v, (n,), generator=g)
    targets[list(ignored)] = -100
    return hidden, weight, targets


def loss_and_grads(fn, hidden, weight, targets, **kwargs):
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = fn(h, w, targets, **kwargs)
    (loss * 1.7).backward()  # a non-unit upstream gradient
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("chunk_size", [1, 8, 37, 1000])
@pytest.mark.parametrize("normaliser", [None, 50.0])
def test_matches_reference(chunk_size, normaliser):
    hidden, weight, targets = problem()
    ref = loss_and_grads(linear_cross_entropy_naive, hidden, weight, targets, normaliser=normaliser)
    got = loss_and_grads(
        linear_cross_entropy_chunked, hidden, weight, targets, normaliser=normaliser, chunk_size=chunk_size
    )
    for name, a, b in zip(("loss", "d_hidden", "d_weight"), got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("chunk_size", [8, 1000])
def test_z_loss_matches_reference(chunk_size):
    hidden, weight, targets = problem()
    ref = loss_and_grads(linear_cross_entropy_naive, hidden, weight, targets, z_loss_weight=0.1)
    got = loss_and_grads(
        linear_cross_entropy_chunked, hidden, weight, targets, chunk_size=chunk_size, z_loss_weight=0.1
    )
    for name, a, b in zip(("loss", "d_hidden", "d_weight"), got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    # the reference's extra term is 0.1 · mean over targeted tokens of logsumexp², computed by hand
    valid = targets != -100
    lse = torch.logsumexp(hidden @ weight.t(), dim=-1)[valid]
    plain = linear_cross_entropy_naive(hidden, weight, targets)
    torch.testing.assert_close(ref[0] - plain, 0.1 * lse.square().mean())
    torch.testing.assert_close(z_loss(hidden @ weight.t(), targets), lse.square().mean())


def test_autocast_bf16_matches_reference_under_autocast():
    hidden, weight, targets = problem(n=64, d=32, v=300)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = loss_and_grads(linear_cross_entropy_naive, hidden, weight, targets)
        got = loss_and_grads(linear_cross_entropy_chunked, hidden, weight, targets, chunk_size=16)
    assert got[1].dtype == hidden.dtype and got[2].dtype == weight.dtype
    for a, b in zip(got, ref, strict=True):
        assert float((a - b).norm() / b.norm()) < 1e-2


def test_frozen_weight_and_all_ignored_targets():
    hidden, weight, targets = problem()
    h = hidden.clone().requires_grad_()
    linear_cross_entropy_chunked(h, weight, targets, chunk_size=8).backward()
    assert h.grad is not None and weight.grad is None
    h.grad = None
    loss = linear_cross_entropy_chunked(h, weight, torch.full_like(targets, -100), chunk_size=8)
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.count_nonzero(h.grad) == 0


def test_bad_chunk_size():
    hidden, weight, targets = problem()
    with pytest.raises(ValueError, match="chunk_size=0"):
        linear_cross_entropy_chunked(hidden, weight, targets, chunk_size=0)
