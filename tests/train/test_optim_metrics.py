"""Weight-decay groups, schedules and the FLOPs-per-token count, checked against a measured count."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig, BertForSequenceClassification, get_scheduler

from plait.modeling import PlaitConfig, PlaitForCausalLM, PlaitViTConfig, PlaitViTForImageClassification
from plait.train.finetune import apply_method
from plait.train.recipe import FinetuneRecipe, recipe_from_dict
from plait.train.trainer import PlaitTrainer, _scheduler, flops_per_token, peak_tflops


@pytest.fixture(scope="module")
def model():
    config = PlaitConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return PlaitForCausalLM(config)


def test_decay_only_matrices_and_not_names_the_model_excludes(model):
    decayed = set(PlaitTrainer.get_decay_parameter_names(None, model))
    names = dict(model.named_parameters())
    assert decayed == {n for n, p in names.items() if p.ndim >= 2}
    assert not any("norm" in n for n in decayed) and "lm_head.weight" in decayed
    model.no_weight_decay = lambda: {"lm_head.weight"}
    try:
        assert "lm_head.weight" not in PlaitTrainer.get_decay_parameter_names(None, model)
    finally:
        del model.no_weight_decay


def lrs(recipe, steps):
    name, kwargs = _scheduler(recipe)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=recipe.optim.lr)
    scheduler = get_scheduler(
        name,
        optimizer,
        num_warmup_steps=recipe.optim.warmup_steps,
        num_training_steps=steps,
        scheduler_specific_kwargs=kwargs,
    )
    out = []
    for _ in range(steps):
        out.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return out


def test_wsd_and_cosine_schedules_warm_up_and_end_at_the_floor():
    common = {"train": {"max_steps": 100}}
    wsd = lrs(
        recipe_from_dict(
            {
                **common,
                "optim": {
                    "lr": 1.0,
                    "schedule": "wsd",
                    "warmup_steps": 10,
                    "decay_fraction": 0.2,
                    "min_lr_ratio": 0.1,
                },
            }
        ),
        100,
    )
    assert wsd[0] == pytest.approx(0.1) and wsd[0] < wsd[5] < 1.0  # transformers' WSD warms up from the floor
    assert all(v == pytest.approx(1.0) for v in wsd[10:80])  # stable phase
    assert wsd[-1] == pytest.approx(0.1, abs=0.02) and wsd[90] < 1.0
    cosine = lrs(
        recipe_from_dict(
            {**common, "optim": {"lr": 1.0, "schedule": "cosine", "warmup_steps": 10, "min_lr_ratio": 0.1}}
        ),
        100,
    )
    assert cosine[10] == pytest.approx(1.0) and cosine[-1] == pytest.approx(0.1, abs=0.01)


def test_flops_per_token_counts_matmul_weights_and_attention(model):
    """Trained from scratch: 6·N over the matrix weights (no input embedding, no norm or bias) + attention."""
    c = model.config
    n = sum(p.numel() for p in model.parameters() if p.ndim == 2) - c.vocab_size * c.hidden_size
    expected = 6 * n + 12 * c.num_hidden_layers * c.num_attention_heads * c.head_dim * 256
    assert flops_per_token(model, 256) == expected
    assert peak_tflops("bf16", override=123.0) == 123.0


def _measured_flops_per_token(model, inputs: dict, tokens: int) -> float:
    """What one training step (forward and backward) really computes, counted by torch's FlopCounterMode."""
    model.train()
    with FlopCounterMode(display=False) as counter:
        model(**inputs).loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / tokens


def _lm(**overrides):
    config = PlaitConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        **overrides,
    )
    config._attn_implementation = "eager"  # FlopCounterMode counts eager attention's matmuls (not CPU SDPA)
    torch.manual_seed(0)
    return PlaitForCausalLM(config)


def _lora(model):
    return apply_method(model, FinetuneRecipe(method="lora", r=4, target_modules="all-linear")).model


def _kappatune(model):  # two attention tensors train (the embedding, MLP and head are above kappa_max_dim)
    ft = FinetuneRecipe(method="kappatune", kappa_count=2, kappa_max_dim=64)
    return apply_method(model, ft, kappa_cache=None).model


def _nera(model):
    return apply_method(
        model, FinetuneRecipe(method="kan_nera", r=2, target_modules=["q_proj", "up_proj"])
    ).model


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: _lm(), id="lm"),
        pytest.param(lambda: _lm(tie_word_embeddings=True), id="lm-tied-head"),
        pytest.param(lambda: _lm(residual="mhc", hc_streams=4), id="lm-mhc"),
        pytest.param(lambda: _lm(residual="hc", hc_streams=4), id="lm-hc"),
        pytest.param(lambda: _lora(_lm()), id="lm-lora"),
        pytest.param(lambda: _nera(_lm()), id="lm-nera"),
        pytest.param(lambda: _kappatune(_lm()), id="lm-kappatune"),
    ],
)
def test_flops_per_token_of_language_models_matches_the_measured_count(build):
    model, seq_len = build(), 32
    ids = torch.randint(0, 256, (2, seq_len))
    measured = _measured_flops_per_token(model, {"input_ids": ids, "labels": ids}, ids.numel())
    assert flops_per_token(model, seq_len) == pytest.approx(measured, rel=0.1)


def _vit():
    config = PlaitViTConfig(
        image_size=32,
        patch_size=4,
        num_channels=1,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_labels=10,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    return PlaitViTForImageClassification(config)


def _bert_classifier():  # BERT's config says tie_word_embeddings=True, but a classifier has no LM head
    config = BertConfig(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_labels=2,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    return BertForSequenceClassification(config)


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(_vit, id="vit"),
        pytest.param(lambda: _lora(_vit()), id="vit-lora"),
        pytest.param(_bert_classifier, id="bert-classifier"),
        pytest.param(lambda: _kappatune(_bert_classifier()), id="bert-classifier-kappatune"),
    ],
)
def test_flops_per_token_of_classifiers_matches_the_measured_count(build):
    model = build()
    if isinstance(model.config, BertConfig):
        seq_len = 64
        inputs = {"input_ids": torch.randint(0, 1000, (2, seq_len)), "labels": torch.tensor([0, 1])}
    else:
        seq_len = (32 // 4) ** 2 + 1  # the patches and the CLS token
        inputs = {"pixel_values": torch.randn(2, 1, 32, 32), "labels": torch.tensor([3, 7])}
    measured = _measured_flops_per_token(model, inputs, 2 * seq_len)
    assert flops_per_token(model, seq_len) == pytest.approx(measured, rel=0.1)
