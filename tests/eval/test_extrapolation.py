"""Length extrapolation: the same tokens at every length; variants are the same weights, another config."""

import pytest
import torch

from plait.eval.extrapolation import length_extrapolation, with_config
from plait.eval.perplexity import sliding_window_perplexity
from plait.modeling import PlaitConfig, PlaitForCausalLM


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = PlaitConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
    )
    return PlaitForCausalLM(config).eval()


def test_with_config_switches_the_attention_formula_and_keeps_the_weights(model):
    switched = with_config(model, attention="lssar")
    assert switched.config.attention == "lssar" and model.config.attention == "softmax"
    for (name, a), (_, b) in zip(model.state_dict().items(), switched.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    ids = torch.randint(0, 64, (1, 16))
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits, switched(ids).logits)
    with pytest.raises(ValueError, match="valid choices"):
        with_config(model, attention="nope")
    with pytest.raises(ValueError, match="not fields"):
        with_config(model, not_a_field=1)


def test_each_length_scores_the_same_tokens(model):
    ids = torch.randint(0, 64, (200,))
    out = length_extrapolation(
        model,
        ids,
        8,
        (1, 2, 4),
        windows_at_longest=3,
        variants={"lssar": {"attention": "lssar"}},
        progress=False,
    )
    assert out["lengths"] == [8, 16, 32] and out["tokens"] == 96
    assert set(out["results"]) == {"as trained", "lssar"}
    for length in (8, 16, 32):
        expected = sliding_window_perplexity(model, ids[:96], length, progress=False)["loss"]
        assert out["results"]["as trained"][str(length)]["loss"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="need 384"):
        length_extrapolation(model, ids, 8, (1, 16), windows_at_longest=3)
