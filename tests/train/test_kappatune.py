"""KappaTune: κ in fp32 (bf16 included), batched, cached by weights, lowest-κ selection, freezing, adapter
targets, and the distributed path (plain and FSDP2-sharded weights) agreeing with one process."""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from plait.modeling import PlaitConfig, PlaitForCausalLM
from plait.modeling.adapters import KANConfig, KANLinear
from plait.train import kappatune as kt


def _with_singular_values(linear: nn.Linear, sigma: list[float]) -> None:
    out_f, in_f = linear.weight.shape
    u, _ = torch.linalg.qr(torch.randn(out_f, out_f))
    v, _ = torch.linalg.qr(torch.randn(in_f, in_f))
    s = torch.zeros(out_f, in_f)
    s[range(len(sigma)), range(len(sigma))] = torch.tensor(sigma)
    linear.weight.data = u @ s @ v.T


def _lm():
    config = PlaitConfig(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return PlaitForCausalLM(config)


def test_kappa_is_sigma_max_over_sigma_min_and_batched_matches_single():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(3, 5))
    _with_singular_values(model[0], [6.0, 3.0, 2.0])
    _with_singular_values(model[1], [1.0, 1.0, 0.5])
    kappa = kt.condition_numbers(model)
    assert list(kappa) == ["0.weight", "1.weight", "2.weight"]  # ≥2-D only: no biases
    assert kappa["0.weight"] == pytest.approx(3.0, rel=1e-5)
    assert kappa["1.weight"] == pytest.approx(2.0, rel=1e-5)
    single = kt.condition_numbers(model, batch_size=1)
    assert single == pytest.approx(kappa, rel=1e-6)
    float64 = kt.condition_numbers(model, dtype=torch.float64)
    assert float64 == pytest.approx(kappa, rel=1e-4)
    zero = nn.Linear(3, 3)
    zero.weight.data.zero_()  # σ_max = σ_min = 0: ranked last, not NaN
    assert kt.condition_numbers(zero)["weight"] == float("inf")


def test_bf16_weights_are_ranked_in_fp32_not_skipped():
    model = _lm()
    expected = kt.condition_numbers(model.to(torch.bfloat16).float())
    got = kt.condition_numbers(model.to(torch.bfloat16))
    assert got.keys() == expected.keys() and len(got) == len(kt.matrices(model))
    assert got == pytest.approx(expected, rel=1e-5)


def test_cache_is_keyed_by_the_weights(tmp_path, monkeypatch):
    model, cache = _lm(), tmp_path / "kappa.json"
    first = kt.condition_numbers(model, cache=cache)
    calls = []
    real = torch.linalg.svdvals
    monkeypatch.setattr(torch.linalg, "svdvals", lambda x: calls.append(1) or real(x))
    assert kt.condition_numbers(model, cache=cache) == first and not calls  # read from the cache
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] += 1.0
    second = kt.condition_numbers(model, cache=cache)
    assert calls and second != first  # other weights, another key: recomputed, both kept
    assert len(json.loads(cache.read_text())) == 2
    calls.clear()
    small = kt.condition_numbers(model, cache=tmp_path / "small.json", max_dim=64)  # no embedding / LM head
    assert calls and set(small) == {n for n, s in kt.matrices(model).items() if max(s) <= 64}
    calls.clear()
    assert kt.condition_numbers(model, cache=tmp_path / "small.json") == second  # computes only the rest
    assert len(calls) == 1  # one batched call: the two [256, 32] tables


def test_selection_is_lowest_kappa_deterministic_with_budgets_and_exclusions():
    model = _lm()
    kappa = kt.condition_numbers(model)
    picked = kt.select_lowest_kappa(model, kappa, count=3)
    ranked = sorted(kappa, key=lambda n: (kappa[n], n))
    assert picked == ranked[:3]
    tied = dict.fromkeys(kappa, 1.0)
    assert kt.select_lowest_kappa(model, tied, count=4) == sorted(kappa)[:4]  # ties: by name
    no_embed = kt.select_lowest_kappa(model, kappa, count=100, max_dim=128)
    assert "model.embed_tokens.weight" in kappa and "model.embed_tokens.weight" not in no_embed
    assert all(max(kt.matrices(model)[n]) <= 128 for n in no_embed)
    total = sum(p.numel() for p in model.parameters())
    by_fraction = kt.select_lowest_kappa(model, kappa, fraction=0.1, max_dim=128)
    size = sum(dict(model.named_parameters())[n].numel() for n in by_fraction)
    assert 0 < size <= 0.1 * total
    with pytest.raises(ValueError, match="exactly one budget"):
        kt.select_lowest_kappa(model, kappa, count=2, fraction=0.5)
    with pytest.raises(ValueError, match="fraction=1.5"):
        kt.select_lowest_kappa(model, kappa, fraction=1.5)


def test_freezing_trains_only_the_selected_tensors():
    model = _lm()
    names = kt.select_lowest_kappa(model, kt.condition_numbers(model), count=4, max_dim=128)
    n = kt.freeze_all_but(model, names)
    assert {k for k, p in model.named_parameters() if p.requires_grad} == set(names)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, 256, (2, 16))
    model(ids, labels=ids).loss.backward()
    opt.step()
    changed = {k for k, p in model.named_parameters() if not torch.equal(p, before[k])}
    assert changed == set(names) and n == sum(before[k].numel() for k in names)


def _llama():
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config)


@pytest.mark.parametrize("adapter", ["lora", "kan"])
@pytest.mark.parametrize("make_model", [_lm, _llama], ids=["plait", "llama"])
def test_selected_modules_become_adapter_targets(adapter, make_model):
    model = make_model()
    names = kt.select_lowest_kappa(model, kt.condition_numbers(model), count=3, linear_only=True)
    targets = kt.module_targets(names)
    config = (LoraConfig if adapter == "lora" else KANConfig)(r=2, target_modules=targets)
    peft_model = get_peft_model(model, config)
    wrapped = sorted(
        n.removeprefix("base_model.model.")
        for n, m in peft_model.named_modules()
        if hasattr(m, "lora_B") and hasattr(m, "base_layer")
    )
    assert wrapped == sorted(targets)
    assert adapter == "lora" or all(
        isinstance(peft_model.get_submodule(f"base_model.model.{t}"), KANLinear) for t in targets
    )
    with pytest.raises(ValueError, match="not module weights"):
        kt.module_targets(["model.norm.bias"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _distributed_worker(rank, port, cache, queue):
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = _lm()
        replicated = kt.condition_numbers(model, cache=cache, batch_size=3)
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        assert any(hasattr(p, "full_tensor") for p in model.parameters())
        sharded = kt.condition_numbers(model, batch_size=3)
        queue.put((rank, replicated, sharded))
    finally:
        dist.destroy_process_group()


def test_distributed_ranks_agree_with_one_process_replicated_and_fsdp2_sharded(tmp_path):
    torch.manual_seed(0)
    expected = kt.condition_numbers(_lm())
    queue = mp.get_context("spawn").Queue()
    args = (_free_port(), str(tmp_path / "k.json"), queue)
    mp.start_processes(_distributed_worker, args=args, nprocs=2, start_method="spawn")
    results = {
        rank: (replicated, sharded) for rank, replicated, sharded in (queue.get(timeout=60) for _ in range(2))
    }
    for rank in (0, 1):
        for kappa in results[rank]:
            assert kappa == pytest.approx(expected, rel=1e-5)
    assert (tmp_path / "k.json").is_file()  # rank 0 wrote the cache
