"""Hyper-connection residuals: manifold constraints, init at plain residual, training, save/load, depth."""

import math

import pytest
import torch

from plait.kernels.sinkhorn import sinkhorn_naive
from plait.modeling import PlaitConfig, PlaitForCausalLM
from plait.modeling.diagnostics import residual_mixing
from plait.modeling.hyper_connections import (
    HCSite,
    cayley,
    no_decay_parameter_names,
    sinkhorn_implicit,
    skew,
)
from plait.modeling.weight_decay import parameter_groups

TINY = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)
VARIANTS = [
    ("identity_hc", {}),
    ("hc", {}),
    ("mhc", {}),
    ("mhc_lite", {}),
    ("kromhc", {}),
    ("shc", {}),
    ("jpmhc", {"jpmhc_manifold": "stiefel"}),
    ("jpmhc", {"jpmhc_manifold": "grassmann"}),
    ("jpmhc", {"jpmhc_manifold": "bistochastic"}),
]
CONSTRAINED = VARIANTS[2:]
IDS = [f"{r}-{e['jpmhc_manifold']}" if e else r for r, e in VARIANTS]


def tiny(residual="plain", **kw):
    return PlaitConfig(**{**TINY, "residual": residual, **kw})


def randomized(model, scale=2.0, seed=0):
    """Push every HC parameter far from its init so the constraints are tested off the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for site in (m for m in model.modules() if isinstance(m, HCSite)):
            for name, p in site.named_parameters():
                p.add_(torch.randn(p.shape, generator=g) * (scale if name != "phi" else 0.05))
            if hasattr(site, "alpha"):
                site.alpha.fill_(1.0)
    return model


def coefficients(residual, seed=0, **kw):
    torch.manual_seed(seed)
    model = randomized(PlaitForCausalLM(tiny(residual, **kw)), seed=seed).eval()
    ids = torch.randint(0, 128, (2, 8))
    return residual_mixing(model, ids)


@pytest.mark.parametrize(
    "residual,extra", [("mhc_lite", {}), ("kromhc", {}), ("jpmhc", {"jpmhc_manifold": "bistochastic"})]
)
def test_exactly_doubly_stochastic(residual, extra):
    for site in coefficients(residual, **extra).sites:
        h = site["h_res"]
        assert (h >= 0).all()
        torch.testing.assert_close(h.sum(-1), torch.ones_like(h.sum(-1)), atol=1e-5, rtol=0)
        torch.testing.assert_close(h.sum(-2), torch.ones_like(h.sum(-2)), atol=1e-5, rtol=0)
        assert h.std(dim=(0, 1)).max() > 0  # dynamic: the coefficients do depend on the token


def test_mhc_sinkhorn_rows_exact_columns_within_tolerance():
    """Rows end the iteration so they are exact; columns converge at Sinkhorn's rate, 20 iterations reach 1e-3
    for residual logits of unit spread, while nearly decomposable ones (the −8 init) converge slowly."""
    torch.manual_seed(0)
    model = randomized(PlaitForCausalLM(tiny("mhc"))).eval()
    with torch.no_grad():
        for site in (m for m in model.modules() if isinstance(m, HCSite)):
            site.bias[8:] = torch.randn(16)  # residual logits of unit spread around 0
    for site in residual_mixing(model, torch.randint(0, 128, (2, 8))).sites:
        h = site["h_res"]
        assert (h >= 0).all()
        torch.testing.assert_close(h.sum(-1), torch.ones_like(h.sum(-1)), atol=1e-5, rtol=0)
        assert (h.sum(-2) - 1).abs().max() < 1e-3


def test_shc_row_column_sums_and_spectral_norm():
    for site in coefficients("shc").sites:
        h = site["h_res"]
        torch.testing.assert_close(h.sum(-1), torch.ones_like(h.sum(-1)), atol=1e-5, rtol=0)
        torch.testing.assert_close(h.sum(-2), torch.ones_like(h.sum(-2)), atol=1e-5, rtol=0)
        assert torch.linalg.matrix_norm(h, ord=2).max() <= 1 + 1e-5


def test_jpmhc_stiefel_orthogonal_and_grassmann_bounded():
    eye = torch.eye(4)
    for site in coefficients("jpmhc", jpmhc_manifold="stiefel").sites:
        h = site["h_res"]
        torch.testing.assert_close(h @ h.transpose(-1, -2), eye.expand_as(h), atol=1e-5, rtol=0)
    for site in coefficients("jpmhc", jpmhc_manifold="grassmann").sites:
        h = site["h_res"]
        torch.testing.assert_close(
            h, h.transpose(-1, -2), atol=1e-5, rtol=0
        )  # I − (1−ρ)·projector: symmetric
        assert torch.linalg.matrix_norm(h, ord=2).max() <= 1 + 1e-5


def test_cayley_orthogonal():
    a = skew(torch.randn(10, 15) * 3, 6)
    torch.testing.assert_close(a, -a.transpose(-1, -2))
    q = cayley(a)
    torch.testing.assert_close(q @ q.transpose(-1, -2), torch.eye(6).expand_as(q), atol=1e-5, rtol=0)
    torch.testing.assert_close(cayley(torch.zeros(6, 6)), torch.eye(6))


def test_implicit_sinkhorn_gradient_matches_unrolled_limit():
    torch.manual_seed(0)
    logits = (torch.randn(3, 4, 4) * 1.5).requires_grad_()
    weight = torch.randn(3, 4, 4)
    p = sinkhorn_implicit(logits, 20, 1e-9)
    torch.testing.assert_close(p, sinkhorn_naive(logits, 500), atol=1e-5, rtol=0)
    (g_implicit,) = torch.autograd.grad((p * weight).sum(), logits)
    (g_unrolled,) = torch.autograd.grad((sinkhorn_naive(logits, 500) * weight).sum(), logits)
    torch.testing.assert_close(g_implicit, g_unrolled, atol=1e-4, rtol=1e-3)


def copy_shared_weights(src, dst):
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=False)
    assert not unexpected and all("residual" in k or "streams" in k for k in missing)


@pytest.mark.parametrize("residual,streams", [("identity_hc", 1), ("identity_hc", 4), ("hc", 4), ("hc", 1)])
def test_hc_starts_exactly_at_plain_residual(residual, streams):
    torch.manual_seed(0)
    plain = PlaitForCausalLM(tiny()).eval()
    hc = PlaitForCausalLM(tiny(residual, hc_streams=streams)).eval()
    copy_shared_weights(plain, hc)
    ids = torch.randint(0, 128, (2, 12))
    torch.testing.assert_close(hc(ids).logits, plain(ids).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("residual,extra", CONSTRAINED, ids=IDS[2:])
def test_manifold_variants_start_near_identity(residual, extra):
    torch.manual_seed(0)
    model = PlaitForCausalLM(tiny(residual, **extra)).eval()
    mixing = residual_mixing(model, torch.randint(0, 128, (1, 6)))
    for site in mixing.sites:
        # the −8 logits leave ≈ e⁻⁸ per off-identity term (mhc_lite: 23 permutations share ≈ 0.8% of the mass)
        torch.testing.assert_close(site["h_res"], torch.eye(4).expand_as(site["h_res"]), atol=1e-2, rtol=0)
    assert abs(mixing.composite_gain["max"] - 1) < 1e-2


@pytest.mark.parametrize("residual,extra", VARIANTS, ids=IDS)
def test_trains_and_round_trips(residual, extra, tmp_path):
    torch.manual_seed(0)
    model = PlaitForCausalLM(tiny(residual, **extra))
    opt = torch.optim.AdamW(parameter_groups(model, 0.1), lr=3e-3)
    ids = torch.randint(0, 128, (2, 16))
    hc_before = {
        n: p.detach().clone() for n, p in model.named_parameters() if "residual" in n or "streams" in n
    }
    losses = []
    for _ in range(6):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3
    params = dict(model.named_parameters())
    assert hc_before and all(
        not torch.equal(params[n], p) for n, p in hc_before.items()
    )  # every HC param learns
    model.save_pretrained(tmp_path)
    loaded = PlaitForCausalLM.from_pretrained(tmp_path).eval()
    model.eval()
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=0, rtol=0)


@pytest.mark.parametrize("residual,extra", CONSTRAINED, ids=IDS[2:])
def test_deep_model_finite_and_composite_gain_bounded(residual, extra):
    torch.manual_seed(0)
    model = randomized(PlaitForCausalLM(tiny(residual, num_hidden_layers=48, **extra))).eval()
    mixing = residual_mixing(model, torch.randint(0, 128, (1, 4)))
    assert len(mixing.sites) == 96
    assert all(torch.isfinite(s["h_res"]).all() for s in mixing.sites)
    assert torch.isfinite(mixing.outputs.logits).all()
    if (
        residual == "mhc"
    ):  # 20 Sinkhorn iterations leave column sums inexact far from init (paper: gain ≈ 1.6)
        bound = 2.0
    elif residual in ("mhc_lite", "kromhc") or extra.get("jpmhc_manifold") == "bistochastic":
        bound = 1 + 1e-4  # exactly doubly stochastic: every product too
    else:
        bound = math.sqrt(4) + 1e-4  # ‖H_res‖₂ ≤ 1 ⇒ ‖P‖₂ ≤ 1 ⇒ abs row/column sums ≤ √n
    assert mixing.composite_gain["max"] <= bound


def test_unconstrained_hc_gain_grows_with_depth():
    """The metric detects the instability the constrained variants avoid (HC's free H_res)."""
    torch.manual_seed(0)
    model = randomized(PlaitForCausalLM(tiny("hc", num_hidden_layers=48)), scale=0.3).eval()
    assert residual_mixing(model, torch.randint(0, 128, (1, 4))).composite_gain["max"] > 100


def test_plain_has_no_sites():
    mixing = residual_mixing(PlaitForCausalLM(tiny()), torch.randint(0, 128, (1, 4)))
    assert mixing.sites == [] and mixing.composite_gain["max"] == 1.0


def test_no_decay_names():
    model = PlaitForCausalLM(tiny("hc"))
    names = no_decay_parameter_names(model)
    params = dict(model.named_parameters())
    assert "model.streams.collapse_weight" in names
    assert {
        "model.layers.0.mixer_residual.static_pre",
        "model.layers.1.mlp_residual.static_res",
        "model.layers.0.mlp_residual.scale_alpha",
    } <= names
    assert names <= params.keys()
    assert not any("weight_alpha" in n or "proj" in n or "norm" in n for n in names)
    decay, no_decay = parameter_groups(model, 0.1)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    # the one weight-decay rule: the static HC parameters the model names, and every 1-D parameter
    vectors = {n for n, p in params.items() if p.ndim < 2}
    assert {id(p) for p in no_decay["params"]} == {id(params[n]) for n in names | vectors}
    assert len(decay["params"]) + len(no_decay["params"]) == len(params)
    mhc = no_decay_parameter_names(PlaitForCausalLM(tiny("mhc")))
    assert "model.layers.1.mixer_residual.bias" in mhc and not any("phi" in n for n in mhc)
    assert no_decay_parameter_names(PlaitForCausalLM(tiny())) == set()


def test_static_only_variants():
    torch.manual_seed(0)
    for residual in ("hc", "mhc", "shc"):
        model = PlaitForCausalLM(tiny(residual, hc_dynamic=False))
        assert not any("phi" in n or "weight_" in n for n, _ in model.named_parameters())
        mixing = residual_mixing(model, torch.randint(0, 128, (2, 4)))
        assert mixing.sites[0]["h_res"].shape == (2, 4, 4, 4)


def test_invalid_combinations_rejected_with_cost():
    with pytest.raises(ValueError, match=r"kromhc.*power of 2.*hc_streams=3.*parameters per site"):
        tiny("kromhc", hc_streams=3)
    with pytest.raises(ValueError, match=r"mhc_lite.*hc_streams=7.*5,040.*parameters per site.*hc_force"):
        tiny("mhc_lite", hc_streams=7)
    assert tiny("mhc_lite", hc_streams=7, hc_force=True).hc_streams == 7
    with pytest.raises(ValueError, match=r"jpmhc_manifold='oblique'.*stiefel"):
        tiny("jpmhc", jpmhc_manifold="oblique")
    with pytest.raises(ValueError, match=r"hc_streams=0"):
        tiny("mhc", hc_streams=0)
    with pytest.raises(ValueError, match=r"jpmhc_rank=5"):
        tiny("jpmhc", jpmhc_manifold="grassmann", jpmhc_rank=5)


def test_sites_through_triton_kernels_match_reference(monkeypatch):
    """The CUDA dispatch path (fused Sinkhorn + stream mixes, under TRITON_INTERPRET=1) inside the model."""
    import plait.modeling.hyper_connections as hc
    from plait.kernels.sinkhorn import sinkhorn_triton
    from plait.kernels.stream_mix import post_res_mix_triton, pre_mix_triton

    torch.manual_seed(0)
    model = randomized(PlaitForCausalLM(tiny("mhc", num_hidden_layers=1)), scale=0.5)
    ids = torch.randint(0, 128, (1, 5))

    def loss_and_grads():
        model.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ref_loss, ref_grads = loss_and_grads()
    monkeypatch.setattr(hc, "pre_mix", pre_mix_triton)
    monkeypatch.setattr(hc, "post_res_mix", post_res_mix_triton)
    monkeypatch.setattr(hc, "sinkhorn", sinkhorn_triton)
    loss, grads = loss_and_grads()
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_cached_generation_matches_full_forward():
    torch.manual_seed(0)
    model = randomized(PlaitForCausalLM(tiny("mhc")), scale=0.5).eval()
    ids = torch.randint(0, 128, (2, 6))
    out = model.generate(ids, max_new_tokens=4, do_sample=False, use_cache=True)
    full = model(out[:, :-1]).logits[:, ids.shape[1] - 1 :].argmax(-1)
    torch.testing.assert_close(out[:, ids.shape[1] :], full)


@pytest.mark.parametrize("residual", ["hc", "mhc", "shc"])
def test_bf16_model_keeps_fp32_coefficients(residual):
    torch.manual_seed(0)
    model = PlaitForCausalLM(tiny(residual)).to(torch.bfloat16).eval()
    mixing = residual_mixing(model, torch.randint(0, 128, (1, 4)))
    assert mixing.outputs.logits.dtype == torch.bfloat16 and torch.isfinite(mixing.outputs.logits).all()
    assert all(s[k].dtype == torch.float32 for s in mixing.sites for k in ("h_pre", "h_post", "h_res"))
