"""Where Plait's Triton kernels run, in one place: the guarded `triton` import and the dispatch rule.

Every kernel module imports `triton` and `tl` from here, so `import plait.kernels.*` (and so
`import plait.modeling`) works where Triton is not installed (macOS, Windows, a CPU-only container): the
kernels are then defined but never launched, and every dispatcher takes the PyTorch reference.

The rule: **a fused Triton kernel runs on CUDA tensors when Triton is installed; the PyTorch reference runs
everywhere else.** Tests call the `*_triton` functions directly on CPU tensors under Triton's interpreter
(`TRITON_INTERPRET=1`, set before `triton` is imported, see `tests/conftest.py`); `triton_runs_on(x)` says
whether a kernel may be launched on `x` in this process.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:
    HAS_TRITON = False

    class _Absent:
        """Stands in for `triton` and `triton.language`: decorators return the function unchanged (so the
        kernel definitions import), anything else says Triton is missing when it is used."""

        def __init__(self, name: str):
            self._name = name

        def jit(self, fn=None, **kwargs):
            return fn if fn is not None else (lambda f: f)

        autotune = heuristics = lambda self, *args, **kwargs: lambda f: f  # noqa: E731

        def __getattr__(self, attr):
            return _Absent(f"{self._name}.{attr}")

        def __call__(self, *args, **kwargs):
            raise RuntimeError(f"{self._name} needs Triton, which is not installed (pip install triton)")

    triton = _Absent("triton")
    tl = _Absent("triton.language")


def interpreting() -> bool:
    """Triton's CPU interpreter is on (kernels launch on CPU tensors, slowly: for tests)."""
    return HAS_TRITON and os.environ.get("TRITON_INTERPRET") == "1"


def _device_type(x: torch.Tensor | torch.device | str) -> str:
    return x.device.type if isinstance(x, torch.Tensor) else torch.device(x).type


def use_triton(*on: torch.Tensor | torch.device | str) -> bool:
    """The dispatch rule: the fused kernel for CUDA tensors (or devices) when Triton is installed, else the
    PyTorch reference."""
    return HAS_TRITON and all(_device_type(x) == "cuda" for x in on)


def triton_runs_on(x: torch.Tensor | torch.device | str) -> bool:
    """A Triton kernel can be launched on `x` here: CUDA with Triton, or the interpreter on CPU."""
    return HAS_TRITON and (_device_type(x) == "cuda" or interpreting())


def dot_precision(dtype: torch.dtype) -> str:
    """`input_precision` for the kernels' `tl.dot`: on fp32 operands Triton defaults to TF32 (about 3e-4
    relative error), so fp32 runs IEEE products unless PyTorch's own matmuls are allowed TF32
    (`torch.backends.cuda.matmul.allow_tf32`); other dtypes keep Triton's default."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def require_triton(x: torch.Tensor | torch.device | str, what: str) -> None:
    """Raise a clear error when a `*_triton` function is called where no kernel can run."""
    if not triton_runs_on(x):
        reason = "Triton is not installed" if not HAS_TRITON else f"the tensors are on {_device_type(x)}"
        raise RuntimeError(f"{what} needs CUDA tensors and Triton (or TRITON_INTERPRET=1 on CPU): {reason}")


__all__ = [
    "HAS_TRITON",
    "dot_precision",
    "interpreting",
    "require_triton",
    "tl",
    "triton",
    "triton_runs_on",
    "use_triton",
]
