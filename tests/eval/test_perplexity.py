"""Strided sliding-window perplexity scores every token once, with exactly the context its window gives."""

import math

import pytest
import torch

from plait.eval.perplexity import evaluate_loss, sliding_window_perplexity, windows
from plait.modeling import PlaitConfig, PlaitForCausalLM


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = PlaitConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
    )
    return PlaitForCausalLM(config).eval()


def per_token_reference(model, ids, context_length, stride):
    """Each token scored alone from the window that first predicts it (the definition, unbatched)."""
    total, count = 0.0, 0
    for begin, end, scored in windows(len(ids), context_length, stride):
        with torch.no_grad():
            logp = model(input_ids=ids[None, begin:end]).logits[0].log_softmax(-1)
        for target in range(end - scored, end):
            total -= logp[target - begin - 1, ids[target]].item()
            count += 1
    return total / count, count


@pytest.mark.parametrize("n, context, stride", [(50, 16, 16), (50, 16, 5), (50, 16, 1), (37, 64, 64)])
def test_sliding_window_matches_the_per_token_definition(model, n, context, stride):
    ids = torch.randint(0, 64, (n,))
    got = sliding_window_perplexity(model, ids, context, stride, batch_size=3, progress=False)
    expected, count = per_token_reference(model, ids, context, stride)
    assert got["tokens"] == count
    assert got["loss"] == pytest.approx(expected, rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)


def test_overlapping_windows_score_each_token_once():
    for n, context, stride in [(50, 16, 5), (50, 16, 1), (100, 32, 7)]:
        targets = [t for _, end, scored in windows(n, context, stride) for t in range(end - scored, end)]
        assert targets == list(range(1, n))


def test_one_window_equals_the_models_own_loss(model):
    ids = torch.randint(0, 64, (40,))
    with torch.no_grad():
        expected = model(input_ids=ids[None], labels=ids[None]).loss.item()
    got = sliding_window_perplexity(model, ids, 40, progress=False, n_bytes=100)
    assert got["loss"] == pytest.approx(expected, rel=1e-6)
    assert got["bits_per_byte"] == pytest.approx(expected * 39 / math.log(2) / 100, rel=1e-6)


def test_evaluate_loss_scores_each_block_on_its_own(model):
    from datasets import Dataset

    blocks = torch.randint(0, 64, (5, 12))
    with torch.no_grad():
        expected = sum(model(input_ids=b[None], labels=b[None]).loss.item() for b in blocks) / 5
    got = evaluate_loss(model, Dataset.from_dict({"input_ids": blocks.tolist()}), batch_size=2)
    assert got["loss"] == pytest.approx(expected, rel=1e-6)
    assert got["tokens"] == 5 * 11


def test_bad_arguments_are_named(model):
    with pytest.raises(ValueError, match="stride=20"):
        sliding_window_perplexity(model, torch.arange(30), 16, stride=20)
    with pytest.raises(ValueError, match="1-D"):
        sliding_window_perplexity(model, torch.zeros(2, 30, dtype=torch.long), 16)
