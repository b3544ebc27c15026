"""KAN adapters (NeRA, S-KAN) as PEFT LoRA custom modules.

NeRA's adapter is LoRA with its linear A replaced by a KAN layer φ: h = W₀x + α/r · B φ(x). So `KANLinear`
subclasses PEFT's LoRA `Linear`: PEFT creates B (zero-initialised: identity at step 0), the dropout, α/r,
the adapter bookkeeping; `KANLinear` swaps A for φ (held in `lora_kan`, listed in `adapter_layer_names`).
`KANConfig` is a `LoraConfig` with the KAN options; it registers `KANLinear` for every targeted `nn.Linear`
through `LoraConfig._register_custom_module` (PEFT's custom-module dispatch; new PEFT types cannot be
registered). Everything else is plain PEFT:

    model = get_peft_model(model, KANConfig(kan="nera", r=8, lora_alpha=16, target_modules=[...]))
    model.print_trainable_parameters(); model.save_pretrained(dir)       # adapter only, safetensors
    model = PeftModel.from_pretrained(base_model, dir)   # or AutoPeftModelFor*, load_adapter, ...
    with model.disable_adapter(): ...                                      # the base model
    model.add_adapter("b", KANConfig(...)); model.set_adapter("b")         # several adapters
    model.unload()                                                         # the base model back

Loading back through PEFT's own entry points: a saved `adapter_config.json` names its `peft_type` as
`KAN_PEFT_TYPE` ("LORA_KAN"), and importing this module registers `KANConfig` for that name in PEFT's
config registry (`PEFT_TYPE_TO_CONFIG_MAPPING`, the table every PEFT loader reads the saved type from). So
`PeftModel.from_pretrained`, `AutoPeftModelFor*`, `PeftModel.load_adapter` and transformers'
`model.load_adapter` rebuild the KAN layers; the in-memory config stays a LoRA type (PEFT dispatches its
tuner, prefixes and state-dict handling on that). Without Plait imported, PEFT refuses the unknown type
(`KeyError: 'LORA_KAN'`) instead of building plain LoRA layers that would ignore the saved φ weights.

`target_modules` takes PEFT's forms: a list of names (a full module name or its last components) or one
regex string matched against full names. `merge_and_unload` raises: φ is nonlinear in x, so the adapter
has no weight delta to add to W₀.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn

from .nera import NeRAPhi
from .skan import FAMILIES, SKANPhi

KAN_KINDS = ("nera", "skan")
KAN_PEFT_TYPE = "LORA_KAN"  # the `peft_type` a saved KAN adapter config carries (see the module docstring)
NOT_MERGEABLE = (
    "KAN adapters (NeRA, S-KAN) cannot be merged into the base weights: the adapter B·φ(x) is nonlinear in "
    "x, so there is no weight delta. Keep the PeftModel, or call unload() to get the base model back."
)


@dataclass
class KANConfig(LoraConfig):
    kan: str = field(
        default="nera", metadata={"help": "'nera' (hat-basis KAN) or 'skan' (selectable families)"}
    )
    kan_grid_size: int = field(default=8, metadata={"help": "basis functions per input (NeRA: knots)"})
    kan_grid_range: float = field(default=3.0, metadata={"help": "initial knots / grid on [-range, range]"})
    kan_init_std: float = field(default=1e-3, metadata={"help": "std of the initial KAN coefficients"})
    kan_base: bool = field(
        default=True,
        metadata={"help": "KAN's residual branch w_b·silu(x): the adapter also answers outside the grid"},
    )
    skan_families: list[str] = field(default_factory=lambda: list(FAMILIES), metadata={"help": "S-KAN pool"})
    skan_pruned: bool = field(
        default=False, metadata={"help": "S-KAN modules are in pruned form (set by prune)"}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.kan not in KAN_KINDS:
            raise ValueError(f"kan={self.kan!r} is not a valid choice; valid choices: {list(KAN_KINDS)}")
        if not isinstance(self.kan_grid_size, int) or self.kan_grid_size < 2:
            raise ValueError(f"kan_grid_size={self.kan_grid_size!r} must be an integer >= 2")
        for name in ("kan_grid_range", "kan_init_std"):
            value = getattr(self, name)
            if (
                not isinstance(value, (int, float))
                or not torch.isfinite(torch.tensor(float(value)))
                or value <= 0
            ):
                raise ValueError(f"{name}={value!r} must be a positive finite number")
        families = list(self.skan_families)
        unknown = [f for f in families if f not in FAMILIES]
        if unknown or not families or len(set(families)) != len(families):
            raise ValueError(
                f"skan_families={families!r} must be distinct names from {list(FAMILIES)} (at least one)"
            )
        if self.init_lora_weights not in (True, False, "gaussian"):  # the others initialise A from W₀
            raise ValueError(
                f"init_lora_weights={self.init_lora_weights!r} is not supported by KAN adapters; "
                "valid choices: True (B = 0), False, 'gaussian'"
            )
        for flag in ("use_dora", "fan_in_fan_out", "lora_bias"):
            if getattr(self, flag):
                raise ValueError(f"{flag}=True is not supported by KAN adapters")
        self._register_custom_module({nn.Linear: KANLinear})

    def to_dict(self) -> dict[str, Any]:
        """The saved form: `peft_type` names the KAN adapter, so PEFT's loaders build a `KANConfig` again."""
        return {**super().to_dict(), "peft_type": KAN_PEFT_TYPE}

    @classmethod
    def from_peft_type(cls, **kwargs: Any) -> KANConfig:
        # Build this class whatever the saved `peft_type` says (also an adapter saved as 'LORA' before the KAN
        # type existed): PEFT would map 'LORA' to LoraConfig and drop the KAN fields.
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs.setdefault("kan_base", False)  # saved before the base branch existed: its layers have none
        return cls(**{k: v for k, v in kwargs.items() if k in names})


