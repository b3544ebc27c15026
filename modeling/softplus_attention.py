"""Softplus attention (Gao et al., 2025, "Softplus Attention with Re-weighting Boosts Length Extrapolation in
Large Language Models", arXiv:2501.13428): the `attention` values `"lssa"` (Softplus + l1-normalisation with
the ln(d)·ln(N) scale) and `"lssar"` (LSSA followed by the re-weighting stage).

Both are attention cores for `PlaitAttention` (see `plait.modeling.attention`): q and k arrive
already rotated by RoPE and are L2-normalised here; scores are scaled by ln(d)·ln(N_i), where N_i is the
number of keys query i may see, counted from the attention mask and the backbone's causality — so cached keys
count at decode time (also beyond the training length) and padding does not; in a bidirectional backbone
(the ViT) N is the number of visible patches. `scaling` (1/√d) is not used: the scale is part of the
formula.
`lssar` re-weights with ReLU(N_i·A − O)^p, p = `config.lssar_power` (default 15, the paper's). The math,
reference and Triton kernels live in `plait.kernels.lssa`.

Degenerate rows (`plait.kernels.lssa.Rows`): `degenerate_row_counters(model)` puts a `DegenerateRowCounter`
on each LSSAR attention module; while it is `recording` (the stability diagnostics switch it on for the
forwards of a diagnostics step) the module adds up its degenerate rows and rows of attention, as tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_mask
from transformers.masking_utils import find_packed_sequence_indices

from ..kernels.lssa import Rows, lssa_weights, softplus_attention
from .attention import causal_mask_for_none, repeat_kv
from .registry import ATTENTION_FUNCTIONS


def bool_attention_mask(
    attention_mask: torch.Tensor | None, q_len: int, kv_len: int, device, causal: bool = True
) -> torch.Tensor | None:
    """The mask as bool [B, 1, Tq, Tk] (True = may attend), or None when the kernel's own rule for `causal`
    is the mask (causal on the last keys, or every key when not causal).

    Accepts transformers' masks for every back-end: bool 4-D (sdpa), additive float 4-D (eager; 0 = attend),
    a 2-D [B, Tk] padding mask (flash attention), which is combined with the causal mask here, or
    FlexAttention's `BlockMask` (outside packed training, e.g. generation), evaluated to the dense mask."""
    if attention_mask is None:
        # The kernels' None aligns the causal mask to the last key, transformers' to the first: they differ
        # only when 1 < Tq < Tk (the prefill of an empty static cache), so only then is the mask built.
        if causal and 1 < q_len < kv_len:
            return causal_mask_for_none(q_len, kv_len, device)[None, None]
        return None
    if isinstance(attention_mask, BlockMask):  # FlexAttention's mask outside packed training: evaluate it
        return create_mask(attention_mask.mask_mod, attention_mask.shape[0], 1, q_len, kv_len, device)
    if attention_mask.dim() == 2:
        padding = attention_mask[:, None, None, -kv_len:].bool()
        if not causal:
            return padding.expand(-1, 1, q_len, -1)
        tril = torch.ones(q_len, kv_len, dtype=torch.bool, device=attention_mask.device).tril(kv_len - q_len)
        return tril[None, None] & padding
    if attention_mask.dtype != torch.bool:
        attention_mask = attention_mask > torch.finfo(attention_mask.dtype).min / 2
    return attention_mask[..., :kv_len]


# Cores that read packed documents from `position_ids` themselves (`packed_segments`): the backbone builds
# them no mask during training.
DOCUMENT_AWARE_ATTENTIONS = ("lssa", "lssar")


def packed_segments(attention_mask, position_ids, q_len: int, kv_len: int) -> torch.Tensor | None:
    """Segment ids [B, L] of packed documents (positions restarting at 0, read by transformers'
    `find_packed_sequence_indices`) when the back-end built no dense mask for them (FlexAttention's block
    mask, or no mask with flash attention): the kernels then take document boundaries, never an L×L mask.
    None otherwise."""
    if position_ids is None or q_len != kv_len or isinstance(attention_mask, torch.Tensor):
        return None
    return find_packed_sequence_indices(position_ids)


