"""The Plait ViT as a transformers image classifier: Auto classes, processor, pipeline, save/load, losses,
positions, gradient checkpointing, drop-path."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    Trainer,
    TrainingArguments,
    default_data_collator,
    pipeline,
)

from plait.modeling import (
    PlaitViTConfig,
    PlaitViTForImageClassification,
    PlaitViTImageProcessor,
    PlaitViTModel,
)
from plait.modeling.positions import Rotary2D, apply_rotary


def vit_config(**overrides) -> PlaitViTConfig:
    defaults = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=16,
        patch_size=4,
        num_channels=1,
        num_labels=5,
    )
    return PlaitViTConfig(**{**defaults, **overrides})


def pixels(batch=2, size=16, channels=1):
    return torch.randn(batch, channels, size, size)


@pytest.mark.parametrize("patch_embedding", ["linear", "conv_stem"])
@pytest.mark.parametrize("position_embedding", ["learned", "rope2d"])
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_auto_classes_round_trip_gives_identical_logits(
    tmp_path, patch_embedding, position_embedding, pooling
):
    config = vit_config(
        patch_embedding=patch_embedding, position_embedding=position_embedding, pooling=pooling
    )
    model = PlaitViTForImageClassification(config)
    model.eval()
    x = pixels()
    model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), PlaitViTConfig)
    restored = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert isinstance(restored, PlaitViTForImageClassification)
    assert torch.equal(model(x).logits, restored(x).logits)
    backbone = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(backbone, PlaitViTModel)
    torch.testing.assert_close(backbone(x).pooler_output, model.vit(x).pooler_output)


def test_processor_round_trip_and_pipeline_on_grayscale_and_rgb_images(tmp_path):
    model = PlaitViTForImageClassification(
        vit_config(id2label={i: f"class{i}" for i in range(5)}, label2id={f"class{i}": i for i in range(5)})
    ).eval()
    processor = PlaitViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.5], image_std=[0.25])
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, PlaitViTImageProcessor) and tuple(loaded.image_std) == (0.25,)
    gray = Image.fromarray(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28), mode="L")
    x = loaded(gray, return_tensors="pt")["pixel_values"]
    assert x.shape == (1, 1, 16, 16)
    expected = (np.asarray(gray.resize((16, 16), Image.BILINEAR), dtype=np.float32) / 255 - 0.5) / 0.25
    np.testing.assert_allclose(x[0, 0].numpy(), expected, atol=1e-5)
    # the pipeline loads every image as RGB: the one-channel processor reduces it back to luminance
    rgb = loaded(gray.convert("RGB"), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(rgb, x)
    predictions = pipeline("image-classification", model=str(tmp_path))(gray, top_k=5)
    logits = model(x).logits[0]
    assert [p["label"] for p in predictions] == [f"class{i}" for i in logits.argsort(descending=True)]
    torch.testing.assert_close(
        torch.tensor([p["score"] for p in predictions]), logits.softmax(-1).sort(descending=True).values
    )


def test_problem_type_losses_and_label_smoothing():
    x = pixels(4)
    model = PlaitViTForImageClassification(vit_config(label_smoothing=0.1))
    labels = torch.tensor([0, 1, 4, 2])
    out = model(x, labels=labels)
    assert model.config.problem_type == "single_label_classification"
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels, label_smoothing=0.1))
    soft = F.one_hot(labels, 5).float() * 0.7 + 0.06  # class-probability targets (mixup / cutmix)
    torch.testing.assert_close(
        model(x, labels=soft).loss, F.cross_entropy(out.logits, soft, label_smoothing=0.1)
    )
    multi = PlaitViTForImageClassification(vit_config())
    targets = torch.randint(0, 2, (4, 5)).float()
    out = multi(x, labels=targets)
    assert multi.config.problem_type == "multi_label_classification"
    torch.testing.assert_close(out.loss, F.binary_cross_entropy_with_logits(out.logits, targets))
    regression = PlaitViTForImageClassification(vit_config(num_labels=1))
    values = torch.randn(4)
    out = regression(x, labels=values)
    torch.testing.assert_close(out.loss, F.mse_loss(out.logits.squeeze(-1), values))


def test_tuple_output_hidden_states_and_sdpa_equals_eager():
    config = vit_config(num_hidden_layers=3)
    model = PlaitViTForImageClassification(config).eval()
    x = pixels()
    out = model(x, output_hidden_states=True)
    assert len(out.hidden_states) == 4 and all(h.shape == (2, 17, 32) for h in out.hidden_states)
    logits, hidden_states = model(x, output_hidden_states=True, return_dict=False)
    assert torch.equal(logits, out.logits) and len(hidden_states) == 4
    model.set_attn_implementation("eager")  # eager builds no mask unless causal: full attention, as sdpa
    torch.testing.assert_close(model(x).logits, out.logits, atol=1e-5, rtol=1e-5)
    attentions = model(x, output_attentions=True).attentions
    assert len(attentions) == 3 and attentions[0].shape == (2, 2, 17, 17)
    torch.testing.assert_close(attentions[0].sum(-1), torch.ones(2, 2, 17))
    assert (attentions[0] > 0).all()  # bidirectional: no key is masked


def test_every_patch_sees_every_patch():
    model = PlaitViTModel(vit_config()).eval()
    x = pixels(1)
    changed = x.clone()
    changed[..., -4:, -4:] += 1.0  # the last patch in raster order
    before, after = model(x).last_hidden_state, model(changed).last_hidden_state
    assert not torch.allclose(before[:, :-1], after[:, :-1])  # CLS and earlier patches see it


def test_gradient_checkpointing_gives_the_same_gradients():
    model = PlaitViTForImageClassification(vit_config(num_hidden_layers=3, residual="mhc")).train()
    x, labels = pixels(), torch.tensor([1, 3])

    def gradients():
        model.zero_grad()
        model(x, labels=labels).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    reference = gradients()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.vit.gradient_checkpointing
    checkpointed = gradients()
    assert checkpointed.keys() == reference.keys()
    for name, grad in reference.items():
        torch.testing.assert_close(checkpointed[name], grad, msg=name)


@pytest.mark.parametrize("patch_embedding", ["linear", "conv_stem"])
@pytest.mark.parametrize("position_embedding", ["learned", "rope2d"])
def test_other_image_sizes_with_interpolated_positions(patch_embedding, position_embedding):
    config = vit_config(patch_embedding=patch_embedding, position_embedding=position_embedding)
    model = PlaitViTForImageClassification(config).eval()
    x = pixels()
    same = model(x, interpolate_pos_encoding=True).logits
    torch.testing.assert_close(same, model(x).logits)  # interpolating to the trained grid changes nothing
    assert model(pixels(size=24), interpolate_pos_encoding=True).logits.shape == (2, 5)
    if position_embedding == "learned":
        with pytest.raises(ValueError, match="interpolate_pos_encoding"):
            model(pixels(size=24))
    with pytest.raises(ValueError, match="patch_size"):
        model(pixels(size=18))
    with pytest.raises(ValueError, match="num_channels=1"):
        model(pixels(channels=3))


def test_rope2d_scores_depend_only_on_the_patch_offset():
    rotary = Rotary2D(head_dim=8, theta=100.0, base_grid=(4, 4))
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    cos, sin = rotary(q, (4, 4), prefix=1)
    assert torch.equal(cos[0, 0], torch.ones(8)) and torch.equal(sin[0, 0], torch.zeros(8))  # CLS unrotated

    def score(i, j):  # token indices: 1 + row * 4 + col
        qi, _ = apply_rotary(q, q, cos[:, i : i + 1], sin[:, i : i + 1])
        _, kj = apply_rotary(k, k, cos[:, j : j + 1], sin[:, j : j + 1])
        return (qi * kj).sum()

    torch.testing.assert_close(score(1 + 0 * 4 + 1, 1 + 2 * 4 + 0), score(1 + 1 * 4 + 3, 1 + 3 * 4 + 2))
    assert not torch.allclose(score(1, 2), score(1, 5))  # a column step and a row step differ


def test_conv_stem_halves_the_resolution_per_stage_up_to_the_patch_grid():
    """Xiao et al.'s stem at ViT-B/16 width: 3x3 stride-2 convs of 48-96-192-384 channels, 1x1 to 768."""
    stem = PlaitViTModel(
        vit_config(
            hidden_size=768,
            intermediate_size=64,
            num_attention_heads=12,
            image_size=32,
            patch_size=16,
            patch_embedding="conv_stem",
        )
    ).embeddings.projection
    convs = [m for m in stem if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (48, (3, 3), (2, 2)),
        (96, (3, 3), (2, 2)),
        (192, (3, 3), (2, 2)),
        (384, (3, 3), (2, 2)),
        (768, (1, 1), (1, 1)),
    ]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in stem) == 4
    assert stem(torch.randn(2, 1, 32, 32)).shape == (2, 768, 2, 2)  # the patchify grid
    with pytest.raises(ValueError, match="patch_size=6 must be a power of two"):
        vit_config(image_size=12, patch_size=6, patch_embedding="conv_stem")
    wide = PlaitViTModel(
        vit_config(image_size=16, patch_size=4, patch_embedding="conv_stem", conv_stem_channels=[24, 40])
    ).embeddings.projection
    assert [m.out_channels for m in wide if isinstance(m, torch.nn.Conv2d)] == [24, 40, 32]
    with pytest.raises(ValueError, match=r"conv_stem_channels=\[24\] must hold 2 positive channel counts"):
        vit_config(image_size=16, patch_size=4, patch_embedding="conv_stem", conv_stem_channels=[24])
    with pytest.raises(ValueError, match="conv_stem_channels=.*needs patch_embedding='conv_stem'"):
        vit_config(image_size=16, patch_size=4, conv_stem_channels=[24, 40])
    with pytest.raises(ValueError, match=r"patch_embedding='hybrid'.*\['linear', 'conv_stem'\]"):
        vit_config(patch_embedding="hybrid")


