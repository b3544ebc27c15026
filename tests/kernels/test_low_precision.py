"""Every kernel in bf16 and fp16 against its fp32 reference on the upcast inputs, forward and every gradient,
measured as ‖got − ref‖ / ‖ref‖ (bf16 operands land between 1e-3 and 1e-2). On CUDA the shapes are large
enough to span several program tiles of the real block sizes (the interpreter's blocks are smaller)."""

import pytest
import torch

from plait.kernels.kan_basis import kan_hat_naive, kan_hat_triton
from plait.kernels.lssa import lssa_naive, lssa_triton
from plait.kernels.polynorm import polynorm_naive, polynorm_triton
from plait.kernels.stream_mix import post_res_mix_naive, post_res_mix_triton, pre_mix_naive, pre_mix_triton

DTYPES = [torch.bfloat16, torch.float16]
TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 4e-3}


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.detach().double(), ref.detach().double()
    return float((got - ref).norm() / ref.norm().clamp_min(1e-30))


def check_against_fp32(triton_fn, naive_fn, low_inputs):
    """Run `triton_fn` on `low_inputs` (each tensor a leaf) and `naive_fn` on their fp32 upcasts; compare the
    output and every input gradient by relative norm."""
    dtype = next(t.dtype for t in low_inputs if t.dtype != torch.float32)
    tol = TOLERANCE[dtype]
    low = [t.detach().clone().requires_grad_() for t in low_inputs]
    ref = [t.detach().float().clone().requires_grad_() for t in low_inputs]
    out = triton_fn(*low)
    expected = naive_fn(*ref)
    assert out.dtype == dtype and torch.isfinite(out).all()
    grad = torch.randn_like(out)  # one gradient for both, already rounded to the low precision
    out.backward(grad)
    expected.backward(grad.float())
    errors = {"out": relative_error(out, expected)}
    errors.update(
        {f"d{i}": relative_error(a.grad, b.grad) for i, (a, b) in enumerate(zip(low, ref, strict=True))}
    )
    assert all(error < tol for error in errors.values()), errors


@pytest.mark.parametrize("dtype", DTYPES)
def test_polynorm(dtype, device):
    rows, cols = (1031, 4096) if device == "cuda" else (9, 100)
    x = torch.randn(rows, cols, device=device).to(dtype)
    w = torch.tensor([0.3, -0.2, 0.7], device=device)
    b = torch.tensor([0.1], device=device)
    check_against_fp32(polynorm_triton, polynorm_naive, [x, w, b])


@pytest.mark.parametrize("reweight", [False, True], ids=["lssa", "lssar"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", DTYPES)
def test_lssa(dtype, head_dim, causal, reweight, device, skip_interpreted_bf16_dot):
    skip_interpreted_bf16_dot(dtype)
    if device != "cuda" and head_dim == 128:
        pytest.skip("the interpreter covers head_dim 64; 128 is checked on CUDA")
    length = 333 if device == "cuda" else 37
    q, k, v = (torch.randn(2, 3, length, head_dim, device=device).to(dtype) for _ in range(3))
    power = 4.0 if reweight else 15.0

    def triton_fn(q, k, v):
        return lssa_triton(q, k, v, reweight=reweight, power=power, causal=causal)

    def naive_fn(q, k, v):
        return lssa_naive(q, k, v, reweight=reweight, power=power, causal=causal)

    check_against_fp32(triton_fn, naive_fn, [q, k, v])


@pytest.mark.parametrize("dtype", DTYPES)
def test_stream_mix(dtype, device):
    tokens, n, c = (777, 4, 1000) if device == "cuda" else (9, 4, 40)
    x = torch.randn(tokens, n, c, device=device).to(dtype)
    y = torch.randn(tokens, c, device=device).to(dtype)
    h_pre, h_post = torch.rand(tokens, n, device=device), torch.rand(tokens, n, device=device)
    h_res = torch.rand(tokens, n, n, device=device)
    check_against_fp32(pre_mix_triton, pre_mix_naive, [x, h_pre])
    check_against_fp32(post_res_mix_triton, post_res_mix_naive, [x, y, h_post, h_res])


@pytest.mark.parametrize("dtype", DTYPES)
def test_kan_basis(dtype, device):
    tokens, d, k, r = (1000, 96, 8, 40) if device == "cuda" else (20, 24, 5, 16)
    x = (torch.randn(tokens, d, device=device) * 2).to(dtype)
    scale = torch.rand(d, device=device) + 0.5
    knots = torch.linspace(-3, 3, k, device=device).repeat(d, 1) + 0.05 * torch.randn(d, k, device=device)
    coeff = torch.randn(d, k, r, device=device)
    check_against_fp32(kan_hat_triton, kan_hat_naive, [x, scale, knots, coeff])
