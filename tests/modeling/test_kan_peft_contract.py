"""PEFT's adapter contract on the KAN layers (NeRA, S-KAN), checked the way PEFT's own tests check a LoRA
layer: PEFT's standard loaders rebuild a saved KAN adapter exactly (real MiniLM, Plait LM) or refuse it;
`delete_adapter`, mixed-adapter batches, gradient checkpointing; KAN's answer to inputs beyond the grid."""

import copy
import json

import pytest
import torch
from peft import AutoPeftModelForCausalLM, AutoPeftModelForSequenceClassification, PeftModel, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from torch.nn import functional as F
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from plait.eval.data_cache import path as data_path
from plait.modeling import PlaitForCausalLM
from plait.modeling.adapters import KANConfig, KANLinear, kan_modules, load_kan_adapter
from plait.modeling.adapters.peft_kan import KAN_PEFT_TYPE, build_phi

MINILM_TARGETS = r".*layer\.5\.(attention\.self\.(query|value)|output\.dense)"
PLAIT_TARGETS = ["q_proj", "v_proj", "down_proj"]


def _minilm():
    # The SST-2 head is new: each load draws another classifier, which `modules_to_save` must restore.
    return AutoModelForSequenceClassification.from_pretrained(
        str(data_path("minilm-l6")), num_labels=2
    ).eval()


def _adapt(model, targets, kan, **kwargs):
    """A KAN adapter that is not the identity (random B and coefficients), so any part lost in a round
    trip changes the logits."""
    config = KANConfig(kan=kan, r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False, **kwargs)
    model = get_peft_model(model, config)
    for phi in kan_modules(model):
        phi.coeff.data.normal_()
    return model.eval()


def _assert_same(model, ids, expected):
    assert any(isinstance(m, KANLinear) for m in model.modules())
    torch.testing.assert_close(model(ids).logits, expected, rtol=0, atol=0)


@pytest.mark.parametrize("kan", ["nera", "skan"])
def test_peft_loaders_rebuild_kan_adapters_on_minilm(tmp_path, kan):
    base = _minilm()
    ids = torch.randint(5, 1000, (2, 12))
    model = _adapt(copy.deepcopy(base), MINILM_TARGETS, kan, modules_to_save=["classifier"])
    expected = model(ids).logits
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == KAN_PEFT_TYPE
    _assert_same(PeftModel.from_pretrained(copy.deepcopy(base), tmp_path), ids, expected)
    _assert_same(
        AutoPeftModelForSequenceClassification.from_pretrained(tmp_path, num_labels=2), ids, expected
    )
    other = _adapt(copy.deepcopy(base), MINILM_TARGETS, "nera", modules_to_save=["classifier"])
    other.load_adapter(tmp_path, "loaded")  # PeftModel.load_adapter: a second adapter next to "default"
    other.set_adapter("loaded")
    _assert_same(other, ids, expected)


@pytest.mark.parametrize("kan", ["nera", "skan"])
def test_peft_and_transformers_loaders_rebuild_kan_adapters_on_a_plait_lm(tmp_path, kan, make_config):
    PlaitForCausalLM(make_config()).save_pretrained(tmp_path / "base")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval()  # its path: AutoPeftModel's base
    ids = torch.randint(1, 128, (2, 9))
    model = _adapt(copy.deepcopy(base), PLAIT_TARGETS, kan)
    expected = model(ids).logits
    model.save_pretrained(tmp_path / "adapter")
    _assert_same(PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "adapter"), ids, expected)
    # A model class outside transformers: PEFT's AutoPeftModel imports it only when allowed to.
    auto = AutoPeftModelForCausalLM.from_pretrained(
        tmp_path / "adapter", import_allowlist=["plait.modeling.modeling_plait"]
    )
    _assert_same(auto, ids, expected)
    plain = copy.deepcopy(base)
    plain.load_adapter(str(tmp_path / "adapter"))  # transformers' PeftAdapterMixin
    _assert_same(plain, ids, expected)


