"""PolyNorm: reference against hand-computed values, fused Triton kernel (interpreter on CPU) against it."""

import math

import pytest
import torch

from plait.kernels.polynorm import polynorm, polynorm_naive, polynorm_triton


def test_reference_matches_hand_computed_values():
    x = torch.tensor([[1.0, -2.0, 0.5]])
    weight, bias = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([0.25])
    expected = []
    for xi in x[0].tolist():
        terms = []
        for power in (3, 2, 1):
            ms = sum(v ** (2 * power) for v in x[0].tolist()) / 3
            terms.append(xi**power / math.sqrt(ms + 1e-6))
        expected.append(0.5 * terms[0] - 1.0 * terms[1] + 2.0 * terms[2] + 0.25)
    torch.testing.assert_close(polynorm_naive(x, weight, bias), torch.tensor([expected]))


def test_dispatcher_uses_reference_on_cpu():
    x = torch.randn(2, 5)
    w, b = torch.rand(3), torch.rand(1)
    torch.testing.assert_close(polynorm(x, w, b), polynorm_naive(x, w, b), rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(5, 37), (2, 3, 64)])
def test_triton_forward_and_gradients_match_reference(shape, device):
    torch.manual_seed(0)
    x = torch.randn(*shape, device=device)
    weight, bias = torch.tensor([0.3, -0.2, 0.7], device=device), torch.tensor([0.1], device=device)
    grad = torch.randn(*shape, device=device)
    results = []
    for fn in (polynorm_naive, polynorm_triton):
        xi, wi, bi = (t.clone().requires_grad_() for t in (x, weight, bias))
        y = fn(xi, wi, bi)
        y.backward(grad)
        results.append((y.detach(), xi.grad, wi.grad, bi.grad))
    for ref, got in zip(*results, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fn", [polynorm_naive, polynorm_triton])
def test_half_precision_large_activations_stay_finite(fn, dtype, device):
    # |x| = 40: x^6 ≈ 4e9 overflows fp16 (max 65504); the fp32 row sums must keep the output finite.
    x = (torch.randn(4, 33, device=device) * 40).to(dtype).requires_grad_()
    w = torch.full((3,), 1 / 3, device=device, requires_grad=True)
    b = torch.zeros(1, device=device, requires_grad=True)
    y = fn(x, w, b)
    assert y.dtype == dtype and torch.isfinite(y).all()
    ref = polynorm_naive(x.detach().float(), w.detach(), b.detach())
    torch.testing.assert_close(y.float(), ref, rtol=2e-2, atol=2e-2)
    y.float().sum().backward()
    assert torch.isfinite(x.grad.float()).all() and torch.isfinite(w.grad).all()