def test_conv_stem_strides_add_full_resolution_convolutions_on_the_same_grid():
    stem_config = dict(image_size=16, patch_size=4, patch_embedding="conv_stem")
    stem = PlaitViTModel(
        vit_config(**stem_config, conv_stem_channels=[8, 16, 24], conv_stem_strides=[1, 2, 2])
    ).embeddings.projection
    convs = [m for m in stem if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.stride) for c in convs] == [
        (8, (1, 1)),
        (16, (2, 2)),
        (24, (2, 2)),
        (32, (1, 1)),
    ]
    assert stem(torch.randn(2, 1, 16, 16)).shape == (2, 32, 4, 4)  # the patchify grid
    with pytest.raises(
        ValueError, match=r"conv_stem_strides=\[1, 2\] must be 1s and 2s whose product is patch_size=4"
    ):
        vit_config(**stem_config, conv_stem_channels=[8, 16], conv_stem_strides=[1, 2])
    with pytest.raises(ValueError, match=r"conv_stem_strides=\[1, 4\] must be 1s and 2s"):
        vit_config(**stem_config, conv_stem_channels=[8, 16], conv_stem_strides=[1, 4])
    with pytest.raises(
        ValueError, match=r"conv_stem_strides=\[1, 2, 2\] needs conv_stem_channels of the same length"
    ):
        vit_config(**stem_config, conv_stem_channels=[8, 16], conv_stem_strides=[1, 2, 2])
    with pytest.raises(
        ValueError, match=r"conv_stem_strides=\[1, 2, 2\] needs conv_stem_channels of the same length"
    ):
        vit_config(**stem_config, conv_stem_strides=[1, 2, 2])
    with pytest.raises(ValueError, match="conv_stem_strides=.*needs patch_embedding='conv_stem'"):
        vit_config(image_size=16, patch_size=4, conv_stem_strides=[2, 2])


