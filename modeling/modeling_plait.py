"""Plait as transformers models: `PlaitModel` (the backbone) and `PlaitForCausalLM` (with `generate`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from plait.kernels.linear_cross_entropy import linear_cross_entropy_chunked, z_loss

from .block import PlaitBlock, run_stack
from .configuration_plait import PlaitConfig
from .hyper_connections import no_decay_parameter_names
from .layers import RMSNorm
from .positions import Rotary
from .registry import RESIDUALS
from .softplus_attention import DOCUMENT_AWARE_ATTENTIONS
from .transformers_compat import (
    LEGACY_CACHE_NAMES,
    cache_output,
    causal_mask,
    legacy_cache_names,
    output_cache,
    take_cache,
)


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
    _skip_keys_device_placement = ["cache", *LEGACY_CACHE_NAMES]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if hasattr(module, "init_plait_weights"):
            module.init_plait_weights()

    @property
    def _can_compile_fullgraph(self) -> bool:
        """Whether `torch.compile(fullgraph=True)` traces this configuration without a graph break (tested per
        variant; transformers reads it to auto-compile `generate` with a static cache on GPUs). Two components
        break the graph by design: ParaRNN's Newton solve (`torch.autograd.grad` for the Jacobians inside the
        forward) and JPmHC's bistochastic mixer (a convergence test decides the Newton step count)."""
        config = self.config
        rnn = any(kind.startswith("pararnn") for kind in config.layer_types)
        bistochastic = config.residual == "jpmhc" and config.jpmhc_manifold == "bistochastic"
        return not (rnn or bistochastic)

    def no_weight_decay(self) -> set[str]:
        """Names of parameters the optimizer must not decay: the static hyper-connection parameters. (Plait's
        weight-decay rule, `plait.modeling.weight_decay`, decays only matrices anyway.)"""
        return no_decay_parameter_names(self)


def positions_from_mask(
    attention_mask: torch.Tensor | None, past_length: int, length: int, device
) -> torch.Tensor:
    """Position ids of the new tokens: counted over real tokens only when a padding mask is given, so a
    left-padded sequence gets the same positions as the sequence alone."""
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2:
        return torch.arange(past_length, past_length + length, device=device).unsqueeze(0)
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.clamp(min=0)[:, -length:]