PEFT_TYPE_TO_CONFIG_MAPPING[KAN_PEFT_TYPE] = KANConfig


def build_phi(config: KANConfig, in_features: int, r: int) -> nn.Module:
    if config.kan == "nera":
        return NeRAPhi(
            in_features, r, config.kan_grid_size, config.kan_grid_range, config.kan_init_std, config.kan_base
        )
    return SKANPhi(
        in_features,
        r,
        config.skan_families,
        config.kan_grid_size,
        config.kan_grid_range,
        config.kan_init_std,
        pruned=config.skan_pruned,
        base_branch=config.kan_base,
    )


class KANLinear(LoraLinear):
    """PEFT LoRA `Linear` whose down-projection is a KAN layer φ (`lora_kan`) instead of `lora_A`."""

    adapter_layer_names = LoraLinear.adapter_layer_names + ("lora_kan",)

    def update_layer(self, adapter_name: str, r: int, lora_alpha: int, config: LoraConfig, **kwargs) -> None:
        if not isinstance(config, KANConfig):
            raise TypeError(f"KANLinear needs a KANConfig, got {type(config).__name__}")
        if "lora_kan" not in self._modules:  # first adapter: LoraLayer.__init__ does not know this dict
            self.lora_kan = nn.ModuleDict()
        super().update_layer(adapter_name, r, lora_alpha, config=config, **kwargs)  # B = 0, dropout, α/r
        # φ (`lora_kan`) does A's work; PEFT looks adapters up in `lora_A` (mixed batches, scaling, ...).
        self.lora_A[adapter_name] = nn.Identity()
        self.lora_kan[adapter_name] = build_phi(config, self.in_features, r)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self._check_forward_args(x, *args, **kwargs)  # PEFT's checks, also of a mixed batch's adapter_names
        adapter_names = kwargs.pop("adapter_names", None)
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            return result
        if adapter_names is None:  # every active adapter on every row
            for name in self.active_adapters:
                if name in self.lora_kan:
                    result = result + self._adapter_output(name, x).to(result.dtype)
            return result
        # A mixed batch: row i uses adapter adapter_names[i] ('__base__': none).
        for name in dict.fromkeys(adapter_names):
            if name in self.lora_kan:
                rows = torch.tensor([i for i, n in enumerate(adapter_names) if n == name], device=x.device)
                result = result.index_add(0, rows, self._adapter_output(name, x[rows]).to(result.dtype))
        return result

    def _adapter_output(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """α/r · B φ(dropout(x)) of adapter `name`."""
        up = self.lora_B[name]
        return up(self.lora_kan[name](self.lora_dropout[name](x.to(up.weight.dtype)))) * self.scaling[name]

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise ValueError(NOT_MERGEABLE)

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        raise ValueError(NOT_MERGEABLE)


def kan_modules(model: nn.Module, adapter_name: str | None = None) -> list[nn.Module]:
    """The φ modules of `adapter_name` (all adapters if None) in `model`."""
    return [
        phi
        for module in model.modules()
        if isinstance(module, KANLinear)
        for name, phi in module.lora_kan.items()
        if adapter_name is None or name == adapter_name
    ]


def skan_select(model: nn.Module, adapter_name: str = "default") -> None:
    """S-KAN phase 2 on every S-KAN module of the adapter: keep each node's highest-weight family."""
    for phi in kan_modules(model, adapter_name):
        if isinstance(phi, SKANPhi) and not phi.pruned:
            phi.select()


def skan_prune(model: PeftModel, adapter_name: str = "default") -> None:
    """S-KAN phase 3: prune every S-KAN module of the adapter to its selected family per node, and mark the
    adapter's config pruned so `save_pretrained` / `load_kan_adapter` round-trip the smaller layout."""
    config = model.peft_config[adapter_name]
    if not isinstance(config, KANConfig) or config.kan != "skan":
        raise ValueError(f"adapter {adapter_name!r} is not an S-KAN adapter")
    for phi in kan_modules(model, adapter_name):
        if not phi.pruned:
            phi.prune()
    config.skan_pruned = True


def load_kan_adapter(
    model: nn.Module, path: str | Path, adapter_name: str = "default", is_trainable: bool = False
) -> PeftModel:
    """Load a saved KAN adapter onto `model` (a base model, or a PeftModel to add it to).

    PEFT's own loaders do the same for adapters saved with the KAN `peft_type`; this also reads an adapter
    saved as plain 'LORA' type (before that type existed) as a `KANConfig`.
    """
    config = KANConfig.from_pretrained(str(path))
    if isinstance(model, PeftModel):
        config.inference_mode = not is_trainable
        model.add_adapter(adapter_name, config)
        model.load_adapter(str(path), adapter_name, is_trainable=is_trainable)
        return model
    return PeftModel.from_pretrained(
        model, str(path), adapter_name=adapter_name, is_trainable=is_trainable, config=config
    )