def test_without_the_kan_type_registered_peft_refuses_instead_of_loading_lora(
    tmp_path, make_config, monkeypatch
):
    base = PlaitForCausalLM(make_config()).eval()
    _adapt(copy.deepcopy(base), PLAIT_TARGETS, "nera").save_pretrained(tmp_path)
    monkeypatch.delitem(PEFT_TYPE_TO_CONFIG_MAPPING, KAN_PEFT_TYPE)  # plain PEFT, Plait not imported
    with pytest.raises(KeyError, match=KAN_PEFT_TYPE):
        PeftModel.from_pretrained(base, tmp_path)


def test_load_kan_adapter_reads_an_adapter_saved_as_plain_lora_type(tmp_path, make_config):
    """Adapters saved before the KAN type (peft_type 'LORA', no base branch) still load exactly."""
    base = PlaitForCausalLM(make_config()).eval()
    ids = torch.randint(1, 128, (2, 9))
    model = _adapt(copy.deepcopy(base), PLAIT_TARGETS, "skan", kan_base=False)
    expected = model(ids).logits
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["peft_type"] = "LORA"
    del config["kan_base"]
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    _assert_same(load_kan_adapter(copy.deepcopy(base), tmp_path), ids, expected)


def test_mixed_adapter_batch_delete_adapter_and_unload(make_config):
    base = PlaitForCausalLM(make_config()).eval()
    ids = torch.randint(1, 128, (3, 9))
    model = _adapt(copy.deepcopy(base), PLAIT_TARGETS, "nera")
    model.add_adapter("b", KANConfig(kan="skan", r=2, target_modules=["o_proj"], init_lora_weights=False))
    model.set_adapter("b")
    out_b = model(ids).logits
    model.set_adapter("default")
    out_default = model(ids).logits
    with model.disable_adapter():
        out_base = model(ids).logits
    mixed = model(ids, adapter_names=["b", "__base__", "default"]).logits
    for row, reference in enumerate((out_b, out_base, out_default)):
        torch.testing.assert_close(mixed[row], reference[row])
    model.delete_adapter("b")
    assert "b" not in model.peft_config and not any(".b." in n for n, _ in model.named_parameters())
    torch.testing.assert_close(model(ids).logits, out_default, rtol=0, atol=0)
    assert torch.equal(model.unload()(ids).logits, out_base)


@pytest.mark.parametrize("kan", ["nera", "skan"])
def test_gradient_checkpointing_gives_the_same_adapter_gradients(kan, make_config):
    adapted = _adapt(PlaitForCausalLM(make_config()), PLAIT_TARGETS, kan)
    ids = torch.randint(1, 128, (2, 9))
    grads = []
    for checkpointing in (False, True):
        model = copy.deepcopy(adapted).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(ids, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and all(g is not None for g in grads[1].values())
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("kan", ["nera", "skan"])
def test_an_outlier_beyond_the_grid_gets_the_base_branch_output_and_gradient(kan):
    """Every spline basis (hats, B-splines, RBFs, wavelets) vanishes beyond the grid and the Chebyshev
    basis saturates: there φ is KAN's residual branch w_b·silu(x), with its value and its gradient."""
    config = KANConfig(kan=kan, r=3, target_modules=["q"], kan_grid_range=3.0)
    phi = build_phi(config, 4, 3)
    x = torch.tensor([[0.5, -1.0, 40.0, 1.0]], requires_grad=True)
    moved = x.detach().clone()
    moved[0, 2] = 41.0  # only the outlier moves: only the base branch answers
    step = phi.base_weight[:, 2] * (F.silu(torch.tensor(41.0)) - F.silu(torch.tensor(40.0)))
    torch.testing.assert_close(phi(moved) - phi(x), step[None], rtol=1e-5, atol=1e-5)
    (grad,) = torch.autograd.grad(phi(x).sum(), x)
    slope = torch.sigmoid(torch.tensor(40.0))  # silu'(x) = σ(x)(1 + x(1 − σ(x))) ≈ 1 at x = 40
    torch.testing.assert_close(grad[0, 2], phi.base_weight[:, 2].sum() * slope)
    assert grad[0, 2].abs() > 0
    # Without the base branch (the NeRA reference) the outlier is inert: no output change, no gradient.
    inert = build_phi(KANConfig(kan=kan, r=3, target_modules=["q"], kan_base=False), 4, 3)
    assert torch.equal(inert(moved), inert(x))
    assert torch.autograd.grad(inert(x).sum(), x)[0][0, 2] == 0
