"""The shared Plait block: one token mixer and one MLP, each behind a pre-norm and a residual site.

    state = mixer_residual(state, h -> mixer(mixer_norm(h)))
    state = mlp_residual(state,   h -> mlp(mlp_norm(h)))

Which mixer (`layer_types[i]`), which MLP (`mlp_act`) and which residual (`residual`) are config switches
resolved through `plait.modeling.registry`; the decoder LM and the ViT both stack this block. With
`drop_path_rate` > 0 each sublayer's output goes through stochastic depth, at a rate rising linearly from 0
in the first block to `drop_path_rate` in the last.
"""

from __future__ import annotations

import torch
from transformers.modeling_layers import GradientCheckpointingLayer

from .layers import DropPath, RMSNorm
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
        depth = layer_idx / max(1, config.num_hidden_layers - 1)
        self.drop_path = DropPath(config.drop_path_rate * depth)

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
            return self.drop_path(out)

        state = self.mixer_residual(state, mixer)
        return self.mlp_residual(state, lambda h: self.drop_path(self.mlp(self.mlp_norm(h)))), attention


def run_stack(
    layers,
    streams,
    norm,
    embeddings: torch.Tensor,
    output_attentions: bool,
    output_hidden_states: bool,
    **block_kwargs,
) -> tuple[torch.Tensor, tuple | None, tuple | None]:
    """The backbone body shared by the LM and the ViT: expand the embeddings into the residual state once,
    run every block, collapse once and normalise. Returns the final hidden state, the per-layer hidden states
    ([batch, seq, hidden], the embeddings first and the normalised output last, as in Llama) and the
    attention weights, each tuple None unless asked for."""
    state = streams.expand(embeddings)
    hidden_states = [embeddings] if output_hidden_states else None
    attentions = [] if output_attentions else None
    for block in layers:
        state, attention = block(state, output_attentions=output_attentions, **block_kwargs)
        if output_hidden_states:
            hidden_states.append(streams.collapse(state))
        if output_attentions:
            attentions.append(attention)
    hidden = norm(streams.collapse(state))
    if output_hidden_states:
        hidden_states[-1] = hidden
    return (
        hidden,
        tuple(hidden_states) if output_hidden_states else None,
        tuple(attentions) if output_attentions else None,
    )
