"""Linear-scan solvers (ParaRNN's inner solve): parallel and Triton equal the sequential loop."""

import pytest
import torch

from plait.kernels.linear_scan import (
    linear_scan,
    linear_scan_parallel,
    linear_scan_sequential,
    linear_scan_triton,
)


def _system(block: bool, T: int, seed: int = 0, device: str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    if block:  # 2×2 per channel with spectral radius < 1 (entries in [-0.45, 0.45])
        A = (torch.rand(2, T, 6, 2, 2, generator=g) - 0.5) * 0.9
        b = torch.randn(2, T, 6, 2, generator=g)
    else:  # diagonal, negative entries included (the ParaGRU Jacobian can be negative)
        A = torch.rand(2, T, 6, generator=g) * 1.9 - 0.95
        b = torch.randn(2, T, 6, generator=g)
    return A.to(device), b.to(device)


@pytest.mark.parametrize("block", [False, True])
@pytest.mark.parametrize("T", [1, 7, 64, 301])
@pytest.mark.parametrize("reverse", [False, True])
def test_parallel_matches_sequential(block, T, reverse):
    A, b = _system(block, T)
    ref = linear_scan_sequential(A, b, reverse=reverse)
    torch.testing.assert_close(linear_scan_parallel(A, b, reverse=reverse), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("block", [False, True])
@pytest.mark.parametrize("T,block_t", [(1, None), (13, None), (40, 16)])  # block_t < T: chunked
@pytest.mark.parametrize("reverse", [False, True])
def test_triton_matches_sequential(block, T, block_t, reverse, device):
    A, b = _system(block, T, seed=1, device=device)
    ref = linear_scan_sequential(A, b, reverse=reverse)
    out = linear_scan_triton(A, b, reverse=reverse, block_t=block_t, block_d=4)  # 6 channels: a partial block
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_dispatch_and_bad_mode():
    A, b = _system(False, 5)
    torch.testing.assert_close(linear_scan(A, b, "auto"), linear_scan_sequential(A, b))  # CPU: parallel
    with pytest.raises(ValueError, match="mode='fast'.*valid choices"):
        linear_scan(A, b, "fast")
    with pytest.raises(ValueError, match="must equal b"):
        linear_scan(A[..., :3], b)
