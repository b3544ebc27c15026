"""Every block switch in the (bidirectional) ViT: residual families, PolyCom, softplus attention over all
patches, bidirectional ParaRNN mixers; each lowers the loss in a few steps, reaches every parameter and
round-trips through save/load."""

import pytest
import torch

from plait.kernels.lssa import lssa_naive
from plait.modeling import PlaitViTConfig, PlaitViTForImageClassification
from plait.modeling.pararnn import ParaGRU, ParaLSTM, pararnn


def vit_config(**overrides) -> PlaitViTConfig:
    defaults = dict(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=12,
        patch_size=4,
        num_channels=1,
        num_labels=3,
        hc_streams=2,
    )
    return PlaitViTConfig(**{**defaults, **overrides})


SWITCHES = [{"residual": r} for r in ("identity_hc", "hc", "mhc", "mhc_lite", "kromhc", "shc", "jpmhc")] + [
    {"mlp_act": "polyrelu"},
    {"mlp_act": "polynorm"},
    {"attention": "lssa"},
    {"attention": "lssar"},
    {"layer_types": ["pararnn_gru", "full_attention"]},
    {"layer_types": ["pararnn_lstm", "full_attention"], "residual": "mhc", "position_embedding": "rope2d"},
]


@pytest.mark.parametrize("switch", SWITCHES, ids=lambda s: "-".join(str(v) for v in s.values()))
def test_switch_trains_and_round_trips(switch, tmp_path):
    model = PlaitViTForImageClassification(vit_config(**switch))
    x, labels = torch.randn(4, 1, 12, 12), torch.tensor([0, 1, 2, 1])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(4):
        loss = model(x, labels=labels).loss
        loss.backward()
        if not losses:
            unreached = [n for n, p in model.named_parameters() if p.grad is None]
            assert not unreached, unreached  # every parameter is on the loss's graph
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    model.save_pretrained(tmp_path)
    loaded = PlaitViTForImageClassification.from_pretrained(tmp_path).eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits)


@pytest.mark.parametrize("attention", ["lssa", "lssar"])
def test_softplus_attention_counts_every_patch(attention):
    """In the ViT, softplus attention sees all N = 1 + patches tokens: the core equals the reference with an
    all-visible mask (N_i = N for every row)."""
    model = PlaitViTForImageClassification(vit_config(attention=attention)).eval()
    layer = model.vit.layers[0].mixer
    q, k, v = (torch.randn(2, 2, 10, 16) for _ in range(3))
    out, _ = layer.core(layer, q, k, v, None, scaling=None, dropout=0.0, is_causal=layer.is_causal)
    reference = lssa_naive(
        q, k, v, torch.ones(1, 1, 10, 10, dtype=torch.bool), reweight=attention == "lssar", causal=False
    )
    torch.testing.assert_close(out, reference.transpose(1, 2))


@pytest.mark.parametrize("mixer_cls", [ParaGRU, ParaLSTM], ids=["gru", "lstm"])
def test_bidirectional_pararnn_equals_two_sequential_scans(mixer_cls):
    """Reference: the forward loop over the raster sequence and the loop over the reversed sequence,
    concatenated per token; the parallel (Newton) mixer gives the same values and gradients."""
    config = vit_config(layer_types=["pararnn_gru", "full_attention"], pararnn_mode="parallel")
    mixer = mixer_cls(config, 0)
    assert mixer.bidirectional and mixer.out_proj.in_features == 2 * mixer.width
    x = torch.randn(2, 10, 32)
    out, weights = mixer(x)
    assert weights is None
    grads = torch.autograd.grad(out.square().sum(), list(mixer.parameters()))

    def states(inputs, proj, params):
        u = proj(inputs).view(2, 10, 3, mixer.width).transpose(2, 3)
        h, _ = pararnn(mixer.cell_name, u, params, mode="sequential")
        return h[..., 1] if mixer.cell_name == "lstm" else h

    forward = states(x, mixer.in_proj, mixer.params())
    backward = states(x.flip(1), mixer.reverse_in_proj, mixer.params("reverse_")).flip(1)
    reference = mixer.out_proj(torch.cat((forward, backward), -1))
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    ref_grads = torch.autograd.grad(reference.square().sum(), list(mixer.parameters()))
    for name, got, want in zip([n for n, _ in mixer.named_parameters()], grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4, msg=name)
    # the first token (the CLS token in the ViT) depends on the last one through the backward scan
    changed = x.clone()
    changed[:, -1] += 1.0
    assert not torch.allclose(mixer(changed)[0][:, 0], out[:, 0])


def test_lm_pararnn_stays_one_directional():
    from plait.modeling import PlaitConfig

    config = PlaitConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=2,
        layer_types=["pararnn_gru"],
    )
    mixer = ParaGRU(config, 0)
    assert not mixer.bidirectional and not hasattr(mixer, "reverse_in_proj")
