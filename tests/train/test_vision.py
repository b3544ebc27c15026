"""The `plait-vit` task: recipes, data preparation equal to the saved processor, seeded augmentation, and a
short real Fashion-MNIST run through `run()` that learns, evaluates, resumes exactly and saves a model the
image-classification pipeline loads."""

import numpy as np
import pytest
import torch
from transformers import pipeline

import plait.modeling  # noqa: F401  (registers the ViT with the Auto classes)
from plait.eval.image_data import fashion_mnist
from plait.modeling import PlaitViTImageProcessor
from plait.train.recipe import ImageDataRecipe, RecipeError, load_recipe, recipe_from_dict
from plait.train.trainer import losses, run
from plait.train.vision import Augmentation, ImageClassificationDataset, load_split

STEPS = 16


@pytest.mark.parametrize("name", ["vit_tiny_fmnist", "vit_s16", "vit_b16"])
def test_shipped_vit_recipes_validate(name):
    recipe = load_recipe(name)
    assert recipe.model.arch == "plait-vit" and isinstance(recipe.data, ImageDataRecipe)


def test_image_data_section_rejects_lm_keys_and_bad_values():
    with pytest.raises(RecipeError, match="unknown key data.seq_len.*valid keys: source, path"):
        recipe_from_dict({"model": {"arch": "plait-vit"}, "data": {"seq_len": 3}})
    with pytest.raises(RecipeError, match="data.source='imagenet' is not valid"):
        recipe_from_dict({"model": {"arch": "plait-vit"}, "data": {"source": "imagenet"}})
    with pytest.raises(RecipeError, match="data.path is not set but data.source='folder'"):
        load_split(load_recipe("vit_s16").data, "train")  # a shipped cluster recipe names no data path


