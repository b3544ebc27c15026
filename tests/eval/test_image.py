"""Image classification metrics of a transformers ViT (built from a config, no download, no torchvision)."""

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

from plait.eval.image import image_classification


@pytest.fixture(scope="module")
def vit_and_data():
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=16,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=6,
    )
    model = ViTForImageClassification(config).eval()
    processor = ViTImageProcessorPil(size={"height": 16, "width": 16})
    rng = np.random.default_rng(0)
    images = [PILImage.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)) for _ in range(30)]
    features = Features({"image": Image(), "label": ClassLabel(names=[f"c{i}" for i in range(6)])})
    data = Dataset.from_dict({"image": images, "label": [i % 6 for i in range(30)]}, features=features)
    return model, processor, data


def test_metrics_match_the_models_predictions(vit_and_data):
    model, processor, data = vit_and_data
    got = image_classification(model, processor, data, batch_size=7, progress=False)
    with torch.no_grad():
        pixels = processor(images=list(data["image"]), return_tensors="pt")["pixel_values"]
        logits = model(pixel_values=pixels).logits
    labels = torch.tensor(list(data["label"]))
    top5 = logits.topk(5, dim=-1).indices
    assert got["top1"] == pytest.approx((logits.argmax(-1) == labels).float().mean().item())
    assert got["top5"] == pytest.approx((top5 == labels[:, None]).any(-1).float().mean().item())
    confusion = np.asarray(got["confusion_matrix"])
    assert confusion.sum() == 30 and confusion.sum(axis=1).tolist() == [5] * 6
    assert got["classes"] == [f"c{i}" for i in range(6)]
    for i, name in enumerate(got["classes"]):
        assert got["per_class_accuracy"][name] == pytest.approx(confusion[i, i] / 5)


def test_a_classifier_that_knows_the_labels_scores_100_percent(vit_and_data):
    model, processor, data = vit_and_data
    # Label i images are filled with grey level 40*i: a classifier rigged on the mean pixel knows them.
    images = [PILImage.new("RGB", (16, 16), (40 * (i % 6),) * 3) for i in range(12)]
    rigged_data = Dataset.from_dict({"image": images, "label": [i % 6 for i in range(12)]})

    class MeanPixel(torch.nn.Module):
        config, dtype = model.config, torch.float32

        def forward(self, pixel_values):
            level = (pixel_values.mean(dim=(1, 2, 3)) * 0.5 + 0.5) * 255 / 40  # un-normalise, then 40-steps
            logits = -((torch.arange(6)[None] - level[:, None]) ** 2)
            return type("Out", (), {"logits": logits})()

        def parameters(self):
            return iter([torch.zeros(1)])

    got = image_classification(MeanPixel(), processor, rigged_data, progress=False)
    assert got["top1"] == 1.0 and got["top5"] == 1.0


def test_labels_outside_the_model_are_an_error(vit_and_data):
    model, processor, data = vit_and_data
    bad = data.cast_column("label", data.features["label"].__class__(num_classes=10)).map(
        lambda x: {"label": 9}
    )
    with pytest.raises(ValueError, match="outside the model's 6 classes"):
        image_classification(model, processor, bad, progress=False)
