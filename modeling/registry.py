"""Registries behind the config switches.

Each switch of `PlaitConfig` (`residual`, `mlp_act`, `attention`, `layer_types`) names an entry of one
registry below. A research component plugs in by adding one module that registers its value:

    @RESIDUALS.register("mhc", validate=check_mhc_config)
    class MHC(ResidualKind): ...

`PlaitConfig` validates each switch against its registry when the config is built, and the shared block
builds whatever the registry returns, so nothing else changes when a value is added.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Registry:
    """Maps the values of one config field to builders; `validate(config)` checks field-specific options."""

    def __init__(self, field: str):
        self.field = field
        self._entries: dict[str, Any] = {}
        self._validators: dict[str, Callable[[Any], None]] = {}

    def register(self, name: str, validate: Callable[[Any], None] | None = None):
        def decorator(builder):
            if name in self._entries:
                raise KeyError(f"{self.field}={name!r} is registered twice")
            self._entries[name] = builder
            if validate is not None:
                self._validators[name] = validate
            return builder

        return decorator

    def choices(self) -> list[str]:
        return sorted(self._entries)

    def check(self, value: Any, field: str | None = None) -> None:
        """Raise a `ValueError` naming the field, the bad value and the valid choices."""
        if value not in self._entries:
            raise ValueError(
                f"{field or self.field}={value!r} is not a valid choice; valid choices: {self.choices()}"
            )

    def validate(self, value: str, config: Any) -> None:
        if value in self._validators:
            self._validators[value](config)

    def __getitem__(self, name: str):
        self.check(name)
        return self._entries[name]

    def __contains__(self, name: str) -> bool:
        return name in self._entries


RESIDUALS = Registry(
    "residual"
)  # value: a ResidualKind (per-site module + model-level stream expand/collapse)
MLP_ACTIVATIONS = Registry("mlp_act")  # value: (config) -> nn.Module mapping [..., hidden] -> [..., hidden]
ATTENTION_FUNCTIONS = Registry("attention")  # value: attention core, contract in plait.modeling.attention
# value: (config, layer_idx) -> token-mixer nn.Module whose forward(h, position_embeddings, attention_mask,
# cache, output_attentions, ...) returns (out, attention weights or None)
TOKEN_MIXERS = Registry("layer_types")
