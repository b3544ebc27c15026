"""`PlaitViTConfig`: the ViT's config, the shared block's (`PlaitBlockConfig`) plus the image fields."""

from __future__ import annotations

import math

from huggingface_hub.dataclasses import strict

from .configuration_block import PlaitBlockConfig

PATCH_EMBEDDINGS = ("linear", "conv_stem")
POSITION_EMBEDDINGS = ("learned", "rope2d")
POOLINGS = ("cls", "mean")


@strict
class PlaitViTConfig(PlaitBlockConfig):
    r"""Configuration of the Plait vision transformer: the block's dimensions and switches
    (`PlaitBlockConfig`) plus, following transformers' `ViTConfig` names, the image geometry and the head.

    - `image_size`, `patch_size`, `num_channels`: square images cut into non-overlapping square patches.
    - `patch_embedding`: `"linear"`, ViT's patchify stem (one Conv2d, kernel = stride = `patch_size`), or
      `"conv_stem"`, the convolutional stem of Xiao et al., 2021 ("Early Convolutions Help Transformers See
      Better"): log2(`patch_size`) 3x3 stride-2 convolutions with BatchNorm and ReLU, then a 1x1 convolution
      to `hidden_size`: the same patch grid, better optimisation (needs a power-of-two `patch_size`).
    - `conv_stem_channels`: the output channels of the conv stem's 3x3 convolutions, one per halving
      (log2(`patch_size`) entries) or one per `conv_stem_strides` entry; `None` takes the paper's plan,
      doubling up to `hidden_size` / 2 at the last stage (48-96-192-384 before a 768-wide ViT-B). Wider
      stages are cheap next to the transformer.
    - `conv_stem_strides`: the stride (1 or 2) of each stem convolution, one per `conv_stem_channels` entry,
      their product `patch_size`; `None` means all 2. Stride-1 layers add 3x3 convolutions at the
      resolution they run at (e.g. `[1, 2, 2]`: one at full resolution before the halvings, for small images).
    - `position_embedding`: `"learned"` absolute positions added to the patch embeddings (ViT), or
      `"rope2d"` axial 2-D rotary positions inside attention (needs `head_dim` divisible by 4). Both adapt to
      other image sizes with `interpolate_pos_encoding=True`.
    - `pooling`: classify the final-normed `"cls"` token (prepended to the patches) or the `"mean"` patch.
    - `label_smoothing`: of the single-label cross-entropy loss; `classifier_dropout` before the head.

    The ViT is bidirectional (`is_causal = False`): attention sees every patch, softplus attention counts N
    over all patches, and ParaRNN mixers scan the patches in both raster directions.
    """

    model_type = "plait_vit"
    is_causal = False

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    mlp_act: str = "gelu"
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    patch_embedding: str = "linear"
    conv_stem_channels: list[int] | None = None
    conv_stem_strides: list[int] | None = None
    position_embedding: str = "learned"
    pooling: str = "cls"
    label_smoothing: float = 0.0
    classifier_dropout: float = 0.0

    def _validate(self) -> None:
        super()._validate()
        self._positive("image_size", "patch_size", "num_channels")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size={self.image_size} must be a multiple of patch_size={self.patch_size}"
            )
        if self.patch_embedding not in PATCH_EMBEDDINGS:
            raise ValueError(
                f"patch_embedding={self.patch_embedding!r} is not a valid choice; "
                f"valid choices: {list(PATCH_EMBEDDINGS)}"
            )
        if self.patch_embedding == "conv_stem" and (
            self.patch_size < 2 or self.patch_size & (self.patch_size - 1)
        ):
            raise ValueError(
                f"patch_size={self.patch_size} must be a power of two >= 2 for patch_embedding='conv_stem' "
                "(one stride-2 convolution per halving)"
            )
        for name in ("conv_stem_channels", "conv_stem_strides"):
            if getattr(self, name) is not None and self.patch_embedding != "conv_stem":
                raise ValueError(
                    f"{name}={getattr(self, name)!r} needs patch_embedding='conv_stem' "
                    f"(got {self.patch_embedding!r}); leave it null for the patchify stem"
                )
        if self.conv_stem_strides is not None:
            strides, channels = self.conv_stem_strides, self.conv_stem_channels
            if channels is None or len(strides) != len(channels):
                raise ValueError(
                    f"conv_stem_strides={strides!r} needs conv_stem_channels of the same length "
                    f"(got {channels!r}): one stride per stem convolution"
                )
            if any(s not in (1, 2) for s in strides) or math.prod(strides) != self.patch_size:
                raise ValueError(
                    f"conv_stem_strides={strides!r} must be 1s and 2s whose product is "
                    f"patch_size={self.patch_size}"
                )
        if self.conv_stem_channels is not None:
            strides = self.conv_stem_strides
            layers = len(strides) if strides else self.patch_size.bit_length() - 1
            if len(self.conv_stem_channels) != layers or min(self.conv_stem_channels) < 1:
                raise ValueError(
                    f"conv_stem_channels={self.conv_stem_channels!r} must hold {layers} positive channel "
                    "counts, one per stem convolution (by default one stride-2 convolution per halving of "
                    f"patch_size={self.patch_size})"
                )
        if self.position_embedding not in POSITION_EMBEDDINGS:
            raise ValueError(
                f"position_embedding={self.position_embedding!r} is not a valid choice; "
                f"valid choices: {list(POSITION_EMBEDDINGS)}"
            )
        if self.position_embedding == "rope2d" and self.head_dim % 4:
            raise ValueError(
                f"head_dim={self.head_dim} must be divisible by 4 for position_embedding='rope2d' "
                "(half of each head's frequency pairs per image axis)"
            )
        if self.pooling not in POOLINGS:
            raise ValueError(
                f"pooling={self.pooling!r} is not a valid choice; valid choices: {list(POOLINGS)}"
            )
        for name in ("label_smoothing", "classifier_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)!r} must lie in [0, 1)")

    @property
    def grid_size(self) -> int:
        """Patches per image side at `image_size`."""
        return self.image_size // self.patch_size


__all__ = ["PlaitViTConfig"]
