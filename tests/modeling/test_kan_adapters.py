"""KAN adapters (NeRA, S-KAN) through PEFT on a Plait LM, a tiny Llama and the real pretrained MiniLM-L6."""

import copy

import pytest
import torch
from peft import get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForCausalLM

from plait.eval.data_cache import path as data_path
from plait.kernels.kan_basis import kan_hat_naive
from plait.modeling import PlaitForCausalLM
from plait.modeling.adapters import (
    FAMILIES,
    KANConfig,
    KANLinear,
    NeRAPhi,
    SKANPhi,
    kan_modules,
    load_kan_adapter,
    skan_prune,
    skan_select,
)
from plait.modeling.adapters import skan as skan_module


def _plait(make_config):
    return PlaitForCausalLM(make_config()).eval(), ["q_proj", "v_proj", "down_proj"]


def _llama(_):
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config).eval(), ["q_proj", "v_proj", "down_proj"]


def _minilm(_):
    model = AutoModelForSequenceClassification.from_pretrained(str(data_path("minilm-l6")), num_labels=2)
    # A full-name regex (the last layer's FFN output.dense, not attention.output.dense); one layer: fast.
    return model.eval(), r".*layer\.5\.(attention\.self\.(query|value)|output\.dense)"


MODELS = {"plait": _plait, "llama": _llama, "minilm": _minilm}


def _ids(model):
    return torch.randint(5, min(model.config.vocab_size, 1000), (2, 12))


def _adapt(model, targets, kan, **kwargs):
    return get_peft_model(model, KANConfig(kan=kan, r=4, lora_alpha=8, target_modules=targets, **kwargs))


@pytest.mark.parametrize("kan", ["nera", "skan"])
@pytest.mark.parametrize("arch", list(MODELS))
def test_adapter_is_identity_at_init_then_trains(arch, kan, make_config):
    base, targets = MODELS[arch](make_config)
    ids = _ids(base)
    expected = base(ids).logits
    extra = {"modules_to_save": ["classifier"]} if arch == "minilm" else {}
    model = _adapt(copy.deepcopy(base), targets, kan, **extra).eval()
    assert torch.equal(model(ids).logits, expected)  # B = 0: the adapted model is the base model, exactly
    layers = [m for m in model.modules() if isinstance(m, KANLinear)]
    assert len(layers) == (3 if arch == "minilm" else 3 * base.config.num_hidden_layers)
    # Only the adapters train (and a classifier head PEFT keeps trainable when the task needs one).
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "classifier" in n for n in trainable)
    labels = torch.tensor([0, 1]) if arch == "minilm" else ids
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    phi, up = layers[0].lora_kan["default"], layers[0].lora_B["default"]
    steps = 10 if kan == "nera" else 1  # S-KAN's loss curve is tested through the trainer (test_finetune)
    losses = []  # eval mode: no dropout, so the loss curve is deterministic
    for _ in range(steps):
        loss = model(ids, labels=labels).loss
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in phi.parameters())
        assert up.weight.grad.abs().sum() > 0  # B = 0 but its gradient is not: the adapter leaves zero
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert steps == 1 or losses[-1] < losses[0]


def test_nera_matches_its_formula_and_counts_parameters(make_config):
    base, _ = _plait(make_config)
    model = _adapt(base, ["mixer.q_proj"], "nera", kan_grid_size=8, init_lora_weights=False)  # random B
    layer = next(m for m in model.modules() if isinstance(m, KANLinear))
    phi, up = layer.lora_kan["default"], layer.lora_B["default"]
    assert isinstance(phi, NeRAPhi) and isinstance(layer.lora_A["default"], torch.nn.Identity)
    torch.testing.assert_close(phi.knots[0], torch.linspace(-3, 3, 8))
    x = torch.randn(3, 64)
    spline = kan_hat_naive(x, phi.scale, phi.knots, phi.coeff)
    expected = layer.base_layer(x) + 8 / 4 * up(spline + torch.nn.functional.silu(x) @ phi.base_weight.T)
    torch.testing.assert_close(layer(x), expected)
    trainable, _ = model.get_nb_trainable_parameters()
    per_layer = 64 * 8 * 4 + 64 * 8 + 64 + 64 * 4 + 4 * 64  # coefficients, knots, scales, base branch, B
    assert trainable == 2 * per_layer


