"""`PlaitBlockConfig`: the shared block's dimensions and component switches, validated when a config is built.

Every Plait backbone (the decoder LM's `PlaitConfig`, the ViT's `PlaitViTConfig`) extends this class with its
own fields only (vocabulary, image and patch size, position encoding, ...). Causality is a property of the
backbone: each subclass sets the class attribute `is_causal`, which the token mixers read when they are built
and pass explicitly to their attention cores and kernels.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import sys
import types
import typing

from huggingface_hub.dataclasses import strict
from transformers import GenerationConfig, PreTrainedConfig
from transformers.configuration_utils import remap_legacy_layer_types

from .registry import ATTENTION_FUNCTIONS, MLP_ACTIVATIONS, RESIDUALS, TOKEN_MIXERS


@strict
class PlaitBlockConfig(PreTrainedConfig):
    r"""Dimensions and switches of the shared Plait block (see `plait.modeling.block`).

    Dimensions follow Llama's names so checkpoints and tooling map one-to-one. The component switches pick
    an entry of a registry in `plait.modeling.registry`:

    - `residual`: how the residual stream connects sublayers (`"plain"`; hyper-connection variants plug in).
    - `mlp_act`: the MLP's activation (`"swiglu"` gated; `"gelu"`, `"relu"`, `"relu2"` two-matrix MLPs;
      `"polyrelu"`, `"polynorm"` PolyCom, see `plait.modeling.polycom`).
    - `attention`: the attention core inside attention layers (`"softmax"`; `"lssa"`, `"lssar"` softplus
      attention, see `plait.modeling.softplus_attention`).
    - `layer_types`: one token mixer per layer (`"full_attention"`, also spelled `"attention"`, which
      transformers renames when the config is built); `None` means attention in every layer.

    An invalid value raises `ValueError` naming the field, the value and the valid choices; so does an unknown
    keyword (or `config.json` key), with the closest valid name: a typo never builds another model silently.
    The standard fields transformers itself sets on configs (its loaders, `tie_word_embeddings`, the norm
    epsilons its tests set, ...; see `_TRANSFORMERS_KEYS`) are accepted and kept, as transformers does.
    Each backbone's config sets the class attribute `is_causal` (True for the decoder LM, False for the ViT).
    """

    hidden_size: int = 512
    intermediate_size: int = 1408
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    rope_theta: float = 10000.0  # base of the rotary position embeddings (1-D for text, 2-D for images)
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    attention_dropout: float = 0.0
    drop_path_rate: float = 0.0  # stochastic depth: the rate rises linearly from 0 (first block) to this

    residual: str = "plain"
    mlp_act: str = "swiglu"
    attention: str = "softmax"
    layer_types: list[str] | None = None
    # hyper-connections (residual in identity_hc/hc/mhc/mhc_lite/kromhc/shc/jpmhc; see hyper_connections.py)
    hc_streams: int = 4  # n residual streams
    hc_dynamic: bool = True  # input-dependent coefficients on top of the static ones
    sinkhorn_iters: int = 20  # mhc: Sinkhorn-Knopp iterations (jpmhc bistochastic: warm start before Newton)
    jpmhc_manifold: str = "stiefel"  # jpmhc: "stiefel" | "grassmann" | "bistochastic"
    jpmhc_rank: int | None = None  # jpmhc grassmann: subspace rank p (None: n // 2)
    hc_force: bool = False  # allow mhc_lite with n > 6 (n! parameters)
    # PolyCom (mlp_act="polyrelu"/"polynorm"): intermediate width x1.5 to match SwiGLU's parameter count.
    polycom_scale_ffn: bool = True
    # Softplus attention with re-weighting (attention="lssar"): the power p of ReLU(N·A - O)^p.
    lssar_power: float = 15.0
    pararnn_mode: str = "auto"  # ParaRNN solver: auto (triton on CUDA), sequential, parallel, triton
    pararnn_newton_iters: int = 3  # ParaRNN layers: Newton iterations per forward (the reference code runs 3)

    def __post_init__(self, **kwargs):
        _reject_unknown_keys(type(self), kwargs)
        _check_types(self)
        if (
            self.head_dim is None
            and self.num_attention_heads > 0
            and self.hidden_size % self.num_attention_heads
        ):
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                f"{self.num_attention_heads}; change one, or set head_dim explicitly"
            )
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None and self.num_attention_heads > 0:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.layer_types is None:
            self.layer_types = ["full_attention"] * self.num_hidden_layers
        _check_layer_types(self.layer_types)  # as the user spelled them: transformers renames aliases next
        super().__post_init__(**kwargs)
        self._validate()

    def validate_layer_type(self):
        """Replaces transformers' check against its fixed list of layer types: Plait checks `layer_types`
        against its own `TOKEN_MIXERS` registry in `_validate` (so registered mixers such as ParaRNN pass)."""

    def _positive(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"{name}={value!r} must be a positive integer")

    def _validate(self) -> None:
        """The block's checks; a backbone's config extends this with checks of its own fields."""
        self._positive(
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
        )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} must be a multiple of "
                f"num_key_value_heads={self.num_key_value_heads} (grouped-query attention)"
            )
        for name in ("rope_theta", "rms_norm_eps", "initializer_range"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be positive")
        if not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(f"attention_dropout={self.attention_dropout!r} must lie in [0, 1)")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate={self.drop_path_rate!r} must lie in [0, 1)")
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries but "
                f"num_hidden_layers={self.num_hidden_layers}; "
                "give one token mixer per layer"
            )
        for i, mixer in enumerate(self.layer_types):
            TOKEN_MIXERS.check(mixer, field=f"layer_types[{i}]")
        for registry in (RESIDUALS, MLP_ACTIVATIONS, ATTENTION_FUNCTIONS):
            registry.check(getattr(self, registry.field))
            registry.validate(getattr(self, registry.field), self)
        for mixer in set(self.layer_types):
            TOKEN_MIXERS.validate(mixer, self)


def _check_layer_types(layer_types: list[str]) -> None:
    """Each entry names a token mixer, possibly under a legacy alias transformers renames (`"attention"`);
    an invalid entry is reported as written, with the name transformers would have given it."""
    for i, (given, renamed) in enumerate(
        zip(layer_types, remap_legacy_layer_types(list(layer_types)), strict=True)
    ):
        if renamed not in TOKEN_MIXERS:
            alias = f" (an alias transformers renames to {renamed!r})" if renamed != given else ""
            raise ValueError(
                f"layer_types[{i}]={given!r}{alias} is not a valid choice; valid choices: "
                f"{TOKEN_MIXERS.choices()}"
            )


# Keys transformers sets on a model's config besides `PreTrainedConfig`'s own attributes (added below):
# what its loaders write into `config.json` or pass to the config (`from_pretrained(attn_implementation=...)`,
# legacy `torch_dtype`, `distributed_config`, generation defaults, ...), and the generic fields its utilities
# and common model tests set on every model's config: `tie_word_embeddings` (read by every `PreTrainedModel`)
# and the norm epsilons of `transformers.testing_utils.set_config_for_less_flaky_test`.
_TRANSFORMERS_KEYS = {
    "model_type",
    "transformers_version",
    "architectures",
    "auto_map",
    "name_or_path",
    "_name_or_path",
    "_commit_hash",
    "torch_dtype",
    "num_labels",
    "rope_scaling",
    "output_attentions",
    "attn_implementation",
    "experts_implementation",
    "per_layer_config",
    "distributed_config",
    "fusion_config",
    "_attn_implementation_internal",
    "_experts_implementation_internal",
    "tie_word_embeddings",
    "rms_norm_eps",
    "post_norm_eps",
    "layer_norm_eps",
    "norm_eps",
    "norm_epsilon",
    "layer_norm_epsilon",
    "batch_norm_eps",
    *GenerationConfig._get_default_generation_params(),
    *(field.name for field in dataclasses.fields(PreTrainedConfig)),
    *PreTrainedConfig().to_dict(),
}


def _declared_fields(cls: type) -> dict[str, typing.Any]:
    """Name -> type of the fields the Plait config classes declare (not transformers' base fields)."""
    fields = {}
    for klass in reversed(cls.__mro__[: cls.__mro__.index(PreTrainedConfig)]):
        namespace = vars(sys.modules[klass.__module__])
        for name, annotation in vars(klass).get("__annotations__", {}).items():
            if not name.startswith("_"):
                fields[name] = eval(annotation, namespace) if isinstance(annotation, str) else annotation
    return fields


def _reject_unknown_keys(cls: type, extra: dict) -> None:
    """A key is accepted if the config declares it or transformers sets it on configs (`_TRANSFORMERS_KEYS`,
    kept as an attribute as transformers does; Plait does not read those it does not declare). Any other key
    is refused, with the closest declared field: a typo never builds another model silently."""
    known = {f.name for f in dataclasses.fields(cls)} | _TRANSFORMERS_KEYS
    for key in sorted(set(extra) - known):
        close = difflib.get_close_matches(key, sorted(_declared_fields(cls)), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"{cls.__name__} has no field {key!r}{hint} (valid fields: {sorted(_declared_fields(cls))})"
        )


def _matches(value: typing.Any, tp: typing.Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(tp))
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, tp)


def _check_types(config) -> None:
    """Every declared field holds a value of its declared type; floats are finite."""
    for name, tp in sorted(_declared_fields(type(config)).items()):
        value = getattr(config, name)
        if not _matches(value, tp):
            kind = str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")
            problem = (
                "is not finite"
                if isinstance(value, float) and not math.isfinite(value)
                else "has the wrong type"
            )
            raise ValueError(f"{name}={value!r} {problem}; expected {kind}")


__all__ = ["PlaitBlockConfig"]
