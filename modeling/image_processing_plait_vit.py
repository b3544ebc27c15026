"""`PlaitViTImageProcessor`: resize, rescale and normalise images for the Plait ViT with PIL and NumPy.

transformers' PIL backend (`PilBackend`, transformers >= 5.4) does the work; torchvision, which the
default ViT processor uses, does not work beside Plait's CPU torch build. A processor whose `image_mean` holds
one value is for a grayscale model (Fashion-MNIST, MNIST): it turns colour input (the image-classification
pipeline loads every image as RGB) into one luminance channel, as PIL's mode "L" does (ITU-R 601-2).
"""

from __future__ import annotations

import numpy as np
from transformers.image_processing_backends import PilBackend
from transformers.image_utils import IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD, PILImageResampling

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601-2, PIL's RGB -> "L"


class PlaitViTImageProcessor(PilBackend):
    """Defaults match a 224x224 RGB ViT; a task saves its own sizes and statistics with the model."""

    model_input_names = ["pixel_values"]
    resample = PILImageResampling.BILINEAR
    image_mean = IMAGENET_STANDARD_MEAN
    image_std = IMAGENET_STANDARD_STD
    size = {"height": 224, "width": 224}
    do_resize = True
    do_rescale = True
    do_normalize = True

    def process_image(self, image, *args, **kwargs) -> np.ndarray:
        """The PIL backend's channel-first array, reduced to luminance for a one-channel model."""
        image = super().process_image(image, *args, **kwargs)
        if np.size(self.image_mean) == 1 and image.shape[0] in (3, 4):
            luma = np.tensordot(LUMA, image[:3].astype(np.float32), axes=1)[None]
            image = luma.round().astype(image.dtype) if image.dtype == np.uint8 else luma.astype(image.dtype)
        return image


__all__ = ["PlaitViTImageProcessor"]
