"""What transformers' common model tests (`ModelTesterMixin`, `GenerationTesterMixin`) check of a causal LM,
written for Plait and run on every LM variant, so CI catches the next drift between Plait and transformers.

Features absent by design are skipped by name (see `ABSENT`), never silently.
"""

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, StaticCache
from transformers.testing_utils import set_config_for_less_flaky_test

from plait.modeling import PlaitForCausalLM
from plait.modeling.transformers_compat import OUTPUT_CACHE_FIELD, output_cache

from .conftest import tiny_config

VARIANTS = {
    "baseline": {},
    "mhc": {"residual": "mhc"},
    "kromhc": {"residual": "kromhc"},
    "polynorm": {"mlp_act": "polynorm"},
    "lssar": {"attention": "lssar"},
    "pararnn_hybrid": {"layer_types": ["pararnn_gru", "full_attention"]},
    "jpmhc_bistochastic": {"residual": "jpmhc", "jpmhc_manifold": "bistochastic"},
}
# Features absent by design, skipped by name. A recurrent state cannot be rolled back to before rejected draft
# tokens (assisted decoding crops the cache); two components break torch.compile's graph (see
# `PlaitPreTrainedModel._can_compile_fullgraph`).
ABSENT = {
    ("pararnn_hybrid", "assisted_decoding"): "a ParaRNN state cannot be cropped back to a shorter prefix",
    ("pararnn_hybrid", "fullgraph_compile"): "the Newton solve calls torch.autograd.grad inside the forward",
    ("jpmhc_bistochastic", "fullgraph_compile"): "a convergence test decides the Newton step count",
}
GREEDY = dict(do_sample=False, pad_token_id=0, max_new_tokens=6)


def model_for(variant: str) -> PlaitForCausalLM:
    torch.manual_seed(0)
    return PlaitForCausalLM(tiny_config(**VARIANTS[variant])).eval()


def skip_if_absent(variant: str, feature: str) -> None:
    if (variant, feature) in ABSENT:
        pytest.skip(f"{feature} is absent by design for {variant}: {ABSENT[variant, feature]}")


def attention_layers(model) -> list[int]:
    return [i for i, kind in enumerate(model.config.layer_types) if kind == "full_attention"]


@pytest.fixture(params=list(VARIANTS))
def variant(request):
    return request.param


def test_attention_weights_for_every_attention_layer(variant):
    model = model_for(variant)
    ids = torch.randint(1, 128, (2, 9))
    out = model(ids, output_attentions=True)
    assert len(out.attentions) == model.config.num_hidden_layers
    heads = model.config.num_attention_heads
    for i, weights in enumerate(out.attentions):
        if i not in attention_layers(model):
            assert weights is None  # a recurrent layer has no attention matrix
            continue
        assert weights.shape == (2, heads, 9, 9)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, heads, 9))
        assert torch.all(weights.triu(1) == 0)  # causal
    # asking for the weights does not change the function computed
    torch.testing.assert_close(out.logits, model(ids).logits, rtol=1e-4, atol=1e-5)


def test_return_dict_false_gives_the_same_tuple(variant):
    model = model_for(variant)
    ids = torch.randint(1, 128, (2, 7))
    as_dict = model(ids, labels=ids, output_hidden_states=True)
    as_tuple = model(ids, labels=ids, output_hidden_states=True, return_dict=False)
    assert isinstance(as_tuple, tuple)
    expected = as_dict.to_tuple()
    assert len(as_tuple) == len(expected)
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    torch.testing.assert_close(as_tuple[1], as_dict.logits)


def test_hidden_states_are_batch_seq_hidden(variant):
    model = model_for(variant)
    ids = torch.randint(1, 128, (2, 7))
    out = model.model(ids, output_hidden_states=True)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    for hidden in out.hidden_states:
        assert hidden.shape == (2, 7, model.config.hidden_size)
    torch.testing.assert_close(out.hidden_states[0], model.model.embed_tokens(ids))
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state)


def test_cache_under_either_name(variant):
    model = model_for(variant)
    ids = torch.randint(1, 128, (1, 8))
    prefill = model(ids[:, :5], use_cache=True)
    legacy = model(ids[:, :5], use_cache=True)
    step_new = model(ids[:, 5:6], cache=output_cache(prefill), use_cache=True).logits
    step_old = model(ids[:, 5:6], past_key_values=output_cache(legacy), use_cache=True).logits
    torch.testing.assert_close(step_new, step_old)
    torch.testing.assert_close(step_new[:, -1], model(ids[:, :6]).logits[:, -1], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="passed twice"):
        model(ids, cache=output_cache(prefill), past_key_values=output_cache(legacy))


def test_old_cache_name_warns_exactly_as_llama_does():
    """From transformers 5.24 on the cache is `cache`; `past_key_values=` warns through the same decorator."""
    plait = model_for("baseline")
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
        )
    ).eval()
    ids = torch.randint(1, 128, (1, 5))
    messages = []
    for model in (plait, llama):
        prefill = model(ids[:, :4], use_cache=True)
        with pytest.warns(FutureWarning) as caught:
            model(ids[:, 4:], past_key_values=output_cache(prefill), use_cache=True)
        messages.append(str(caught[0].message).replace(type(model).__name__, "<Model>"))
    assert messages[0] == messages[1]
    assert messages[0].startswith("`past_key_values` is deprecated")


