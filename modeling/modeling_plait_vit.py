"""Plait vision transformer as transformers models, following transformers' ViT conventions:
`PlaitViTModel` (the backbone) and `PlaitViTForImageClassification` (with `problem_type` losses).

Patch embedding (Dosovitskiy et al., 2021, "An Image is Worth 16x16 Words", eq. 1): a Conv2d with kernel =
stride = `patch_size` (or the convolutional stem of Xiao et al., 2021, `ConvStem`), flattened to a row-major
(raster) sequence of patches, an optional CLS token in front, then learned absolute positions or 2-D rotary
positions (`plait.modeling.positions`). The blocks are the same `PlaitBlock` the LM stacks, so every switch
(residual, MLP, attention core, token mixer) works unchanged; the ViT's config is bidirectional
(`is_causal = False`) and the blocks get no attention mask: every token sees every token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.utils import can_return_tuple

from .block import PlaitBlock, run_stack
from .configuration_plait_vit import PlaitViTConfig
from .layers import RMSNorm
from .modeling_plait import PlaitPreTrainedModel
from .positions import LearnedPositions, Rotary2D
from .registry import RESIDUALS


class PlaitViTPreTrainedModel(PlaitPreTrainedModel):
    config: PlaitViTConfig
    config_class = PlaitViTConfig
    base_model_prefix = "vit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["PlaitViTEmbeddings", "PlaitBlock"]

    def no_weight_decay(self) -> set[str]:
        """The static hyper-connection parameters, the CLS token and the learned positions (as in timm)."""
        names = {n for n, _ in self.named_parameters() if n.endswith(("cls_token", "positions.weight"))}
        return super().no_weight_decay() | names


class ConvStem(nn.Sequential):
    """Xiao et al., 2021, "Early Convolutions Help Transformers See Better", sec. 3: the patchify stem
    replaced by a stack of 3x3 stride-2 convolutions (each followed by BatchNorm and ReLU) that halves the
    resolution log2(patch_size) times, then a 1x1 convolution to the model width. The patch grid is the
    patchify stem's. By default channels double per stage up to hidden_size / 2 at the last (the paper's
    ViT_C pattern, e.g. 48-96-192-384 before a 768-wide model); `widths` sets them per convolution and
    `strides` (default all 2) lets some of them keep the resolution (stride 1)."""

    def __init__(
        self,
        channels: int,
        hidden_size: int,
        patch_size: int,
        widths: list[int] | None = None,
        strides: list[int] | None = None,
    ):
        stages = patch_size.bit_length() - 1
        widths = widths or [max(8, hidden_size >> (stages - i)) for i in range(stages)]
        strides = strides or [2] * len(widths)
        layers: list[nn.Module] = []
        for width, stride in zip(widths, strides, strict=True):
            layers += [
                nn.Conv2d(channels, width, kernel_size=3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            channels = width
        layers.append(nn.Conv2d(channels, hidden_size, kernel_size=1))
        super().__init__(*layers)


class PlaitViTEmbeddings(nn.Module):
    """Pixels [B, C, H, W] -> CLS token (with `pooling="cls"`) + one embedding per patch, raster order, plus
    learned positions when the config uses them; also returns the patch grid (rows, cols)."""

    def __init__(self, config: PlaitViTConfig):
        super().__init__()
        self.config = config
        self.patch_size = config.patch_size
        if config.patch_embedding == "conv_stem":
            self.projection = ConvStem(
                config.num_channels,
                config.hidden_size,
                config.patch_size,
                config.conv_stem_channels,
                config.conv_stem_strides,
            )
        else:
            self.projection = nn.Conv2d(
                config.num_channels,
                config.hidden_size,
                kernel_size=config.patch_size,
                stride=config.patch_size,
            )
        self.prefix = 1 if config.pooling == "cls" else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if self.prefix else None
        grid = (config.grid_size, config.grid_size)
        self.positions = (
            LearnedPositions(config.hidden_size, grid, self.prefix, config.initializer_range)
            if config.position_embedding == "learned"
            else None
        )

    @property
    def projection_dtype(self) -> torch.dtype:
        return next(self.projection.parameters()).dtype

    def init_plait_weights(self) -> None:
        if self.cls_token is not None:
            init.trunc_normal_(self.cls_token, std=self.config.initializer_range)

    def forward(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        if pixel_values.dim() != 4 or pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"pixel_values must be [batch, num_channels={self.config.num_channels}, height, width]; "
                f"got shape {tuple(pixel_values.shape)}"
            )
        height, width = pixel_values.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"image size {height}x{width} is not a multiple of patch_size={self.patch_size}")
        x = self.projection(pixel_values.to(self.projection_dtype))
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)  # [B, rows * cols, hidden], row-major
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x), dim=1)
        if self.positions is not None:
            x = self.positions(x, grid, interpolate_pos_encoding)
        return x, grid


class PlaitViTModel(PlaitViTPreTrainedModel):
    """Patch embedding → residual expand → Plait blocks (bidirectional) → residual collapse → RMSNorm; the
    pooler output is the final-normed CLS token or the mean over patches (`config.pooling`)."""

    def __init__(self, config: PlaitViTConfig):
        super().__init__(config)
        self.embeddings = PlaitViTEmbeddings(config)
        self.streams = RESIDUALS[config.residual].streams(config)
        self.layers = nn.ModuleList(PlaitBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary = (
            Rotary2D(config.head_dim, config.rope_theta, (config.grid_size, config.grid_size))
            if config.position_embedding == "rope2d"
            else None
        )
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.projection

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        interpolate_pos_encoding: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """As transformers' `ViTModel.forward`. `hidden_states` are [batch, tokens, hidden] also for
        multi-stream residuals (the state collapsed as before the final norm), the first entry the
        embeddings; `return_dict=False` gives the output as a tuple."""
        if pixel_values is None:
            raise ValueError("pass pixel_values")
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        hidden, grid = self.embeddings(pixel_values, bool(interpolate_pos_encoding))
        position_embeddings = None
        if self.rotary is not None:
            position_embeddings = self.rotary(
                hidden, grid, self.embeddings.prefix, bool(interpolate_pos_encoding)
            )
        hidden, hidden_states, attentions = run_stack(
            self.layers,
            self.streams,
            self.norm,
            hidden,
            output_attentions,
            output_hidden_states,
            position_embeddings=position_embeddings,
            attention_mask=None,  # bidirectional: every token sees every token
            **kwargs,
        )
        pooled = hidden[:, 0] if self.embeddings.prefix else hidden.mean(dim=1)
        return BaseModelOutputWithPooling(
            last_hidden_state=hidden,
            pooler_output=pooled,
            hidden_states=hidden_states,
            attentions=attentions,
        )


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, config: PlaitViTConfig) -> torch.Tensor:
    """transformers' `problem_type` rule: inferred as regression (1 label), single-label (integer labels) or
    multi-label classification. Single-label also takes class-probability targets [B, num_labels] (mixup,
    cutmix) and uses `config.label_smoothing`."""
    if config.problem_type is None:
        if config.num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        if config.num_labels == 1:
            return F.mse_loss(logits.squeeze(-1).float(), labels.float().view(-1))
        return F.mse_loss(logits.float(), labels.float())
    if config.problem_type == "single_label_classification":
        target = labels.float() if labels.is_floating_point() else labels.view(-1)
        return F.cross_entropy(
            logits.float().view(-1, config.num_labels), target, label_smoothing=config.label_smoothing
        )
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


class PlaitViTForImageClassification(PlaitViTPreTrainedModel):
    """`PlaitViTModel` plus a linear head on the pooled token; `labels` give the `problem_type` loss."""

    # The loss is a mean over the examples of this batch and takes no `num_items_in_batch`; without this
    # flag `Trainer` (seeing `**kwargs`) would multiply it by the world size and sum it over accumulation.
    accepts_loss_kwargs = False

    def __init__(self, config: PlaitViTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vit = PlaitViTModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = (
            nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        )
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        interpolate_pos_encoding: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput:
        outputs = self.vit(
            pixel_values,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            interpolate_pos_encoding=interpolate_pos_encoding,
            **kwargs,
        )
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = None if labels is None else classification_loss(logits, labels, self.config)
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


__all__ = ["PlaitViTPreTrainedModel", "PlaitViTModel", "PlaitViTForImageClassification"]
