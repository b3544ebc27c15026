"""Packed documents (positions restarting at 0 inside a block) without a dense L×L mask: FlexAttention equals
SDPA with the block-diagonal mask, and LSSA/LSSAR read the document boundaries as segment ids, so the LM's
forward and backward build no [L, L] tensor (checked on every op's outputs with a dispatch hook)."""

import pytest
import torch
from torch.nn.attention.flex_attention import flex_attention
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import plait.kernels.lssa as lssa_kernels
from plait.kernels.lssa import segment_mask
from plait.modeling import PlaitForCausalLM

from .conftest import tiny_config

LENGTHS = (7, 20, 13)  # documents packed into one 40-token block
L = sum(LENGTHS)


def packed_batch():
    position_ids = torch.cat([torch.arange(n) for n in LENGTHS])[None].repeat(2, 1)
    segments = torch.repeat_interleave(torch.arange(len(LENGTHS)), torch.tensor(LENGTHS))[None].repeat(2, 1)
    return torch.randint(0, 128, (2, L)), position_ids, segment_mask(segments, L, causal=True)


class SquareShapes(TorchDispatchMode):
    """Records every op whose output has [L, L] as its last two dimensions."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(isinstance(t, torch.Tensor) and t.shape[-2:] == (L, L) for t in tree_leaves(out)):
            self.ops.append(str(func))
        return out


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_attention_equals_sdpa_with_the_dense_mask(monkeypatch):
    """The LM with attn_implementation="flex_attention" on a packed block (the block mask built from
    position_ids) equals SDPA with the dense block-diagonal mask. FlexAttention runs uncompiled here
    (torch's own reference of its semantics; on CPU it has no backward, so this is a forward check)."""
    import transformers.integrations.flex_attention as hf_flex

    monkeypatch.setattr(
        hf_flex,
        "compile_friendly_flex_attention",
        lambda q, k, v, training=False, **kw: flex_attention(q, k, v, **kw),
    )
    ids, position_ids, dense = packed_batch()
    model = PlaitForCausalLM(tiny_config()).eval()
    with torch.no_grad():
        sdpa = model(
            input_ids=ids,
            position_ids=position_ids,
            attention_mask=dense[:, :, None].squeeze(2),
            use_cache=False,
        )
        model.set_attn_implementation("flex_attention")
        flex = model(input_ids=ids, position_ids=position_ids, use_cache=False)
    torch.testing.assert_close(flex.logits, sdpa.logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attention", ["lssa", "lssar"])
def test_packed_lssa_kernels_build_no_square_tensor_and_match_the_dense_mask(attention, monkeypatch):
    """Forward + backward of the packed LM with the LSSA/LSSAR Triton kernels (interpreter) builds no [L, L]
    tensor, and its loss and every gradient equal the reference with the dense block-diagonal mask."""
    ids, position_ids, dense = packed_batch()
    model = PlaitForCausalLM(tiny_config(attention=attention, lssar_power=4.0))
    results = []
    for kernels, mask in ((False, dense), (True, None)):
        monkeypatch.setattr(lssa_kernels, "use_triton", lambda *tensors, on=kernels: on)
        model.zero_grad()
        with SquareShapes() as shapes:
            loss = model(
                input_ids=ids, position_ids=position_ids, attention_mask=mask, labels=ids, use_cache=False
            ).loss
            loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, shapes.ops))
    (ref_loss, ref_grads, ref_ops), (loss, grads, ops) = results
    assert ref_ops, "the dense-mask reference should show up as [L, L] tensors"
    assert ops == []
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=2e-4, atol=2e-5, msg=name)
