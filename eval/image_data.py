"""Image classification data readers, shared by training (`plait.train.vision`) and evaluation.

Every reader returns an `ImageSet`: the images and int64 labels plus the class names. Small sets live in
memory as one uint8 array [N, H, W] (grayscale) or [N, H, W, C]; an image folder is read lazily (file paths,
opened with PIL when an image is asked for), so ImageNet-size folders do not have to fit in memory.

- `read_idx(path)`: one IDX file (gzip or plain), the format of MNIST and Fashion-MNIST (LeCun et al.): magic
  0x0000 08 ND (unsigned bytes, ND dimensions), ND big-endian int32 sizes, then the data.
- `fashion_mnist(split, root)`: the four Fashion-MNIST IDX files (Xiao et al., 2017), 60,000 train and 10,000
  test 28x28 images of 10 clothing classes; `root` defaults to the data cache (`make data`).
- `mnist_digits(split, path)`: the 5,000 real MNIST digits of OpenCV's `digits.png`, 20x20 cells, 500 per
  class in row order (5 rows of 100 per class). OpenCV's sample splits it in halves; here the first 4 rows of
  each class (400 digits) are `train`, the last row (100) is `test`.
- `image_folder(root)`: one sub-folder per class (sorted names are the classes), image files inside.
- `from_datasets(dataset, image_column, label_column)`: a `datasets` split with an image column (PIL images,
  e.g. the hub's `zalando-datasets/fashion_mnist`) and an integer label column.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .data_cache import path as cache_path

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


@dataclass
class ImageSet:
    """Images (a uint8 array [N, H, W(, C)] or a list of file paths), labels int64 [N], class names."""

    images: np.ndarray | list[Path]
    labels: np.ndarray
    classes: list[str]

    def __post_init__(self):
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        if len(self.labels) and not 0 <= int(self.labels.min()) <= int(self.labels.max()) < len(self.classes):
            raise ValueError(f"labels must lie in [0, {len(self.classes)}) for classes {self.classes}")

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> Image.Image:
        """Image `i` as a PIL image (mode "L" for one channel, else as stored)."""
        item = self.images[i]
        if isinstance(item, np.ndarray):
            return Image.fromarray(item)
        with Image.open(item) as image:
            image.load()
            return image

    def subset(self, n: int | None) -> ImageSet:
        """The first `n` examples (all when `n` is None)."""
        if n is None or n >= len(self):
            return self
        return ImageSet(self.images[:n], self.labels[:n], self.classes)


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file as a uint8 array of its stored shape; gzip is detected by its magic bytes."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic {raw[:4].hex()})")
    if raw[2] != 0x08:
        raise ValueError(
            f"{path}: IDX element type 0x{raw[2]:02x} is not supported (only unsigned bytes, 0x08)"
        )
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but the file holds {data.size} values")
    return data.reshape(shape)


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).exists():
            return root / name
    raise FileNotFoundError(f"no {stem}(.gz) in {root}")


def fashion_mnist(split: str = "train", root: str | Path | None = None) -> ImageSet:
    """Fashion-MNIST `split` ("train" or "test") from the IDX files in `root` (default: the data cache)."""
    if split not in FASHION_MNIST_FILES:
        raise ValueError(
            f"split={split!r} is not a Fashion-MNIST split; valid choices: {list(FASHION_MNIST_FILES)}"
        )
    root = Path(root) if root is not None else cache_path("fashion-mnist")
    images_file, labels_file = FASHION_MNIST_FILES[split]
    images = read_idx(_find(root, images_file))
    labels = read_idx(_find(root, labels_file)).astype(np.int64)
    if images.ndim != 3:
        raise ValueError(f"{images_file} in {root} holds shape {images.shape}, expected [N, 28, 28]")
    return ImageSet(images, labels, list(FASHION_MNIST_CLASSES))


DIGIT_CELL, DIGITS_PER_ROW, DIGIT_ROWS_PER_CLASS = 20, 100, 5


def mnist_digits(split: str = "train", path: str | Path | None = None) -> ImageSet:
    """OpenCV's `digits.png` MNIST sample: `train` = 4 rows (400 digits) per class, `test` = the 5th row."""
    if split not in ("train", "test", "all"):
        raise ValueError(f"split={split!r} is not valid; valid choices: ['train', 'test', 'all']")
    path = Path(path) if path is not None else cache_path("mnist-digits")
    sheet = np.asarray(Image.open(path).convert("L"))
    rows = 10 * DIGIT_ROWS_PER_CLASS
    if sheet.shape != (rows * DIGIT_CELL, DIGITS_PER_ROW * DIGIT_CELL):
        raise ValueError(f"{path} is {sheet.shape[1]}x{sheet.shape[0]} pixels, expected 2000x1000")
    cells = sheet.reshape(rows, DIGIT_CELL, DIGITS_PER_ROW, DIGIT_CELL).transpose(
        0, 2, 1, 3
    )  # [row, col, 20, 20]
    row_in_class = np.arange(rows) % DIGIT_ROWS_PER_CLASS
    keep = {"train": row_in_class < 4, "test": row_in_class == 4, "all": row_in_class >= 0}[split]
    images = cells[keep].reshape(-1, DIGIT_CELL, DIGIT_CELL)
    labels = np.repeat(np.arange(rows)[keep] // DIGIT_ROWS_PER_CLASS, DIGITS_PER_ROW).astype(np.int64)
    return ImageSet(np.ascontiguousarray(images), labels, [str(d) for d in range(10)])


def image_folder(root: str | Path) -> ImageSet:
    """Class-per-folder images under `root` (`root/<class>/<image>`), read lazily."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{root} has no class sub-folders (expected {root}/<class>/<image files>)")
    files, labels = [], []
    for label, name in enumerate(classes):
        found = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise ValueError(f"class folder {root / name} holds no image files ({sorted(IMAGE_SUFFIXES)})")
        files += found
        labels += [label] * len(found)
    return ImageSet(files, np.asarray(labels, dtype=np.int64), classes)


def from_datasets(dataset, image_column: str = "image", label_column: str = "label") -> ImageSet:
    """A `datasets.Dataset` split with PIL images and integer labels, as an in-memory `ImageSet` (images of
    one size; a folder or a lazily read set suits larger data)."""
    for column in (image_column, label_column):
        if column not in dataset.column_names:
            raise ValueError(f"column {column!r} is not in the dataset; columns: {dataset.column_names}")
    feature = dataset.features[label_column]
    names = getattr(feature, "names", None)
    labels = np.asarray(dataset[label_column], dtype=np.int64)
    classes = list(names) if names else [str(i) for i in range(int(labels.max()) + 1)]
    images = np.stack([np.asarray(image) for image in dataset[image_column]])
    return ImageSet(images, labels, classes)


__all__ = [
    "ImageSet",
    "FASHION_MNIST_CLASSES",
    "read_idx",
    "fashion_mnist",
    "mnist_digits",
    "image_folder",
    "from_datasets",
]