def check_input_ids(input_ids: torch.Tensor, vocab_size: int) -> None:
    """[batch, seq] integer ids inside the vocabulary, or a ValueError saying what is wrong (on a GPU an id
    out of range would otherwise be a device-side assert that ends the process). The range check costs one
    small device-to-host copy; it is skipped while compiling."""
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be [batch, seq] with seq >= 1, got shape {tuple(input_ids.shape)}")
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    if torch.compiler.is_compiling() or input_ids.numel() == 0:
        return
    low, high = (int(v) for v in torch.aminmax(input_ids))
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(f"input_ids holds token id {bad}, outside the vocabulary [0, {vocab_size})")


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

    @legacy_cache_names
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | dict | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast | tuple:
        """As Llama's forward. The cache may also be passed as `past_key_values` (its name before
        transformers 5.24; from 5.24 on it warns as Llama does). `attention_mask` is a 2-D padding mask, a
        prepared 4-D mask, or the per-layer-type dict `generate` builds for static caches. `hidden_states`
        are [batch, seq, hidden] also for multi-stream residuals (the state collapsed as before the final
        norm). With `output_attentions=True`, `attentions` has one entry per layer, so entry i is layer i: in
        a hybrid model a recurrent (ParaRNN) layer has no attention matrix and its entry is `None`
        (transformers' own hybrids, e.g. Jamba, record attention layers only: a shorter tuple)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if input_ids is not None:
            check_input_ids(input_ids, self.config.vocab_size)
        cache = take_cache(cache, kwargs)
        config = self.config
        use_cache = config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False  # recomputation in backward cannot replay cache updates
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        return_dict = config.return_dict if return_dict is None else return_dict
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and cache is None:
            cache = DynamicCache(config=config)
        past_length = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = positions_from_mask(
                attention_mask, past_length, inputs_embeds.shape[1], inputs_embeds.device
            )
        if isinstance(attention_mask, dict):  # prepared by `generate` for a static cache
            mask = attention_mask["full_attention"]
        elif config.attention in DOCUMENT_AWARE_ATTENTIONS and attention_mask is None and cache is None:
            mask = None  # causal + packed documents, read from position_ids by the core: no L×L mask
        else:
            mask = causal_mask(config, inputs_embeds, attention_mask, cache, position_ids)
        position_embeddings = self.rotary(inputs_embeds, position_ids)

        hidden, hidden_states, attentions = run_stack(
            self.layers,
            self.streams,
            self.norm,
            inputs_embeds,
            output_attentions,
            output_hidden_states,
            position_embeddings=position_embeddings,
            attention_mask=mask,
            cache=cache,
            position_ids=position_ids,
            **kwargs,
        )
        outputs = BaseModelOutputWithPast(
            last_hidden_state=hidden,
            hidden_states=hidden_states,
            attentions=attentions,
            **cache_output(cache if use_cache else None),
        )
        return outputs if return_dict else outputs.to_tuple()


class LMHead(nn.Linear):
    """The vocabulary projection. Called with `targets` it returns the cross-entropy instead of the logits,
    in chunks of `chunk_size` tokens that never form the logits tensor (`plait.kernels.linear_cross_entropy`).
    The loss is computed inside the head's own call so engines that gather parameters per module call
    (DeepSpeed ZeRO-3) have its weight in hand."""

    def forward(
        self,
        hidden,
        targets=None,
        chunk_size: int = 0,
        ignore_index: int = -100,
        normaliser=None,
        z_loss_weight: float = 0.0,
    ):
        if targets is None:
            return F.linear(hidden, self.weight, self.bias)
        hidden = hidden.reshape(-1, hidden.shape[-1])
        return linear_cross_entropy_chunked(
            hidden, self.weight, targets.reshape(-1), ignore_index, normaliser, chunk_size, z_loss_weight
        )


class PlaitForCausalLM(PlaitPreTrainedModel, GenerationMixin):
    """Plait decoder LM: `PlaitModel` plus an LM head; `labels` give the shifted next-token CE loss. In
    training with `config.loss_chunk_size` set, that loss comes from the chunked head (no logits tensor: the
    output's `logits` is None); in eval mode, or with `labels=None`, the logits are computed as usual."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: PlaitConfig):
        super().__init__(config)
        self.model = PlaitModel(config)
        self.lm_head = LMHead(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @legacy_cache_names
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | dict | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        return_dict: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple:
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=take_cache(cache, kwargs),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        if labels is not None and self._chunked_loss(logits_to_keep):
            loss = self.lm_head(
                hidden,
                targets=_shifted(labels, kwargs).to(hidden.device),
                chunk_size=self.config.loss_chunk_size,
                normaliser=kwargs.get("num_items_in_batch"),
                z_loss_weight=self.config.z_loss,
            )
            return self._output(loss, None, outputs, return_dict)
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
            if self.config.z_loss and self.training:
                targets = _shifted(labels, kwargs).to(logits.device).reshape(-1)
                flat = logits.reshape(-1, logits.shape[-1])
                normaliser = kwargs.get("num_items_in_batch")
                loss = loss + self.config.z_loss * z_loss(flat, targets, normaliser=normaliser)
        return self._output(loss, logits, outputs, return_dict)

    def _chunked_loss(self, logits_to_keep) -> bool:
        """Train with the chunked head: asked for by the config, in training mode, all positions kept, and the
        head still Plait's own (an adapter wrapping it, e.g. LoRA on `lm_head`, needs the logits)."""
        keeps_all = isinstance(logits_to_keep, int) and logits_to_keep == 0
        return (
            bool(self.config.loss_chunk_size)
            and self.training
            and keeps_all
            and isinstance(self.lm_head, LMHead)
        )

    def _output(self, loss, logits, outputs, return_dict):
        result = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            **cache_output(output_cache(outputs)),
        )
        if return_dict is None:
            return_dict = self.config.return_dict
        return result if return_dict else result.to_tuple()


def _shifted(labels: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """The next-token targets: `shift_labels` when the caller gives them, else `labels` shifted left."""
    shift_labels = kwargs.get("shift_labels")
    return F.pad(labels, (0, 1), value=-100)[..., 1:] if shift_labels is None else shift_labels


__all__ = ["LMHead", "PlaitPreTrainedModel", "PlaitModel", "PlaitForCausalLM"]