def test_trainer_takes_the_classification_loss_as_a_batch_mean(tmp_path):
    """One SGD step over 2 accumulated micro-batches moves the weights by the mean gradient of all examples:
    `Trainer` divides the loss by the accumulation steps and, under DDP, does not multiply it by the world
    size (both of which it skips or does for models that take `num_items_in_batch`)."""
    torch.manual_seed(0)
    model = PlaitViTForImageClassification(vit_config())
    examples = [{"pixel_values": pixels(1)[0], "labels": i % 5} for i in range(8)]
    model(**default_data_collator(examples)).loss.backward()  # the mean loss of all 8
    expected = {n: p.detach() - 0.5 * p.grad for n, p in model.named_parameters()}
    model.zero_grad()
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=1,
        learning_rate=0.5,
        optim="sgd",
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        weight_decay=0.0,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
    )
    trainer = Trainer(model=model, args=args, train_dataset=examples)
    trainer.train()
    assert not trainer.model_accepts_loss_kwargs
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.detach(), expected[name], msg=name)


def test_drop_path_is_active_in_training_only():
    model = PlaitViTForImageClassification(vit_config(drop_path_rate=0.5, num_hidden_layers=3))
    assert [b.drop_path.rate for b in model.vit.layers] == [0.0, 0.25, 0.5]
    x = pixels()
    model.eval()
    torch.testing.assert_close(model(x).logits, model(x).logits)
    model.train()
    torch.manual_seed(1)
    outs = [model(x).logits for _ in range(4)]
    assert not all(torch.allclose(outs[0], o) for o in outs[1:])


def test_config_validation_names_field_value_and_choices():
    with pytest.raises(ValueError, match=r"position_embedding='sincos'.*\['learned', 'rope2d'\]"):
        vit_config(position_embedding="sincos")
    with pytest.raises(ValueError, match="image_size=30 must be a multiple of patch_size=4"):
        vit_config(image_size=30)
    with pytest.raises(ValueError, match="head_dim=6 must be divisible by 4"):
        vit_config(hidden_size=12, num_attention_heads=2, position_embedding="rope2d")
    with pytest.raises(ValueError, match="residual='nope'"):
        vit_config(residual="nope")
    with pytest.raises(ValueError, match="label_smoothing"):
        vit_config(label_smoothing=1.5)


def test_no_weight_decay_names_cls_token_and_learned_positions():
    names = PlaitViTForImageClassification(vit_config()).no_weight_decay()
    assert names == {"vit.embeddings.cls_token", "vit.embeddings.positions.weight"}
