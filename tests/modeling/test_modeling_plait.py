import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from plait.modeling import PlaitConfig, PlaitForCausalLM, PlaitModel
from plait.modeling.convert_llama import plait_from_llama


@pytest.mark.parametrize("mlp_act", ["swiglu", "gelu", "relu", "relu2"])
def test_save_load_round_trip_gives_identical_logits(tmp_path, make_config, mlp_act):
    model = PlaitForCausalLM(make_config(mlp_act=mlp_act)).eval()
    ids = torch.randint(0, 128, (2, 16))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert isinstance(AutoConfig.from_pretrained(tmp_path), PlaitConfig)
    restored = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(restored, PlaitForCausalLM)
    assert torch.equal(model(ids).logits, restored(ids).logits)
    assert isinstance(AutoModel.from_pretrained(tmp_path), PlaitModel)


def test_tied_embeddings_stay_tied_after_reload(tmp_path, make_config):
    model = PlaitForCausalLM(make_config(tie_word_embeddings=True))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model.save_pretrained(tmp_path)
    restored = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert restored.lm_head.weight is restored.model.embed_tokens.weight
    assert torch.equal(restored.lm_head.weight, model.lm_head.weight)


def test_labels_give_shifted_cross_entropy(make_config):
    model = PlaitForCausalLM(make_config())
    ids = torch.randint(0, 128, (2, 12))
    labels = ids.clone()
    labels[0, :3] = -100
    out = model(ids, labels=labels)
    logits = out.logits[:, :-1].reshape(-1, 128)
    expected = torch.nn.functional.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("tie, z_loss", [(False, 0.0), (True, 0.0), (False, 1e-2)])
@pytest.mark.parametrize("num_items", [None, 13])
def test_chunked_loss_equals_the_logits_loss_and_gradients(make_config, tie, num_items, z_loss):
    model = PlaitForCausalLM(make_config(tie_word_embeddings=tie, z_loss=z_loss)).train()
    ids = torch.randint(0, 128, (3, 11))
    labels = ids.clone()
    labels[1, :4] = -100
    extra = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
    results = []
    for chunk in (None, 5):
        model.config.loss_chunk_size = chunk
        model.zero_grad()
        out = model(ids, labels=labels, **extra)
        out.loss.backward()
        results.append((out, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (plain, plain_grads), (chunked, chunked_grads) = results
    assert chunked.logits is None  # the point: no [tokens, vocab] tensor
    torch.testing.assert_close(chunked.loss, plain.loss)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    model.eval()  # evaluation keeps the logits (perplexity, generation)
    evaluated = model(ids, labels=labels)
    assert evaluated.logits.shape == (3, 11, 128)
    if z_loss:  # the z-loss trains; evaluation reports the plain cross-entropy
        assert evaluated.loss < plain.loss


def test_chunked_loss_traces_with_a_full_graph(make_config):
    model = PlaitForCausalLM(make_config(loss_chunk_size=8)).train()
    ids = torch.randint(0, 128, (2, 9))
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(ids, labels=ids).loss, model(ids, labels=ids).loss)


@pytest.mark.parametrize("num_key_value_heads", [4, 2, 1])
def test_greedy_generate_with_cache_equals_without(make_config, num_key_value_heads):
    model = PlaitForCausalLM(make_config(num_key_value_heads=num_key_value_heads)).eval()
    prompt = torch.randint(0, 128, (2, 7))
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    with_cache = model.generate(prompt, use_cache=True, **kwargs)
    without_cache = model.generate(prompt, use_cache=False, **kwargs)
    assert with_cache.shape == (2, 19)
    assert torch.equal(with_cache, without_cache)


def test_incremental_decoding_matches_full_forward(make_config):
    model = PlaitForCausalLM(make_config()).eval()
    ids = torch.randint(0, 128, (1, 10))
    full = model(ids).logits
    out = model(ids[:, :6], use_cache=True)
    steps = [out.logits]
    cache = out.past_key_values
    for t in range(6, 10):
        out = model(ids[:, t : t + 1], past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_left_padded_batch_matches_each_sequence_alone(make_config):
    model = PlaitForCausalLM(make_config()).eval()
    long, short = torch.randint(1, 128, (1, 11)), torch.randint(1, 128, (1, 6))
    pad = torch.zeros(1, 5, dtype=torch.long)
    batch = torch.cat([long, torch.cat([pad, short], dim=1)])
    mask = torch.ones_like(batch)
    mask[1, :5] = 0
    batched = model(batch, attention_mask=mask).logits[:, -1]
    torch.testing.assert_close(batched[0], model(long).logits[0, -1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched[1], model(short).logits[0, -1], atol=1e-5, rtol=1e-5)
    # ...and generation continues each sequence as it would alone.
    generated = model.generate(batch, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    alone = model.generate(short, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(generated[1, -5:], alone[0, -5:])


def test_gradient_checkpointing_gives_the_same_gradients(make_config):
    model = PlaitForCausalLM(make_config(num_hidden_layers=3)).train()
    ids = torch.randint(0, 128, (2, 16))

    def gradients():
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    reference = gradients()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.model.gradient_checkpointing
    checkpointed = gradients()
    for name, grad in reference.items():
        torch.testing.assert_close(checkpointed[name], grad, msg=name)


def test_output_hidden_states_has_one_entry_per_layer_plus_embedding(make_config):
    model = PlaitForCausalLM(make_config(num_hidden_layers=3)).eval()
    out = model(torch.randint(0, 128, (1, 5)), output_hidden_states=True)
    assert len(out.hidden_states) == 4
    assert all(h.shape == (1, 5, 64) for h in out.hidden_states)


def test_resize_token_embeddings(make_config):
    model = PlaitForCausalLM(make_config(tie_word_embeddings=True))
    model.resize_token_embeddings(150)
    assert model.config.vocab_size == 150
    assert model.lm_head.weight.shape == (150, 64)
    assert model(torch.tensor([[149, 3]])).logits.shape == (1, 2, 150)


@pytest.mark.parametrize("tie", [False, True])
def test_baseline_with_llama_weights_gives_llama_logits(tie):
    llama_config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tie,
        rope_parameters={"rope_type": "default", "rope_theta": 5000.0},
    )
    llama = LlamaForCausalLM(llama_config).eval()
    plait = plait_from_llama(llama).eval()
    ids = torch.randint(0, 128, (2, 20))
    mask = torch.ones_like(ids)
    torch.testing.assert_close(plait(ids).logits, llama(ids).logits, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(
        plait(ids, attention_mask=mask).logits, llama(ids, attention_mask=mask).logits, atol=1e-6, rtol=1e-6
    )


def test_short_training_run_lowers_the_loss(make_config):
    model = PlaitForCausalLM(make_config()).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    # A learnable stream: each sequence counts up modulo the vocabulary from a random start.
    starts = torch.randint(0, 128, (8, 1))
    ids = (starts + torch.arange(32)) % 128
    losses = []
    for _ in range(30):
        loss = model(ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
