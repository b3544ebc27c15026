"""The `plait-vit` task: `PlaitViTForImageClassification` on an image classification set.

Data come from `plait.eval.image_data` (Fashion-MNIST IDX files, OpenCV's MNIST digits, class-per-folder
directories, `datasets` splits). Each example becomes `pixel_values` [C, H, W] float32 exactly as the saved
`PlaitViTImageProcessor` prepares an image at inference (resize with bilinear filtering to the model's image
size, rescale by 1/255, normalise per channel); in-memory sets of the model's size take a vectorised path
that gives the same values.

Augmentation (training split only, `Augmentation`): a random crop of the image zero-padded by
`data.crop_padding` pixels per side, random left-right flips, and optionally mixup (Zhang et al., 2018,
"mixup: Beyond Empirical Risk Minimization", eq. 1: x = λ·x_i + (1-λ)·x_j, y likewise, λ ~ Beta(α, α)) or
CutMix (Yun et al., 2019, "CutMix", eq. 1-2: a box of area (1-λ) of the image pasted from x_j, y mixed by
the area actually pasted). Mixing is per example, with a partner drawn from the whole training set (timm's
"elem" mode draws it from the batch); mixed examples carry class-probability targets, which the ViT's
loss takes (`classification_loss`). When both α are set, each mixed example uses one of the two, evenly.

All randomness is a function of (seed, epoch, example index), so it does not depend on the data order or on
worker processes, and a resumed run augments each example as the uninterrupted run would (the trainer's
seeded sampler restores the order; `EpochCallback` tells the data the epoch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import TrainerCallback, TrainingArguments, default_data_collator, set_seed

from plait.eval.image_data import ImageSet, fashion_mnist, from_datasets, image_folder, mnist_digits

from .attention_backend import attn_implementation
from .pretrained import load_pretrained
from .recipe import ImageDataRecipe, Recipe, RecipeError, model_config
from .task import Task


def load_split(data: ImageDataRecipe, split: str) -> ImageSet:
    """One split of the recipe's data set."""
    if data.source == "folder" and not data.path:
        raise RecipeError("data.path is not set but data.source='folder'; give the root of the split folders")
    try:
        if data.source == "fashion-mnist":
            images = fashion_mnist(split, data.path)
        elif data.source == "mnist-digits":
            images = mnist_digits(split, data.path)
        elif data.source == "folder":
            images = image_folder(f"{data.path}/{split}")
        else:
            from datasets import load_dataset

            dataset = load_dataset(data.name, data.subset, split=split, cache_dir=data.cache_dir)
            images = from_datasets(dataset, data.image_column, data.label_column)
    except (FileNotFoundError, ValueError, ConnectionError) as e:
        raise RecipeError(f"data (source={data.source!r}, split={split!r}): {e}") from e
    limit = data.max_train_samples if split == data.train_split else data.max_eval_samples
    return images.subset(limit)


def channel_statistics(images: ImageSet, data: ImageDataRecipe, channels: int) -> tuple[list, list]:
    """The recipe's mean/std, else the training images' per-channel statistics (in memory) or 0.5 / 0.5."""
    if data.image_mean is not None and data.image_std is not None:
        mean, std = list(data.image_mean), list(data.image_std)
    elif isinstance(images.images, np.ndarray):
        pixels = images.images.reshape(len(images), -1, channels).astype(np.float64) / 255.0
        mean = pixels.mean(axis=(0, 1)).round(4).tolist()
        std = pixels.std(axis=(0, 1)).round(4).tolist()
    else:
        mean, std = [0.5] * channels, [0.5] * channels
    if len(mean) != channels or len(std) != channels:
        raise RecipeError(
            f"data.image_mean/image_std have {len(mean)}/{len(std)} values but the model has "
            f"num_channels={channels}"
        )
    return mean, std


