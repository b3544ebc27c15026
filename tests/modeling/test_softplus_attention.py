"""Softplus attention (`attention="lssa"/"lssar"`) in the decoder: cache, padding, training, save/load."""

import pytest
import torch
from transformers.cache_utils import DynamicCache

from plait.modeling import PlaitConfig, PlaitForCausalLM
from plait.modeling.softplus_attention import bool_attention_mask, degenerate_row_counters

TINY = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=16,
)
KINDS = ["lssa", "lssar"]


def make_model(attention, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = PlaitForCausalLM(PlaitConfig(**TINY, attention=attention, **kwargs))
    # Larger projections than the default init so the scores are far from uniform and LSSAR re-weights.
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mixer.q_proj.weight.normal_(0, 0.3)
            layer.mixer.k_proj.weight.normal_(0, 0.3)
    return model.eval()


@pytest.mark.parametrize("attention", KINDS)
def test_cached_decoding_beyond_training_length_equals_full_forward(attention):
    model = make_model(attention)
    ids = torch.randint(0, 128, (2, 30))  # longer than max_position_embeddings=16
    with torch.no_grad():
        full = model(input_ids=ids, use_cache=False).logits
        cache = DynamicCache(config=model.config)
        steps = [model(input_ids=ids[:, :5], past_key_values=cache, use_cache=True).logits]
        for t in range(5, 30):
            steps.append(model(input_ids=ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-4)
    generated = model.generate(ids[:, :6], max_new_tokens=10, do_sample=False)
    with torch.no_grad():
        greedy = model(input_ids=generated[:, :-1], use_cache=False).logits[:, 5:].argmax(-1)
    assert torch.equal(greedy, generated[:, 6:])


@pytest.mark.parametrize("attention", KINDS)
def test_padded_batch_counts_only_real_tokens(attention):
    model = make_model(attention, seed=1)
    ids = torch.randint(1, 128, (1, 9))
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), ids], 1)
    batch = torch.cat([padded, torch.randint(1, 128, (1, 13))])
    mask = torch.ones_like(batch)
    mask[0, :4] = 0
    with torch.no_grad():
        alone = model(input_ids=ids).logits
        together = model(input_ids=batch, attention_mask=mask).logits
    torch.testing.assert_close(together[0, 4:], alone[0], rtol=1e-4, atol=1e-4)


def test_mask_conversion_for_every_backend():
    causal = torch.ones(3, 5, dtype=torch.bool).tril(2)[None, None]
    additive = torch.zeros(1, 1, 3, 5).masked_fill(~causal, torch.finfo(torch.float32).min)
    assert torch.equal(bool_attention_mask(additive, 3, 5, "cpu"), causal)
    padding = torch.tensor([[0, 1, 1, 1, 1]])
    expected = causal.clone()
    expected[..., 0] = False
    assert torch.equal(bool_attention_mask(padding, 3, 5, "cpu"), expected)
    assert bool_attention_mask(None, 3, 3, "cpu") is None  # the kernels' own causal mask
    # transformers' None with fewer queries than keys (an empty static cache): causal from the first key
    assert torch.equal(
        bool_attention_mask(None, 3, 5, "cpu"), torch.ones(3, 5, dtype=torch.bool).tril()[None, None]
    )


def test_lssar_power_is_validated():
    with pytest.raises(ValueError, match="lssar_power=0.5"):
        PlaitConfig(**TINY, attention="lssar", lssar_power=0.5)


@pytest.mark.parametrize("attention", KINDS)
def test_trains_and_round_trips(attention, tmp_path):
    torch.manual_seed(0)
    model = PlaitForCausalLM(PlaitConfig(**TINY, attention=attention, lssar_power=15.0)).train()
    data = torch.randint(0, 128, (4, 24))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model(input_ids=data, labels=data).loss
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5
    model.save_pretrained(tmp_path)
    loaded = PlaitForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.attention == attention and loaded.config.lssar_power == 15.0
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=data).logits, model(input_ids=data).logits)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_model_with_large_activations_stays_finite(dtype):
    torch.manual_seed(0)
    model = PlaitForCausalLM(PlaitConfig(**TINY, attention="lssar", mlp_act="polynorm")).to(dtype)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(500)  # hidden states in the hundreds: x⁶ would overflow fp16
        for layer in model.model.layers:
            layer.mlp.up_proj.weight.mul_(20)
    data = torch.randint(0, 128, (2, 20))
    loss = model(input_ids=data, labels=data).loss
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_lssar_counts_degenerate_rows_of_training_forwards_while_recording():
    """Each LSSAR layer sums its degenerate rows and rows of attention over the training forwards while its
    counter records, and counts nothing otherwise; zero queries (layer 0) leave every row with N_i > 3 with
    equal scores, so 12 - 3 of the 12 rows of each sequence and head are degenerate."""
    assert degenerate_row_counters(make_model("lssa")) == []
    model = make_model("lssar").train()
    counters = degenerate_row_counters(model)
    assert len(counters) == 2 and degenerate_row_counters(model) == counters
    with torch.no_grad():
        model.model.layers[0].mixer.q_proj.weight.zero_()
    ids = torch.randint(0, 128, (2, 12))
    model(input_ids=ids)
    assert [c.take() for c in counters] == [None, None]  # not recording
    for counter in counters:
        counter.recording = True
    model(input_ids=ids)
    model(input_ids=ids)  # a second forward of the step (gradient accumulation)
    with torch.no_grad():
        model.eval()(input_ids=ids)  # not a training forward
    (zeroed, rows_0), (ordinary, rows_1) = (c.take() for c in counters)
    rows = 2 * 2 * 4 * 12  # forwards × batch × heads × rows
    assert (int(zeroed), int(rows_0)) == (2 * 2 * 4 * 9, rows)
    assert (int(ordinary), int(rows_1)) == (0, rows)
    assert [c.take() for c in counters] == [None, None]  # taken
