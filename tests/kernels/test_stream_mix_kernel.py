"""Fused Triton stream mixes against the PyTorch references (forward, every gradient), TRITON_INTERPRET=1."""

import pytest
import torch

from plait.kernels.stream_mix import (
    post_res_mix,
    post_res_mix_naive,
    post_res_mix_triton,
    pre_mix,
    pre_mix_naive,
    pre_mix_triton,
)


def leaves(*tensors):
    return [t.clone().requires_grad_() for t in tensors], [t.clone().requires_grad_() for t in tensors]


@pytest.mark.parametrize("n,c", [(4, 200), (3, 24)])
def test_pre_mix_matches_reference(n, c, device):
    torch.manual_seed(0)
    (xa, ha), (xb, hb) = leaves(torch.randn(2, 9, n, c, device=device), torch.randn(2, 9, n, device=device))
    out_a, out_b = pre_mix_triton(xa, ha), pre_mix_naive(xb, hb)
    torch.testing.assert_close(out_a, out_b, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(out_a)
    out_a.backward(g)
    out_b.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ha.grad, hb.grad, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("n,c", [(4, 200), (3, 24)])
def test_post_res_mix_matches_reference(n, c, device):
    torch.manual_seed(1)
    shapes = (2, 9, n, c), (2, 9, c), (2, 9, n), (2, 9, n, n)
    tensors = [torch.randn(*shape, device=device) for shape in shapes]
    a, b = leaves(*tensors)
    out_a, out_b = post_res_mix_triton(*a), post_res_mix_naive(*b)
    torch.testing.assert_close(out_a, out_b, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(out_a)
    out_a.backward(g)
    out_b.backward(g)
    for ta, tb in zip(a, b, strict=True):
        torch.testing.assert_close(ta.grad, tb.grad, atol=1e-4, rtol=1e-5)


def test_static_coefficients_broadcast_and_bf16_state(device):
    torch.manual_seed(2)
    x, y = torch.randn(2, 5, 4, 16, device=device).bfloat16(), torch.randn(2, 5, 16, device=device).bfloat16()
    h_pre, h_post, h_res = (torch.rand(*shape, device=device) for shape in ((4,), (4,), (4, 4)))
    torch.testing.assert_close(pre_mix_triton(x, h_pre), pre_mix_naive(x, h_pre))
    out = post_res_mix_triton(x, y, h_post, h_res)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, post_res_mix_naive(x, y, h_post, h_res))


def test_dispatchers_use_reference_on_cpu():
    x, h = torch.randn(3, 4, 8), torch.rand(3, 4)
    torch.testing.assert_close(pre_mix(x, h), pre_mix_naive(x, h), atol=0, rtol=0)
    y, hr = torch.randn(3, 8), torch.rand(3, 4, 4)
    torch.testing.assert_close(post_res_mix(x, y, h, hr), post_res_mix_naive(x, y, h, hr), atol=0, rtol=0)