def test_prepared_pixels_equal_the_processor_and_augmentation_is_seeded():
    images = fashion_mnist("test").subset(8)
    processor = PlaitViTImageProcessor(size={"height": 28, "width": 28}, image_mean=[0.3], image_std=[0.35])
    plain = ImageClassificationDataset(images, processor, image_size=28, channels=1)
    assert plain.fast
    expected = processor(images.image(5), return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(plain[5]["pixel_values"], expected)
    assert plain[5]["labels"] == int(images.labels[5])
    resized = ImageClassificationDataset(
        images,
        processor.__class__(size={"height": 32, "width": 32}, image_mean=[0.3], image_std=[0.35]),
        image_size=32,
        channels=1,
    )
    assert not resized.fast and resized[5]["pixel_values"].shape == (1, 32, 32)
    augmented = ImageClassificationDataset(
        images, processor, 28, 1, augmentation=Augmentation(crop_padding=3, horizontal_flip=True), seed=7
    )
    first = [augmented[i]["pixel_values"] for i in range(8)]
    assert all(torch.equal(a, augmented[i]["pixel_values"]) for i, a in enumerate(first))  # a function of i
    assert any(not torch.equal(a, plain[i]["pixel_values"]) for i, a in enumerate(first))
    augmented.set_epoch(1)
    assert any(not torch.equal(a, augmented[i]["pixel_values"]) for i, a in enumerate(first))


def _mix_kind(pixels, target, own, own_label, others, other_labels) -> str | None:
    """How `pixels` / `target` were made from image `own` and one of `others` (of other classes): "unmixed",
    "mixup" (a blend whose weight is the target's) or "cutmix" (pixels of the partner inside a box no larger
    than the partner's target weight times the image area); None if none of these."""
    if torch.equal(pixels, own) and target[own_label] == 1.0:
        return "unmixed"
    for other, label in zip(others, other_labels, strict=True):
        onehot = torch.nn.functional.one_hot(torch.tensor([own_label, label]), 10).float()
        weight = target[label].item()  # the partner's share
        if not torch.allclose(target, (1 - weight) * onehot[0] + weight * onehot[1], atol=1e-6):
            continue
        if torch.allclose(pixels, (1 - weight) * own + weight * other, atol=1e-5):
            return "mixup"
        pasted = pixels != own
        if torch.equal(pixels[pasted], other[pasted]):
            rows, cols = pasted[0].any(1).nonzero(), pasted[0].any(0).nonzero()
            box = int((rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)) if len(rows) else 0
            if box <= round(weight * 28 * 28):
                return "cutmix"
    return None


@pytest.mark.parametrize(
    "mixing, kinds",
    [
        (Augmentation(mixup_alpha=0.4), {"mixup"}),
        (Augmentation(cutmix_alpha=1.0), {"cutmix"}),
        (
            Augmentation(mixup_alpha=0.4, cutmix_alpha=1.0, mix_probability=0.5, horizontal_flip=True),
            {"unmixed", "mixup", "cutmix"},
        ),
    ],
)
def test_mixup_and_cutmix_mix_pixels_and_targets_by_the_same_amount(mixing, kinds):
    images = fashion_mnist("test").subset(16)
    labels = [int(label) for label in images.labels]
    processor = PlaitViTImageProcessor(size={"height": 28, "width": 28}, image_mean=[0.0], image_std=[1.0])
    flips = Augmentation(horizontal_flip=mixing.horizontal_flip)  # the same flips, without mixing
    unmixed = [x["pixel_values"] for x in ImageClassificationDataset(images, processor, 28, 1, flips, seed=5)]
    mixed = ImageClassificationDataset(images, processor, 28, 1, mixing, seed=5)
    seen = set()
    for i in range(16):
        example = mixed[i]
        target = example["labels"]
        assert target.dtype == torch.float32 and target.shape == (10,) and target.min() >= 0
        assert target.sum().item() == pytest.approx(1.0, abs=1e-6)
        assert torch.equal(
            example["pixel_values"], mixed[i]["pixel_values"]
        )  # a function of (seed, epoch, i)
        others = [(unmixed[j], labels[j]) for j in range(16) if labels[j] != labels[i]]
        kind = _mix_kind(example["pixel_values"], target, unmixed[i], labels[i], *zip(*others, strict=True))
        same_class_partner = target[labels[i]] == 1.0  # a partner of the same class leaves a one-hot target
        assert kind is not None or same_class_partner, f"example {i} is no mix of its image with another"
        seen.add(kind)
    assert seen - {None, "unmixed"} == kinds - {"unmixed"}  # a near-1 lambda may also leave an image whole
    assert "unmixed" in seen or "unmixed" not in kinds


def tiny_vit_recipe(output_dir) -> dict:
    return {
        "model": {
            "arch": "plait-vit",
            "config": {
                "image_size": 28,
                "patch_size": 7,
                "num_channels": 1,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "residual": "mhc",
                "hc_streams": 2,
            },
        },
        "data": {
            "source": "fashion-mnist",
            "max_train_samples": 512,
            "max_eval_samples": 500,
            "crop_padding": 1,
            "horizontal_flip": True,
            "mixup_alpha": 0.2,
            "cutmix_alpha": 1.0,
            "mix_probability": 0.5,
        },
        "optim": {"lr": 1e-2, "warmup_steps": 1, "weight_decay": 0.05},
        "train": {
            "output_dir": str(output_dir),
            "max_steps": STEPS,
            "micro_batch_size": 32,
            "precision": "fp32",
            "seed": 3,
        },
        "eval": {"every": 8, "batch_size": 250},
        "checkpoint": {"every": 8, "keep_last": 1},
        "logging": {"every": 4, "progress_bar": False},
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return run(recipe_from_dict(tiny_vit_recipe(tmp_path_factory.mktemp("vit"))))


def test_vit_run_learns_evaluates_and_saves_a_pipeline_model(reference):
    curve = losses(reference.log_history)
    assert sorted(curve) == [1, *range(4, STEPS + 1, 4)]
    assert curve[STEPS] < curve[1]
    evals = [e for e in reference.log_history if "eval_accuracy" in e]
    assert [e["step"] for e in evals] == [8, 16]  # every 8 steps; the final model is the last one
    assert evals[-1]["eval_accuracy"] > 0.15  # chance: 0.1 ± 0.013 on 500 images (after 512 seen)
    entry = next(e for e in reference.log_history if "samples_per_s" in e)
    assert entry["tokens_per_s"] == pytest.approx(entry["samples_per_s"] * 17)  # 16 patches + CLS
    assert "hc/composite_gain_max" in entry  # the diagnostics ran on a pixel_values probe
    classify = pipeline("image-classification", model=str(reference.final_dir))
    image = fashion_mnist("test").image(0)
    top = classify(image, top_k=1)[0]
    assert top["label"] in fashion_mnist("test").classes
    logits = classify.model(**classify.image_processor(image, return_tensors="pt")).logits
    assert top["label"] == classify.model.config.id2label[int(logits.argmax())]


def test_vit_resume_reproduces_the_uninterrupted_run(reference, tmp_path):
    from transformers import TrainerCallback

    class Stop(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step == 8

    run(recipe_from_dict(tiny_vit_recipe(tmp_path)), callbacks=[Stop()])
    resumed = run(recipe_from_dict(tiny_vit_recipe(tmp_path)))
    assert losses(resumed.log_history) == losses(reference.log_history)  # augmentation included
    final = [e["eval_accuracy"] for e in resumed.log_history if "eval_accuracy" in e][-1]
    assert final == [e["eval_accuracy"] for e in reference.log_history if "eval_accuracy" in e][-1]
    assert np.isfinite(final)


def test_the_pretrained_vit_fine_tunes_to_mnist_digits_with_a_kan_adapter(reference, tmp_path):
    """A `finetune:` section on the plait-vit task: the Fashion-MNIST model moves to the real MNIST digits
    (resized 20 -> 28 by the pretrained model's processor) with NeRA adapters on q/v and a trained head; the
    saved adapter reloads on the base and computes the trained model."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from plait.modeling.adapters import load_kan_adapter

    recipe = recipe_from_dict(
        {
            "model": {"arch": "plait-vit", "pretrained": str(reference.final_dir)},
            "data": {"source": "mnist-digits", "max_train_samples": 256, "max_eval_samples": 200},
            "optim": {"lr": 1e-2, "warmup_steps": 1, "weight_decay": 0.0},
            "train": {
                "output_dir": str(tmp_path / "digits"),
                "max_steps": 8,
                "micro_batch_size": 32,
                "precision": "fp32",
            },
            "eval": {"every": 0, "batch_size": 100},
            "checkpoint": {"every": 0},
            "logging": {"every": 1, "progress_bar": False},
            "finetune": {
                "method": "kan_nera",
                "task": "image_classification",
                "target_modules": ["q_proj", "v_proj"],
                "modules_to_save": ["classifier"],
                "r": 2,
            },
        }
    )
    result = run(recipe)
    curve = losses(result.log_history)
    assert curve[8] < curve[1]
    assert [e["step"] for e in result.log_history if "eval_accuracy" in e] == [8]  # the digits' test split
    trainable = {n for n, p in result.trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "classifier" in n for n in trainable), sorted(trainable)[:6]
    pretrained = AutoImageProcessor.from_pretrained(reference.final_dir)
    assert AutoImageProcessor.from_pretrained(result.final_dir).image_mean == pretrained.image_mean
    tuned = load_kan_adapter(
        AutoModelForImageClassification.from_pretrained(reference.final_dir), result.final_dir
    )
    tuned.eval()
    pixels = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(
        tuned(pixel_values=pixels).logits, result.trainer.model.eval()(pixel_values=pixels).logits
    )
