"""Plait without Triton (macOS, Windows, a CPU container without it): models build, train and generate through
the PyTorch references, and asking for a kernel says what is missing. Runs in a fresh interpreter, since this
one has imported triton already."""

import subprocess
import sys
import textwrap

import torch

from plait.kernels import backend

WITHOUT_TRITON = textwrap.dedent(
    """
    import importlib.abc, sys

    class HideTriton(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "triton" or name.startswith("triton."):
                raise ImportError(f"No module named {name!r} (hidden by the test)")

    sys.meta_path.insert(0, HideTriton())

    import torch
    from plait.kernels import backend
    from plait.kernels.polynorm import polynorm_triton
    from plait.modeling import PlaitConfig, PlaitForCausalLM

    assert not backend.HAS_TRITON and "triton" not in sys.modules
    torch.manual_seed(0)
    config = PlaitConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        residual="mhc", mlp_act="polynorm", attention="lssa", layer_types=["pararnn_gru", "full_attention"],
    )
    model = PlaitForCausalLM(config)
    ids = torch.randint(0, 64, (2, 8))
    model(ids, labels=ids).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    out = model.eval().generate(ids[:, :4], max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 7)
    try:
        polynorm_triton(torch.randn(2, 8), torch.ones(3), torch.zeros(1))
    except RuntimeError as error:
        assert "Triton is not installed" in str(error), error
    else:
        raise AssertionError("polynorm_triton ran without Triton")
    print("ok")
    """
)


def test_models_build_train_and_generate_without_triton():
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_TRITON], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


def test_dispatch_rule():
    cpu = torch.zeros(1)
    assert not backend.use_triton(cpu)  # the reference on CPU, interpreter or not
    assert backend.use_triton(torch.device("cuda")) == backend.HAS_TRITON
    assert backend.triton_runs_on(cpu) == backend.interpreting()