def test_eager_matches_sdpa_after_transformers_test_config(variant, tmp_path):
    """transformers' SDPA-vs-eager test: the norm epsilons set on the config, saved, reloaded per backend."""
    model = model_for(variant)
    set_config_for_less_flaky_test(model.config)
    model.save_pretrained(tmp_path)
    ids = torch.randint(1, 128, (2, 7))
    eager, sdpa = (
        AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation=name).eval()(ids).logits
        for name in ("eager", "sdpa")
    )
    torch.testing.assert_close(eager, sdpa, rtol=1e-4, atol=1e-5)


def test_greedy_generation_with_cache_equals_without(variant):
    model = model_for(variant)
    prompt = torch.randint(1, 128, (2, 5))
    assert torch.equal(
        model.generate(prompt, use_cache=True, **GREEDY), model.generate(prompt, use_cache=False, **GREEDY)
    )


def test_static_cache_generation_equals_dynamic(variant):
    model = model_for(variant)
    prompt = torch.randint(1, 128, (2, 5))
    dynamic = model.generate(prompt, **GREEDY)
    assert torch.equal(model.generate(prompt, cache_implementation="static", **GREEDY), dynamic)
    cache = StaticCache(config=model.config, max_cache_len=16)
    # a cache handed to `generate` under the installed transformers' name (`cache` from 5.24 on)
    assert torch.equal(model.generate(prompt, **{OUTPUT_CACHE_FIELD: cache}, **GREEDY), dynamic)


def test_left_padded_batch_generates_as_each_prompt_alone(variant):
    model = model_for(variant)
    long, short = torch.randint(1, 128, (1, 6)), torch.randint(1, 128, (1, 4))
    batch = torch.cat([long, torch.cat([torch.zeros(1, 2, dtype=torch.long), short], 1)])
    mask = torch.ones_like(batch)
    mask[1, :2] = 0
    together = model.generate(batch, attention_mask=mask, **GREEDY)
    assert torch.equal(together[0, 6:], model.generate(long, **GREEDY)[0, 6:])
    assert torch.equal(together[1, 6:], model.generate(short, **GREEDY)[0, 4:])


def test_generate_returns_scores_attentions_and_hidden_states(variant):
    model = model_for(variant)
    prompt = torch.randint(1, 128, (2, 5))
    out = model.generate(
        prompt,
        output_attentions=True,
        output_hidden_states=True,
        output_scores=True,
        return_dict_in_generate=True,
        **GREEDY,
    )
    steps = GREEDY["max_new_tokens"]
    assert len(out.scores) == len(out.attentions) == len(out.hidden_states) == steps
    layer = attention_layers(model)[0]
    assert out.attentions[0][layer].shape == (2, model.config.num_attention_heads, 5, 5)  # the prompt
    assert out.attentions[-1][layer].shape == (2, model.config.num_attention_heads, 1, 5 + steps - 1)
    assert torch.equal(out.sequences, model.generate(prompt, **GREEDY))


def test_assisted_decoding_equals_greedy(variant):
    skip_if_absent(variant, "assisted_decoding")
    model = model_for(variant)
    assistant = model_for("baseline")  # a different draft model: some drafts are rejected and cropped
    prompt = torch.randint(1, 128, (1, 5))
    assert torch.equal(
        model.generate(prompt, assistant_model=assistant, **GREEDY), model.generate(prompt, **GREEDY)
    )


def test_inputs_embeds_equal_input_ids(variant):
    model = model_for(variant)
    ids = torch.randint(1, 128, (2, 7))
    torch.testing.assert_close(model(inputs_embeds=model.model.embed_tokens(ids)).logits, model(ids).logits)


def test_save_load_and_resize_embeddings(variant, tmp_path):
    model = model_for(variant)
    ids = torch.randint(1, 128, (2, 7))
    model.save_pretrained(tmp_path)
    restored = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(restored(ids).logits, model(ids).logits)
    restored.resize_token_embeddings(140)
    assert restored(ids).logits.shape[-1] == 140


def test_gradient_checkpointing_gives_the_same_gradients(variant):
    ids = torch.randint(1, 128, (2, 7))
    grads = []
    for checkpointing in (False, True):
        model = model_for(variant).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(ids, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


def test_compiles_with_a_full_graph_where_it_says_so(variant):
    """`_can_compile_fullgraph` is declared per configuration: True exactly where the forward traces with no
    graph break (dynamo only, `backend="eager"`: a graph break raises under `fullgraph=True`)."""
    model = model_for(variant)
    ids = torch.randint(1, 128, (2, 7))
    assert model._can_compile_fullgraph == ((variant, "fullgraph_compile") not in ABSENT)
    skip_if_absent(variant, "fullgraph_compile")
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(ids).logits, model(ids).logits)
