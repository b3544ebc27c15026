"""Training FLOPs per token of what actually runs, for the throughput and MFU logged with every loss.

Each matrix weight W (an `nn.Linear`'s, a patch projection's, an adapter's factors, a hyper-connection's
dynamic projections; N_W multiply-adds per token, times its uses per token) costs, per token:
- 2·N_W forward;
- 2·N_W backward for the gradient of its input, when a gradient flows through it: some trained parameter
  runs before it (weights below the first trained one only run forward);
- 2·N_W backward for its own gradient, when it trains (frozen weights never get one).
So 6·N_W trained, 4·N_W frozen, 2·N_W frozen below everything trained. Embedding tables are lookups and
count only as an LM head that exists (a tied one: `get_output_embeddings()`; a classifier has none, whatever
its config's `tie_word_embeddings` says). Biases, norm scales, position embeddings and KAN knots are
elementwise, not matmuls. Attention adds 4·d_attn·T forward (scores and values for the full T×T square, PaLM
appendix B) and twice that backward in the layers a gradient reaches.

Assumed: parameters are registered in the order they run (true of transformers' models: embeddings, layers
in order, head), and a convolution produces one output per token (a ViT patch projection).
"""

from __future__ import annotations

import re

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd
from transformers.pytorch_utils import Conv1D

from plait.modeling.adapters.nera import NeRAPhi
from plait.modeling.adapters.skan import SKANPhi

_LAYER_INDEX = re.compile(r"\.(?:layers?|blocks?|h)\.(\d+)\.")


def flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Training FLOPs per token of `model` as it will train (its `requires_grad` flags) on `seq_len`."""
    flops, flowing, seen, first_trained = 0.0, False, set(), None
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for module_name, module in model.named_modules():
        matmuls = {id(w): uses for w, uses in _matmul_weights(module)}
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            if p.requires_grad and first_trained is None:
                first_trained = f"{module_name}.{name}"
            flowing = flowing or p.requires_grad
            if id(p) in matmuls:
                flops += matmuls[id(p)] * _cost(p, flowing)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and id(head.weight) in tables:  # a tied LM head: the table runs as a matmul
        flops += _cost(head.weight, flowing)
    return flops + _attention_flops(model, seq_len, first_trained)


def _matmul_weights(module: nn.Module) -> list[tuple[torch.Tensor, int]]:
    """The weights `module` multiplies its input with, each with its uses per token (none for tables,
    norms, position embeddings)."""
    if isinstance(module, (nn.Linear, _ConvNd, Conv1D)):
        return [(module.weight, 1)]
    if isinstance(module, (NeRAPhi, SKANPhi)):  # the basis values are contracted with the coefficients
        return [(module.coeff, 1)]
    if hasattr(module, "matmul_weights"):  # Plait modules holding raw matmul weights (hyper-connections)
        return module.matmul_weights()
    return []


def _cost(p: torch.Tensor, flowing: bool) -> float:
    return 2.0 * _numel(p) * (1 + flowing + p.requires_grad)


def _attention_flops(model: nn.Module, seq_len: int, first_trained: str | None) -> float:
    """4·d_attn·T per token forward in each attention layer, plus 8·d_attn·T backward in the layers at or
    after the first trained parameter."""
    config = model.config
    # Configs without layer_types / head_dim (BERT and other fine-tuned transformers models): all attention.
    layer_types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    d_attn = config.num_attention_heads * head_dim
    first = _first_layer_reached(model, first_trained, len(layer_types))
    return sum(
        (4.0 + 8.0 * (i >= first)) * d_attn * seq_len
        for i, kind in enumerate(layer_types)
        if kind == "full_attention"
    )


def _first_layer_reached(model: nn.Module, first_trained: str | None, layers: int) -> int:
    """The first layer a gradient flows through: the first trained parameter's layer, 0 when it runs before
    the layers (an embedding), `layers` (none) when it runs after them (a head) or nothing trains."""
    if first_trained is None:
        return layers
    match = _LAYER_INDEX.search(f".{first_trained}")
    if match:
        return int(match.group(1))
    names = [name for name, _ in model.named_parameters(remove_duplicate=False)]
    later = names[names.index(first_trained) :]
    return 0 if any(_LAYER_INDEX.search(f".{name}") for name in later) else layers


def _numel(p: torch.Tensor) -> int:
    return int(p.ds_numel) if hasattr(p, "ds_numel") else p.numel()  # ZeRO-3 partitions hold a placeholder