@dataclass(frozen=True)
class Augmentation:
    """The training split's augmentation (the recipe's `data.*` fields of the same names)."""

    crop_padding: int = 0
    horizontal_flip: bool = False
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_probability: float = 1.0

    @classmethod
    def from_recipe(cls, data: ImageDataRecipe) -> Augmentation:
        return cls(**{name: getattr(data, name) for name in cls.__dataclass_fields__})

    @property
    def mixes(self) -> bool:
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.mix_probability > 0


class ImageClassificationDataset(torch.utils.data.Dataset):
    """`{"pixel_values", "labels"}` examples of an `ImageSet`, prepared as the processor does, optionally
    augmented (`Augmentation`) as a function of (seed, epoch, index). With mixing on, `labels` are class
    probabilities [num_classes] for every example (one-hot where it was not mixed), else class ids."""

    def __init__(
        self,
        images: ImageSet,
        processor,
        image_size: int,
        channels: int,
        augmentation: Augmentation = Augmentation(),
        seed: int = 0,
    ):
        self.images, self.processor = images, processor
        self.image_size, self.channels = image_size, channels
        self.augmentation, self.seed, self.epoch = augmentation, seed, 0
        self.num_classes = len(images.classes)
        self.mean = np.asarray(processor.image_mean, dtype=np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(processor.image_std, dtype=np.float32).reshape(-1, 1, 1)
        stored = images.images
        self.fast = (
            isinstance(stored, np.ndarray)
            and stored.shape[1:3] == (image_size, image_size)
            and (stored.ndim == 3) == (channels == 1)
            and (stored.ndim == 3 or stored.shape[3] == channels)
        )

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def pixels(self, index: int) -> np.ndarray:
        """Image `index` as float32 [C, H, W] in [0, 1] at the model's size (before normalisation)."""
        if self.fast:
            image = self.images.images[index]
            image = image[None] if image.ndim == 2 else image.transpose(2, 0, 1)
            return image.astype(np.float32) / 255.0
        out = self.processor(
            self.images.image(index), do_normalize=False, return_tensors="np", input_data_format=None
        )
        return out["pixel_values"][0].astype(np.float32)

    def augmented(self, index: int) -> np.ndarray:
        """`pixels(index)` randomly cropped and flipped (when the augmentation asks for it)."""
        image, aug = self.pixels(index), self.augmentation
        rng = np.random.default_rng((self.seed, self.epoch, index))
        if aug.crop_padding:
            p = aug.crop_padding
            padded = np.pad(image, ((0, 0), (p, p), (p, p)))
            top, left = rng.integers(0, 2 * p + 1, size=2)
            image = padded[:, top : top + self.image_size, left : left + self.image_size]
        if aug.horizontal_flip and rng.random() < 0.5:
            image = image[:, :, ::-1]
        return image

    def mixed(self, index: int, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Image `index` mixed with a partner (or not, with probability 1 - mix_probability), and its
        class-probability target."""
        aug = self.augmentation
        target = np.zeros(self.num_classes, dtype=np.float32)
        target[int(self.images.labels[index])] = 1.0
        rng = np.random.default_rng((self.seed, self.epoch, index, 1))  # a stream apart from crop and flip
        if rng.random() >= aug.mix_probability:
            return image, target
        partner = int(rng.integers(len(self)))
        other = self.augmented(partner)
        cutmix = aug.cutmix_alpha > 0 and (aug.mixup_alpha <= 0 or rng.random() < 0.5)
        alpha = aug.cutmix_alpha if cutmix else aug.mixup_alpha
        lam = float(rng.beta(alpha, alpha))
        if cutmix:  # a box of area (1 - λ) centred anywhere, clipped to the image; λ = the area kept
            size = self.image_size
            cut = int(size * np.sqrt(1.0 - lam))
            cy, cx = rng.integers(0, size, size=2)
            y0, y1 = np.clip([cy - cut // 2, cy + cut // 2], 0, size)
            x0, x1 = np.clip([cx - cut // 2, cx + cut // 2], 0, size)
            image = image.copy()
            image[:, y0:y1, x0:x1] = other[:, y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / size**2
        else:
            image = lam * image + (1.0 - lam) * other
        target *= lam
        target[int(self.images.labels[partner])] += 1.0 - lam
        return image, target

    def __getitem__(self, index: int) -> dict:
        image = self.augmented(index)
        label = int(self.images.labels[index])
        if self.augmentation.mixes:
            image, label = self.mixed(index, image)
        pixel_values = (image - self.mean) / self.std
        return {
            "pixel_values": torch.from_numpy(np.ascontiguousarray(pixel_values, dtype=np.float32)),
            "labels": torch.from_numpy(label) if isinstance(label, np.ndarray) else label,
        }


class EpochCallback(TrainerCallback):
    """Tells the training data the epoch at every epoch start (augmentation is seeded by it)."""

    def __init__(self, dataset: ImageClassificationDataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(int(state.epoch or 0))


def accuracy(prediction) -> dict[str, float]:
    logits, labels = prediction.predictions, prediction.label_ids
    logits = logits[0] if isinstance(logits, tuple) else logits
    return {"accuracy": float((logits.argmax(-1) == labels).mean())}


def build_vit_model(recipe: Recipe, classes: list[str]):
    """A new ViT from `model.config` with one output per class, or `model.pretrained` loaded tensor for
    tensor (`load_pretrained`); a pretrained head for another class count is replaced by a fresh one."""
    from plait.modeling import PlaitViTForImageClassification

    labels = {"id2label": dict(enumerate(classes)), "label2id": {c: i for i, c in enumerate(classes)}}
    if recipe.model.pretrained:
        model = load_pretrained(
            recipe.model.pretrained,
            PlaitViTForImageClassification,
            attn_implementation=attn_implementation(recipe),
            dtype=torch.float32,
        )
        if model.config.num_labels != len(classes):
            model.classifier = torch.nn.Linear(model.config.hidden_size, len(classes))
            model._init_weights(model.classifier)
        model.config.update({"problem_type": "single_label_classification", **labels})
        return model
    config = model_config(recipe, problem_type="single_label_classification", **labels)
    config._attn_implementation = attn_implementation(recipe)
    return PlaitViTForImageClassification(config)


def build_vit_task(recipe: Recipe, args: TrainingArguments) -> Task:
    from plait.modeling import PlaitViTImageProcessor

    data = recipe.data
    train_images = load_split(data, data.train_split)
    eval_images = load_split(data, data.eval_split) if data.eval_split else None
    set_seed(recipe.train.seed)  # the initial weights depend only on the seed
    model = build_vit_model(recipe, train_images.classes)
    config = model.config
    if recipe.model.pretrained and data.image_mean is None:  # normalise as the pretrained model saw images
        processor = PlaitViTImageProcessor.from_pretrained(recipe.model.pretrained)
    else:
        mean, std = channel_statistics(train_images, data, config.num_channels)
        processor = PlaitViTImageProcessor(
            size={"height": config.image_size, "width": config.image_size},
            image_mean=mean,
            image_std=std,
            do_convert_rgb=config.num_channels == 3,
        )
    callbacks = []
    if recipe.finetune.method is not None:  # e.g. LoRA / NeRA on the pretrained ViT, a new head trained
        from .finetune import apply_recipe_method

        model, callbacks = apply_recipe_method(model, recipe)
    common = dict(processor=processor, image_size=config.image_size, channels=config.num_channels)
    augmentation = Augmentation.from_recipe(data)
    train_dataset = ImageClassificationDataset(
        train_images, augmentation=augmentation, seed=recipe.train.seed, **common
    )
    return Task(
        model=model,
        train_dataset=train_dataset,
        data_collator=default_data_collator,
        processing_class=processor,
        tokens_per_sample=config.grid_size**2 + model.vit.embeddings.prefix,
        eval_dataset=ImageClassificationDataset(eval_images, **common) if eval_images is not None else None,
        compute_metrics=accuracy,
        callbacks=[EpochCallback(train_dataset), *callbacks],
        evaluate_at_end=eval_images is not None,
    )
