"""Which attention back-end (`attn_implementation`) a run uses: the recipe's `model.attn_implementation`, or
for `"auto"` (the default) the fastest one that never builds a dense L×L mask where that matters.

Packed LM training (`data.document_masking`, the default) keeps attention inside each document. With SDPA
that takes a dense [batch, 1, L, L] boolean mask, which on a GPU also rules out SDPA's flash kernel. So on
CUDA `"auto"` picks flash-attn's variable-length kernel (`"flash_attention_2"`, transformers reads the
document starts from the packed `position_ids`) when flash-attn is installed and the run is in half
precision, else PyTorch's FlexAttention (`"flex_attention"`, a block-sparse mask built from the same
`position_ids`, compiled by Triton). Everywhere else (CPU, unpacked text, the ViT, fine-tuning) it is
`"sdpa"`. LSSA/LSSAR ignore the softmax back-end for packed blocks: they take the document boundaries as
segment ids (`plait.modeling.softplus_attention.packed_segments`).
"""

from __future__ import annotations

import torch
from transformers.utils import is_flash_attn_2_available

from .recipe import Recipe


def attn_implementation(recipe: Recipe, packed: bool = False) -> str:
    """The `attn_implementation` to build the model with; `packed`: an LM on document-masked blocks."""
    choice = recipe.model.attn_implementation
    if choice != "auto":
        return choice
    if not (packed and torch.cuda.is_available()):
        return "sdpa"
    if recipe.train.precision != "fp32" and is_flash_attn_2_available():
        return "flash_attention_2"
    return "flex_attention"
