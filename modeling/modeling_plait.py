"""Plait as transformers models: `PlaitModel` (the backbone) and `PlaitForCausalLM` (with `generate`)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .block import PlaitBlock
from .configuration_plait import PlaitConfig
from .hyper_connections import no_decay_parameter_names
from .layers import RMSNorm
from .positions import Rotary
from .registry import RESIDUALS


class PlaitPreTrainedModel(PreTrainedModel):
    """Weight init, attention back-ends and checkpointing shared by every Plait model.

    Component modules with parameters (or derived buffers) beyond Linear/Conv/Embedding/RMSNorm implement
    `init_plait_weights()` with `transformers.initialization` functions (which skip tensors already loaded
    from a checkpoint).
    """

    config: PlaitConfig
    config_class = PlaitConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["PlaitBlock"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_attention_backend = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if hasattr(module, "init_plait_weights"):
            module.init_plait_weights()

    def no_weight_decay(self) -> set[str]:
        """Names of parameters the optimizer must not decay: the static hyper-connection parameters. (Plait's
        weight-decay rule, `plait.modeling.weight_decay`, decays only matrices anyway.)"""
        return no_decay_parameter_names(self)


def positions_from_mask(
    attention_mask: torch.Tensor | None, past_length: int, length: int, device
) -> torch.Tensor:
    """Position ids of the new tokens: counted over real tokens only when a padding mask is given, so a
    left-padded sequence gets the same positions as the sequence alone."""
    if attention_mask is None or attention_mask.dim() != 2:
        return torch.arange(past_length, past_length + length, device=device).unsqueeze(0)
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.clamp(min=0)[:, -length:]


class PlaitModel(PlaitPreTrainedModel):
    """Token embedding → residual expand → Plait blocks → residual collapse → RMSNorm; causal attention
    (`create_causal_mask`) with 1-D rotary positions."""

    def __init__(self, config: PlaitConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.streams = RESIDUALS[config.residual].streams(config)
        self.layers = nn.ModuleList(PlaitBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary = Rotary(config.head_dim, config.rope_theta)
        self.gradient_checkpointing = False
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False  # recomputation in backward cannot replay cache updates
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        if position_ids is None:
            position_ids = positions_from_mask(
                attention_mask, past_length, inputs_embeds.shape[1], inputs_embeds.device
            )
        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            position_ids=position_ids,
        )
        position_embeddings = self.rotary(inputs_embeds, position_ids)

        state = self.streams.expand(inputs_embeds)
        all_hidden_states = [state] if output_hidden_states else None
        for block in self.layers:
            state = block(
                state,
                position_embeddings=position_embeddings,
                attention_mask=mask,
                past_key_values=past_key_values,
                position_ids=position_ids,
                **kwargs,
            )
            if output_hidden_states:
                all_hidden_states.append(state)
        hidden = self.norm(self.streams.collapse(state))
        if output_hidden_states:
            all_hidden_states[-1] = hidden  # as in Llama: the last entry is the normalised output
        return BaseModelOutputWithPast(
            last_hidden_state=hidden,
            past_key_values=past_key_values if use_cache else None,
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
        )


class PlaitForCausalLM(PlaitPreTrainedModel, GenerationMixin):
    """Plait decoder LM: `PlaitModel` plus an LM head; `labels` give the shifted next-token CE loss."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: PlaitConfig):
        super().__init__(config)
        self.model = PlaitModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        return_dict: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden = hidden[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            hidden = hidden[:, logits_to_keep]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs
            )
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
        )


__all__ = ["PlaitPreTrainedModel", "PlaitModel", "PlaitForCausalLM"]
