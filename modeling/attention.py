"""Multi-head self-attention with grouped-query heads and RoPE, and the `attention="softmax"` core.

`PlaitAttention` owns the projections, RoPE and the KV cache; the attention *core* (the map from q, k, v and
the mask to the output) is looked up in `ATTENTION_FUNCTIONS` by `config.attention`, so other attention
formulas (e.g. softplus attention) plug in without touching this module.

Core contract:
`core(module, q, k, v, attention_mask, scaling, dropout, output_attentions, *, is_causal) -> (out, weights)`
with q: [batch, heads, q_len, head_dim], k/v: [batch, kv_heads, kv_len, head_dim] (GQA not yet repeated),
`is_causal` the backbone's causality (`config.is_causal`: True for the LM, False for the ViT), passed
explicitly, and `attention_mask` as the backbone built it for the model's `attn_implementation` (the LM:
`transformers.masking_utils.create_causal_mask`): for `"sdpa"` a boolean [batch, 1, q_len, kv_len] tensor
(True = may attend), or None: then every key is visible, or with `is_causal` transformers' causal mask
(`causal_mask_for_none`). `out` is [batch, q_len, heads, head_dim]; `weights` is the
[batch, heads, q_len, kv_len] attention matrix when `output_attentions` is set (a core computes it with its
reference formula then, as fused kernels never hold it), else None.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS as HF_ATTENTION_FUNCTIONS

from .positions import apply_rotary
from .registry import ATTENTION_FUNCTIONS, TOKEN_MIXERS


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[batch, kv_heads, seq, dim] -> [batch, kv_heads * groups, seq, dim]: each kv head serves `groups`."""
    if groups == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, groups, s, d).reshape(b, h * groups, s, d)


def causal_mask_for_none(q_len: int, kv_len: int, device) -> torch.Tensor:
    """What a `None` mask from transformers means: SDPA's causal mask, aligned to the *first* key (e.g. the
    prefill of an empty static cache, Tq < Tk), and every key for a single query. Bool [Tq, Tk]."""
    mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=device)
    return mask if q_len == 1 else mask.tril()


def eager_softmax_attention(module, q, k, v, attention_mask, scaling, dropout=0.0, *, is_causal, **kwargs):
    """Reference softmax attention that also returns the attention weights (`output_attentions`)."""
    k, v = repeat_kv(k, module.num_key_value_groups), repeat_kv(v, module.num_key_value_groups)
    scores = torch.matmul(q, k.transpose(2, 3)) * scaling
    if attention_mask is None and is_causal:
        attention_mask = causal_mask_for_none(q.shape[2], k.shape[2], q.device)
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    elif attention_mask is not None:
        scores = scores + attention_mask
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, v).transpose(1, 2).contiguous(), weights


@ATTENTION_FUNCTIONS.register("softmax")
def softmax_attention(
    module, q, k, v, attention_mask, scaling, dropout=0.0, output_attentions=False, *, is_causal, **kwargs
):
    """Scaled dot-product softmax attention through transformers' kernels for the model's
    `attn_implementation` (`"sdpa"` by default, `"flash_attention_2"` when flash-attn is installed); the
    eager reference when the weights are asked for, since the fused kernels never form them."""
    if output_attentions:
        return eager_softmax_attention(module, q, k, v, attention_mask, scaling, dropout, is_causal=is_causal)
    implementation = module.config._attn_implementation
    core = HF_ATTENTION_FUNCTIONS.get_interface(implementation, eager_softmax_attention)
    return core(
        module, q, k, v, attention_mask, scaling=scaling, dropout=dropout, is_causal=is_causal, **kwargs
    )


@TOKEN_MIXERS.register("full_attention")
class PlaitAttention(nn.Module):
    """Self-attention: q/k/v projections, rotary positions when the backbone gives them, KV cache, the
    configured core (causal when the backbone is, `config.is_causal`), output projection.

    Registered as the `layer_types` value `"full_attention"`, transformers' name, so its cache is
    transformers' `DynamicLayer`; transformers maps the legacy spelling `"attention"` to it when the config
    is built.
    """

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = config.is_causal  # also read by transformers' sdpa/flash back-ends
        self.core = ATTENTION_FUNCTIONS[config.attention]
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(
        self, x, position_embeddings, attention_mask=None, cache=None, output_attentions=False, **kwargs
    ):
        batch, seq = x.shape[:2]
        q = self.q_proj(x).view(batch, seq, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, seq, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq, -1, self.head_dim).transpose(1, 2)
        if position_embeddings is not None:  # rotary tables; None when positions were added to the input
            q, k = apply_rotary(q, k, *position_embeddings)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        dropout = self.config.attention_dropout if self.training else 0.0
        out, weights = self.core(
            self,
            q,
            k,
            v,
            attention_mask,
            scaling=self.scaling,
            dropout=dropout,
            output_attentions=output_attentions,
            is_causal=self.is_causal,
            position_ids=kwargs.get("position_ids"),
        )
        return self.o_proj(out.reshape(batch, seq, -1)), weights