def test_targets_by_full_name_and_by_regex(make_config):
    base, _ = _plait(make_config)
    model = _adapt(copy.deepcopy(base), ["model.layers.1.mixer.q_proj"], "nera")
    names = [n for n, m in model.named_modules() if isinstance(m, KANLinear)]
    assert names == ["base_model.model.model.layers.1.mixer.q_proj"]
    model = _adapt(copy.deepcopy(base), r".*layers\.0\.mlp\.(up|down)_proj", "nera")
    names = [
        n.removeprefix("base_model.model.") for n, m in model.named_modules() if isinstance(m, KANLinear)
    ]
    assert names == ["model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj"]


@pytest.mark.parametrize("kan", ["nera", "skan"])
def test_save_load_round_trip_adapter_only(tmp_path, kan, make_config):
    base, targets = _plait(make_config)
    ids = _ids(base)
    model = _adapt(copy.deepcopy(base), targets, kan, init_lora_weights=False)
    for phi in kan_modules(model):
        phi.coeff.data.normal_()
    expected = model(ids).logits
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert saved and all("lora_" in k for k in saved)  # adapter weights only
    restored = load_kan_adapter(copy.deepcopy(base), tmp_path)
    torch.testing.assert_close(restored(ids).logits, expected, rtol=0, atol=0)
    assert not any(p.requires_grad for p in restored.parameters())  # inference by default
    trainable = load_kan_adapter(copy.deepcopy(base), tmp_path, is_trainable=True)
    assert trainable.get_nb_trainable_parameters()[0] == model.get_nb_trainable_parameters()[0]


def test_disable_multiple_adapters_merge_and_unload(tmp_path, make_config):
    base, targets = _plait(make_config)
    ids = _ids(base)
    expected = base(ids).logits
    model = _adapt(copy.deepcopy(base), targets, "nera", init_lora_weights=False)
    out_a = model(ids).logits
    assert not torch.equal(out_a, expected)
    with model.disable_adapter():
        assert torch.equal(model(ids).logits, expected)
    model.add_adapter("b", KANConfig(kan="skan", r=2, target_modules=["o_proj"], init_lora_weights=False))
    model.set_adapter("b")
    out_b = model(ids).logits
    assert not torch.equal(out_b, out_a) and not torch.equal(out_b, expected)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".b." in n for n in trainable)
    model.set_adapter("default")
    assert torch.equal(model(ids).logits, out_a)
    model.save_pretrained(tmp_path)  # both adapters, "b" in its own sub-folder
    restored = load_kan_adapter(load_kan_adapter(copy.deepcopy(base), tmp_path), tmp_path / "b", "b")
    restored.set_adapter("b")
    torch.testing.assert_close(restored(ids).logits, out_b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="cannot be merged"):
        model.merge_and_unload()
    unloaded = model.unload()
    assert not any(isinstance(m, KANLinear) for m in unloaded.modules())
    assert torch.equal(unloaded(ids).logits, expected)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="kan='lora'.*valid choices"):
        KANConfig(kan="lora", target_modules=["q_proj"])
    with pytest.raises(ValueError, match="kan_grid_size=1"):
        KANConfig(kan_grid_size=1, target_modules=["q_proj"])
    with pytest.raises(ValueError, match="kan_grid_range=nan"):
        KANConfig(kan_grid_range=float("nan"), target_modules=["q_proj"])
    with pytest.raises(ValueError, match="skan_families"):
        KANConfig(kan="skan", skan_families=["bspline", "fourier"], target_modules=["q_proj"])
    with pytest.raises(ValueError, match="init_lora_weights='pissa'"):
        KANConfig(init_lora_weights="pissa", target_modules=["q_proj"])
    with pytest.raises(ValueError, match="use_dora"):
        KANConfig(use_dora=True, target_modules=["q_proj"])


