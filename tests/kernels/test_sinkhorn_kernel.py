"""Fused Triton Sinkhorn against the PyTorch reference (forward and gradient), TRITON_INTERPRET=1 on CPU."""

import pytest
import torch

from plait.kernels.sinkhorn import sinkhorn, sinkhorn_naive, sinkhorn_triton


@pytest.mark.parametrize("n,iters", [(4, 5), (3, 3), (1, 2)])
def test_triton_sinkhorn_matches_reference(n, iters, device):
    torch.manual_seed(n)
    logits = torch.randn(2, 9, n, n, device=device) * 2
    logits[0, 0] = torch.where(torch.eye(n, dtype=torch.bool, device=device), 0.0, -8.0)  # identity-leaning
    weight = torch.randn(2, 9, n, n, device=device)
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    pa, pb = sinkhorn_triton(a, iters), sinkhorn_naive(b, iters)
    torch.testing.assert_close(pa, pb, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        pa.sum(-1), torch.ones(2, 9, n, device=device), atol=1e-5, rtol=0
    )  # rows end the iteration
    (pa * weight).sum().backward()
    (pb * weight).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4)


def test_dispatcher_uses_reference_on_cpu():
    logits = torch.randn(5, 4, 4)
    torch.testing.assert_close(sinkhorn(logits, 20), sinkhorn_naive(logits, 20), atol=0, rtol=0)


def test_log_domain_survives_wide_logits(device):
    logits = torch.tensor([[0.0, -200.0], [-200.0, 0.0]], device=device).requires_grad_()
    p = sinkhorn_naive(logits, 20)
    assert torch.isfinite(p).all() and torch.isfinite(torch.autograd.grad(p[0, 0], logits)[0]).all()
    torch.testing.assert_close(sinkhorn_triton(logits.detach(), 20), p.detach())