class DegenerateRowCounter:
    """LSSAR's degenerate rows of one attention module, summed over the training forwards while `recording`
    (the forwards of one optimizer step: several under gradient accumulation). Off by default: then the
    forward does nothing extra. The sums stay 0-dim tensors on the model's device, so the forward never
    waits for the device; `take()` hands them over and starts again."""

    def __init__(self):
        self.recording = False
        self.degenerate: torch.Tensor | None = None
        self.rows: torch.Tensor | None = None

    def add(self, rows: Rows) -> None:
        degenerate, seen = rows.degenerate.sum(), rows.seen.sum()
        if self.rows is None:
            self.degenerate, self.rows = degenerate, seen
        else:
            self.degenerate, self.rows = self.degenerate + degenerate, self.rows + seen

    def take(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(degenerate rows, rows) since the last call, or None when no forward was counted."""
        counts = None if self.rows is None else (self.degenerate, self.rows)
        self.degenerate = self.rows = None
        return counts


def degenerate_row_counters(model: torch.nn.Module) -> list[DegenerateRowCounter]:
    """The counter of each LSSAR attention module of `model`, in module order (put on at the first call);
    empty when no layer re-weights."""
    modules = [m for m in model.modules() if getattr(m, "core", None) is lssar_attention]
    for module in modules:
        if not hasattr(module, "degenerate_rows"):
            module.degenerate_rows = DegenerateRowCounter()
    return [m.degenerate_rows for m in modules]


def _core(module, q, k, v, attention_mask, position_ids, reweight, dropout, output_attentions, causal):
    groups = module.num_key_value_groups
    k, v = repeat_kv(k, groups), repeat_kv(v, groups)
    segments = packed_segments(attention_mask, position_ids, q.shape[2], k.shape[2])
    if segments is not None:
        mask, segments = None, segments.expand(q.shape[0], -1)
    else:
        mask = bool_attention_mask(attention_mask, q.shape[2], k.shape[2], q.device, causal)
    counter = getattr(module, "degenerate_rows", None)
    record = counter is not None and counter.recording and module.training
    if output_attentions:  # the fused kernels never hold the weights: compute them with the reference
        result = lssa_weights(
            q,
            k,
            mask,
            reweight=reweight,
            power=module.config.lssar_power,
            causal=causal,
            segment_ids=segments,
            return_rows=record,
        )
        weights = F.dropout(result[0] if record else result, p=dropout, training=module.training)
        out = (weights @ v.float()).to(q.dtype)
        weights = weights.to(q.dtype)
    else:
        result = softplus_attention(
            q,
            k,
            v,
            mask,
            causal=causal,
            reweight=reweight,
            power=module.config.lssar_power,
            dropout=dropout,
            training=module.training,
            segment_ids=segments,
            return_rows=record,
        )
        out, weights = result[0] if record else result, None
    if record:
        counter.add(result[1])
    return out.transpose(1, 2).contiguous(), weights


@ATTENTION_FUNCTIONS.register("lssa")
def lssa_attention(
    module,
    q,
    k,
    v,
    attention_mask,
    scaling=None,
    dropout=0.0,
    output_attentions=False,
    *,
    is_causal,
    position_ids=None,
    **kwargs,
):
    """LSSA: softplus of ln(d)·ln(N_i)-scaled cosine scores, rows L1-normalised."""
    return _core(module, q, k, v, attention_mask, position_ids, False, dropout, output_attentions, is_causal)


def check_lssar_config(config) -> None:
    if not config.lssar_power >= 1.0:
        raise ValueError(f"lssar_power={config.lssar_power!r} must be >= 1 (the paper uses 15)")


@ATTENTION_FUNCTIONS.register("lssar", validate=check_lssar_config)
def lssar_attention(
    module,
    q,
    k,
    v,
    attention_mask,
    scaling=None,
    dropout=0.0,
    output_attentions=False,
    *,
    is_causal,
    position_ids=None,
    **kwargs,
):
    """LSSAR: LSSA followed by the ReLU(N_i·A − O)^p re-weighting, renormalised."""
    return _core(module, q, k, v, attention_mask, position_ids, True, dropout, output_attentions, is_causal)


__all__ = [
    "DOCUMENT_AWARE_ATTENTIONS",
    "DegenerateRowCounter",
    "bool_attention_mask",
    "degenerate_row_counters",
    "lssa_attention",
    "lssar_attention",
    "packed_segments",
]
