"""The shared Plait block: one token mixer and one MLP, each behind a pre-norm and a residual site.

    state = mixer_residual(state, h -> mixer(mixer_norm(h)))
    state = mlp_residual(state,   h -> mlp(mlp_norm(h)))

Which mixer (`layer_types[i]`), which MLP (`mlp_act`) and which residual (`residual`) are config switches
resolved through `plait.modeling.registry`; the decoder LM and the ViT both stack this block.
"""

from __future__ import annotations

import torch
from transformers.modeling_layers import GradientCheckpointingLayer

from .layers import RMSNorm
from .registry import MLP_ACTIVATIONS, RESIDUALS, TOKEN_MIXERS


class PlaitBlock(GradientCheckpointingLayer):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        residual = RESIDUALS[config.residual]
        self.mixer_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mixer = TOKEN_MIXERS[config.layer_types[layer_idx]](config, layer_idx)
        self.mixer_residual = residual.site(config, 2 * layer_idx)
        self.mlp_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = MLP_ACTIVATIONS[config.mlp_act](config)
        self.mlp_residual = residual.site(config, 2 * layer_idx + 1)

    def forward(
        self, state: torch.Tensor, output_attentions: bool = False, **mixer_kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`state` is the residual state; `mixer_kwargs` (positions, mask, cache) go to the mixer. Returns the
        next state and the mixer's attention weights (None unless asked for and the mixer has any)."""
        attention = None

        def mixer(h):
            nonlocal attention
            out, attention = self.mixer(
                self.mixer_norm(h), output_attentions=output_attentions, **mixer_kwargs
            )
            return out

        state = self.mixer_residual(state, mixer)
        return self.mlp_residual(state, lambda h: self.mlp(self.mlp_norm(h))), attention
