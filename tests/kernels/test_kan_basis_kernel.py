"""KAN hat basis × coefficients: reference against a hand loop, fused Triton kernel (interpreter on CPU)
against the reference, forward and every gradient."""

import pytest
import torch

from plait.kernels.kan_basis import kan_hat, kan_hat_naive, kan_hat_triton


def test_reference_matches_explicit_loop():
    x = torch.randn(3, 4)
    scale, knots, coeff = torch.rand(4) + 0.5, torch.randn(4, 5), torch.randn(4, 5, 2)
    expected = torch.zeros(3, 2)
    for n in range(3):
        for i in range(4):
            for k in range(5):
                hat = max(0.0, 1 - abs(scale[i].item() * x[n, i].item() - knots[i, k].item()))
                expected[n] += hat * coeff[i, k]
    torch.testing.assert_close(kan_hat_naive(x, scale, knots, coeff), expected)


def test_dispatcher_uses_reference_on_cpu():
    x, s, t, c = torch.randn(2, 3), torch.ones(3), torch.randn(3, 4), torch.randn(3, 4, 5)
    torch.testing.assert_close(kan_hat(x, s, t, c), kan_hat_naive(x, s, t, c), rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(2, 5, 24, 3, 4), (37, 70, 8, 20)])  # (*lead, D, K, R): padded D, N and R
def test_triton_forward_and_gradients_match_reference(shape, device):
    *lead, d, k, r = shape
    x = torch.randn(*lead, d, device=device) * 2
    scale = torch.rand(d, device=device) + 0.5
    knots = torch.linspace(-3, 3, k, device=device).repeat(d, 1) + 0.05 * torch.randn(d, k, device=device)
    coeff = torch.randn(d, k, r, device=device)
    grad = torch.randn(*lead, r, device=device)
    results = []
    for fn in (kan_hat_naive, kan_hat_triton):
        inputs = [t.clone().requires_grad_() for t in (x, scale, knots, coeff)]
        z = fn(*inputs)
        z.backward(grad)
        results.append((z.detach(), *(t.grad for t in inputs)))
    for name, ref, got in zip(("z", "dx", "dscale", "dknots", "dcoeff"), *results, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4, msg=lambda m, name=name: f"{name}: {m}")
