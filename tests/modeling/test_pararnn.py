"""ParaRNN mixers: Newton solvers equal the sequential loop (values and gradients), converge, and plug into
the LM (generate with cache, padding, hybrid training, save/load)."""

import pytest
import torch

from plait.modeling import PlaitConfig, PlaitForCausalLM
from plait.modeling.pararnn import pararnn


def _inputs(cell: str, T: int, seed: int = 0, batch: int = 2, D: int = 8):
    """ "Trained-like" inputs: unit-scale pre-activations u ~ N(0, 1) (what a trained in_proj produces on
    normalised inputs) and state weights / peepholes at their init scale, U(-0.5, 0.5)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, T, D, 3, generator=g).requires_grad_()
    params = [(torch.rand(3, D, generator=g) - 0.5).requires_grad_()]
    if cell == "lstm":
        params.append((torch.rand(2, D, generator=g) - 0.5).requires_grad_())
    h0 = torch.randn(batch, D, *((2,) if cell == "lstm" else ()), generator=g) * 0.5
    return u, params, h0.requires_grad_()


def _run(cell, mode, u, params, h0, weight):
    H, residual = pararnn(cell, u, params, h0=h0, mode=mode)
    grads = torch.autograd.grad((H * weight).sum(), [u, h0, *params])
    return H, grads, residual


# tolerance grows with length: fp32 error of the scan and of Newton's last step accumulate ~ eps * T
def _tol(T):
    return 2e-6 + 2e-7 * T


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize(
    "mode,T", [("parallel", 5), ("parallel", 64), ("parallel", 512), ("triton", 5), ("triton", 48)]
)
def test_newton_matches_sequential_outputs_and_gradients(cell, mode, T):
    u, params, h0 = _inputs(cell, T)
    weight = torch.randn(
        u.shape[:3] + ((2,) if cell == "lstm" else ()), generator=torch.Generator().manual_seed(9)
    )
    H_ref, grads_ref, _ = _run(cell, "sequential", u, params, h0, weight)
    H, grads, residual = _run(cell, mode, u, params, h0, weight)
    tol = _tol(T)
    torch.testing.assert_close(H, H_ref, atol=tol, rtol=0)
    for name, g, g_ref in zip(
        ["u", "h0", "state_weight", "peephole"][: len(grads)], grads, grads_ref, strict=True
    ):
        # parameter gradients sum over B*T terms: scale the tolerance by their magnitude
        torch.testing.assert_close(g, g_ref, atol=tol * (1 + g_ref.abs().max().item()), rtol=0, msg=name)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_newton_residual_below_1e5_with_default_iterations(cell):
    for seed in range(3):
        u, params, h0 = _inputs(cell, 1024, seed=seed)
        with torch.no_grad():
            _, residual = pararnn(cell, u, params, h0=h0, mode="parallel")  # default: 3 iterations
        assert residual.item() < 1e-5, (seed, residual.item())


def _tiny(layer_types, **kw):
    return PlaitConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=len(layer_types),
        num_attention_heads=4,
        num_key_value_heads=2,
        layer_types=layer_types,
        **kw,
    )


def test_config_validation_names_field():
    with pytest.raises(ValueError, match="pararnn_mode='fast'.*valid choices"):
        _tiny(["pararnn_gru"], pararnn_mode="fast")
    with pytest.raises(ValueError, match="pararnn_newton_iters=0"):
        _tiny(["pararnn_lstm"], pararnn_newton_iters=0)
    _tiny(["full_attention", "pararnn_gru"], pararnn_mode="sequential")  # attention-only models never check


HYBRIDS = [
    ["pararnn_gru", "pararnn_lstm"],
    ["pararnn_lstm", "full_attention"],
    ["full_attention", "pararnn_gru"],
]


@pytest.mark.parametrize("layer_types", HYBRIDS)
def test_generate_with_cache_matches_full_forward(layer_types):
    torch.manual_seed(0)
    model = PlaitForCausalLM(_tiny(layer_types)).eval()
    prompt = torch.randint(0, 128, (2, 6))
    out = model.generate(prompt, max_new_tokens=5, do_sample=False, min_new_tokens=5)
    assert out.shape == (2, 11)
    with torch.no_grad():
        logits_full = model(out, use_cache=False).logits
        # the cache's length drives positions: it must count tokens for pure-RNN and hybrid caches
        prefill = model(out[:, :6], use_cache=True)
        assert prefill.past_key_values.get_seq_length() == 6
        step = model(out[:, 6:7], past_key_values=prefill.past_key_values, use_cache=True)
    torch.testing.assert_close(step.logits[:, -1], logits_full[:, 6], atol=1e-4, rtol=1e-4)
    # greedy continuation is the argmax of the full forward at every generated position
    assert torch.equal(logits_full[:, 5:-1].argmax(-1), out[:, 6:])


@pytest.mark.parametrize("layer_types", [["pararnn_gru", "pararnn_lstm"], ["pararnn_lstm", "full_attention"]])
def test_left_padding_keeps_state(layer_types):
    torch.manual_seed(0)
    model = PlaitForCausalLM(_tiny(layer_types)).eval()
    ids = torch.randint(1, 128, (1, 5))
    padded = torch.cat((torch.zeros(1, 3, dtype=torch.long), ids), 1)
    mask = torch.cat((torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 5, dtype=torch.long)), 1)
    with torch.no_grad():
        alone = model(ids).logits
        left = model(padded, attention_mask=mask).logits[:, 3:]
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=1e-5)


def test_hybrid_trains_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = PlaitForCausalLM(_tiny(["pararnn_gru", "full_attention", "pararnn_lstm"]))
    data = torch.randint(0, 128, (4, 32))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = model(data, labels=data, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0, losses
    residuals = [
        layer.mixer.last_residual for layer in model.model.layers if hasattr(layer.mixer, "cell_name")
    ]
    assert all(r is not None and r.item() < 1e-4 for r in residuals), residuals
    model.save_pretrained(tmp_path)
    loaded = PlaitForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.layer_types == model.config.layer_types
    model.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(data).logits, model(data).logits)


def test_generate_left_padded_batch_matches_unpadded():
    torch.manual_seed(0)
    model = PlaitForCausalLM(_tiny(["pararnn_gru", "pararnn_lstm"], pad_token_id=0)).eval()
    short, long = torch.randint(1, 128, (1, 3)), torch.randint(1, 128, (1, 6))
    batch = torch.cat((torch.cat((torch.zeros(1, 3, dtype=torch.long), short), 1), long))
    mask = (batch != 0).long()
    mask[1] = 1
    out = model.generate(batch, attention_mask=mask, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    alone = model.generate(short, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert torch.equal(out[0, 6:], alone[0, 3:])


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("mode", ["parallel", "triton"])
def test_document_resets_match_sequential_outputs_and_gradients(cell, mode):
    u, params, h0 = _inputs(cell, 24)
    carry = torch.ones(2, 24, 1)
    carry[0, 7] = carry[0, 15] = carry[1, 3] = 0  # documents start there
    weight = torch.randn(u.shape[:3] + ((2,) if cell == "lstm" else ()))
    outs = []
    for m in ("sequential", mode):
        H, _ = pararnn(cell, u, params, h0=h0, mode=m, carry=carry)
        outs.append((H, torch.autograd.grad((H * weight).sum(), [u, h0, *params])))
    (H_ref, grads_ref), (H, grads) = outs
    torch.testing.assert_close(H, H_ref, atol=_tol(24), rtol=0)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, atol=_tol(24) * (1 + g_ref.abs().max().item()), rtol=0)


@pytest.mark.parametrize(
    "layer_types",
    [["pararnn_gru", "full_attention"], ["pararnn_gru", "pararnn_lstm"]],
    ids=["gru+attn", "gru+lstm"],
)
def test_packed_documents_do_not_leak_state(make_config, layer_types):
    """With packed blocks (position ids restarting per document, as `data.document_masking` builds them) a
    document's logits equal the document run alone, as for attention."""
    model = PlaitForCausalLM(make_config(layer_types=layer_types, pararnn_mode="parallel")).eval()
    first, second = torch.randint(0, 64, (1, 5)), torch.randint(0, 64, (1, 7))
    packed = torch.cat([first, second], 1)
    positions = torch.cat([torch.arange(5), torch.arange(7)])[None]
    together = model(packed, position_ids=positions, use_cache=False).logits
    torch.testing.assert_close(together[:, 5:], model(second, use_cache=False).logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(together[:, :5], model(first, use_cache=False).logits, rtol=1e-4, atol=1e-5)