def test_skan_pool_has_four_families_with_distinct_bases():
    grid = torch.linspace(-3, 3, 6)
    u = torch.linspace(-2, 2, 5)
    values = [skan_module.basis(f, u, grid) for f in FAMILIES]
    assert len(FAMILIES) >= 4 and all(v.shape == (5, 6) for v in values)
    for i in range(len(values)):
        for j in range(i):
            assert not torch.allclose(values[i], values[j])
    # Cubic B-splines on a uniform grid sum to 1 inside it; T_k(tanh u) by recurrence is cos(k·acos(tanh u)).
    inner = skan_module.basis("bspline", torch.tensor([0.3]), torch.linspace(-6, 6, 13))
    torch.testing.assert_close(inner.sum(), torch.tensor(1.0))
    t = torch.tanh(u)
    cheb = torch.stack([torch.cos(k * torch.acos(t)) for k in range(6)], -1)
    torch.testing.assert_close(values[FAMILIES.index("chebyshev")], cheb, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_skan_custom_backward_equals_autograd_through_the_basis(family):
    torch.manual_seed(0)
    grid = torch.linspace(-3, 3, 8, dtype=torch.float64)
    u = (torch.randn(5, 7, 6, dtype=torch.float64) * 2.5).requires_grad_()  # inside, at and beyond the grid
    coeff = torch.randn(6, 8, 3, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(5, 7, 3, dtype=torch.float64)
    custom = skan_module._FamilyContraction.apply(family, u, grid, coeff)
    reference = skan_module.basis(family, u, grid).flatten(-2) @ coeff.flatten(0, 1)
    torch.testing.assert_close(custom, reference)
    for got, want in zip(
        torch.autograd.grad(custom, (u, coeff), grad),
        torch.autograd.grad(reference, (u, coeff), grad),
        strict=True,
    ):
        torch.testing.assert_close(got, want)


def test_skan_phi_gradients_equal_the_weighted_pool_formula():
    """Every gradient equals autograd through
    φ(x)_j = Σ_i Σ_f w[i,f] Σ_k c_f[i,k,j]·basis(s_i·x_i) + Σ_i w_b[j,i]·silu(x_i)."""
    torch.manual_seed(0)
    phi = SKANPhi(6, 3)
    with torch.no_grad():
        phi.logits.normal_()
        phi.coeff.normal_()
        phi.scale.uniform_(0.5, 1.5)
    x = (torch.randn(4, 5, 6) * 2).requires_grad_()
    params = (x, phi.scale, phi.logits, phi.coeff)
    got = torch.autograd.grad(phi(x).square().sum(), params)
    u = x * phi.scale
    w = phi.weights()
    reference = (
        sum(
            (skan_module.basis(f, u, phi.grid) * w[:, i, None]).flatten(-2) @ phi.coeff[i].flatten(0, 1)
            for i, f in enumerate(phi.families)
        )
        + torch.nn.functional.silu(x) @ phi.base_weight.T
    )
    want = torch.autograd.grad(reference.square().sum(), params)
    for g, r in zip(got, want, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


def test_skan_three_phases_prune_saves_smaller_and_computes_less(tmp_path, make_config, monkeypatch):
    base, targets = _plait(make_config)
    ids = _ids(base)
    model = _adapt(copy.deepcopy(base), targets, "skan", init_lora_weights=False)
    for phi in kan_modules(model):
        phi.logits.data.normal_()
        phi.coeff.data.normal_()
    model.save_pretrained(tmp_path / "pool")
    skan_select(model)  # phase 2: one family per node, weight 1
    phi = kan_modules(model)[0]
    assert (phi.active.sum(-1) == 1).all() and len(set(phi.active.float().argmax(-1).tolist())) > 1
    selected = model(ids).logits
    skan_prune(model)  # phase 3: exact after select
    assert phi.pruned and phi.coeff.shape == (64, 8, 4)
    torch.testing.assert_close(model(ids).logits, selected, rtol=1e-5, atol=1e-5)

    evaluated = []
    real_basis = skan_module.basis
    monkeypatch.setattr(
        skan_module, "basis", lambda f, u, g: evaluated.append(u.numel()) or real_basis(f, u, g)
    )
    phi(torch.randn(3, 64))
    assert sum(evaluated) == 3 * 64  # each node evaluates one family, not all four

    model.save_pretrained(tmp_path / "pruned")
    pool_bytes = (tmp_path / "pool" / "adapter_model.safetensors").stat().st_size
    pruned_bytes = (tmp_path / "pruned" / "adapter_model.safetensors").stat().st_size
    assert pruned_bytes < 0.4 * pool_bytes
    restored = load_kan_adapter(copy.deepcopy(base), tmp_path / "pruned")
    assert all(isinstance(p, SKANPhi) and p.pruned for p in kan_modules(restored))
    torch.testing.assert_close(restored(ids).logits, model(ids).logits, rtol=0, atol=0)
