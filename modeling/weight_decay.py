"""The one weight-decay rule of Plait, used by the trainer and the benchmarks alike: a parameter decays iff
it has two or more dimensions (matrices, conv kernels, embedding tables) and the model does not name it in
`no_weight_decay()`, nor any module in `no_decay` (its own parameter names). Biases and norm gains (1-D)
never decay, nor do static hyper-connection parameters or a ViT's CLS token and learned positions, which the
models name, nor the knots, scales and family weights of KAN adapters, which the adapter modules name."""

from __future__ import annotations

from torch import nn


def decay_parameter_names(model: nn.Module) -> list[str]:
    no_decay = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    no_decay |= {
        f"{prefix}.{name}" for prefix, m in model.named_modules() for name in getattr(m, "no_decay", ())
    }
    return [
        name
        for name, p in model.named_parameters()
        if len(getattr(p, "ds_shape", p.shape)) >= 2 and name not in no_decay  # ZeRO-3 keeps the shape apart
    ]


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two optimizer groups of the trainable parameters: those that decay, with `weight_decay`, and the
    rest with 0."""
    decay = set(decay_parameter_names(model))
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for name, p in params if name in decay], "weight_decay": weight_decay},
        {"params": [p for name, p in params if name not in decay], "weight_decay": 0.0},
    ]


__all__ = ["decay_parameter_names", "parameter_groups"]
