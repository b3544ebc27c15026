"""Image data readers: IDX files, Fashion-MNIST and OpenCV's MNIST digits from the data cache,
class-per-folder directories and `datasets` image columns."""

import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from plait.eval.data_cache import path as cache_path
from plait.eval.image_data import (
    FASHION_MNIST_CLASSES,
    fashion_mnist,
    from_datasets,
    image_folder,
    mnist_digits,
    read_idx,
)


def write_idx(path, array: np.ndarray, compress: bool) -> None:
    raw = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_idx_round_trip_and_bad_files(tmp_path, compress):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x.idx", array, compress)
    assert np.array_equal(read_idx(tmp_path / "x.idx"), array)
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">i", 5) + b"\x01\x02")
    with pytest.raises(ValueError, match=r"shape \(5,\) but the file holds 2"):
        read_idx(tmp_path / "short")


def test_fashion_mnist_from_the_data_cache():
    train, test = fashion_mnist("train"), fashion_mnist("test")
    assert train.images.shape == (60000, 28, 28) and test.images.shape == (10000, 28, 28)
    assert train.classes == FASHION_MNIST_CLASSES
    assert np.array_equal(np.bincount(train.labels), [6000] * 10)  # balanced, as published
    assert np.array_equal(np.bincount(test.labels), [1000] * 10)
    assert train.labels[:5].tolist() == [9, 0, 0, 3, 0]
    assert train.image(0).mode == "L" and train.image(0).size == (28, 28)
    with pytest.raises(ValueError, match="valid choices"):
        fashion_mnist("validation")


def test_mnist_digits_cells_in_row_order():
    train, test = mnist_digits("train"), mnist_digits("test")
    assert train.images.shape == (4000, 20, 20) and test.images.shape == (1000, 20, 20)
    assert np.array_equal(np.bincount(train.labels), [400] * 10)
    assert np.array_equal(np.bincount(test.labels), [100] * 10)
    sheet = np.asarray(Image.open(cache_path("mnist-digits")).convert("L"))
    # class 3 starts on cell row 15; its 5th row (cell row 19) is the test split
    assert np.array_equal(train.images[3 * 400 + 101], sheet[16 * 20 : 17 * 20, 1 * 20 : 2 * 20])
    assert np.array_equal(test.images[3 * 100 + 7], sheet[19 * 20 : 20 * 20, 7 * 20 : 8 * 20])


def test_image_folder_reads_lazily_with_sorted_class_names(tmp_path):
    for name, value in (("cat", 10), ("ant", 200)):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.fromarray(np.full((5, 6), value + i, dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    images = image_folder(tmp_path)
    assert images.classes == ["ant", "cat"] and images.labels.tolist() == [0, 0, 1, 1]
    assert np.asarray(images.image(3)).tolist() == np.full((5, 6), 11).tolist()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no image files"):
        image_folder(tmp_path)


def test_datasets_image_column():
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    pictures = [Image.fromarray(np.full((4, 4), i, dtype=np.uint8)) for i in range(3)]
    features = Features({"img": ImageFeature(), "y": ClassLabel(names=["a", "b"])})
    dataset = Dataset.from_dict({"img": pictures, "y": [1, 0, 1]}, features=features)
    images = from_datasets(dataset, "img", "y")
    assert images.classes == ["a", "b"] and images.labels.tolist() == [1, 0, 1]
    assert images.images.shape == (3, 4, 4) and images.images[2, 0, 0] == 2
    with pytest.raises(ValueError, match="column 'image' is not in the dataset"):
        from_datasets(dataset)
