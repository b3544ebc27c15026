"""Plait models for transformers.

Importing this package registers the decoder LM (`PlaitConfig` with `AutoConfig`, `AutoModel` and
`AutoModelForCausalLM`) and the ViT (`PlaitViTConfig` with `AutoConfig`, `AutoModel`,
`AutoModelForImageClassification` and `AutoImageProcessor`), so `Auto*.from_pretrained(dir)` and
`pipeline(..., model=dir)` load a saved Plait model. It also imports every component module, each of which
registers its config values (see `plait.modeling.registry`), and the KAN adapters, which register their saved
type with PEFT's loaders (see `plait.modeling.adapters.peft_kan`).
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
)

from . import (  # noqa: F401  (each module registers its component switches or adapter type)
    adapters,
    attention,
    hyper_connections,
    mlp,
    pararnn,
    polycom,
    residual,
    softplus_attention,
)
from .configuration_block import PlaitBlockConfig
from .configuration_plait import PlaitConfig
from .configuration_plait_vit import PlaitViTConfig
from .image_processing_plait_vit import PlaitViTImageProcessor
from .modeling_plait import PlaitForCausalLM, PlaitModel, PlaitPreTrainedModel
from .modeling_plait_vit import PlaitViTForImageClassification, PlaitViTModel, PlaitViTPreTrainedModel

AutoConfig.register("plait", PlaitConfig, exist_ok=True)
AutoModel.register(PlaitConfig, PlaitModel, exist_ok=True)
AutoModelForCausalLM.register(PlaitConfig, PlaitForCausalLM, exist_ok=True)

AutoConfig.register("plait_vit", PlaitViTConfig, exist_ok=True)
AutoModel.register(PlaitViTConfig, PlaitViTModel, exist_ok=True)
AutoModelForImageClassification.register(PlaitViTConfig, PlaitViTForImageClassification, exist_ok=True)
AutoImageProcessor.register(
    PlaitViTConfig, image_processor_classes={"pil": PlaitViTImageProcessor}, exist_ok=True
)

__all__ = [
    "PlaitBlockConfig",
    "PlaitConfig",
    "PlaitModel",
    "PlaitForCausalLM",
    "PlaitPreTrainedModel",
    "PlaitViTConfig",
    "PlaitViTModel",
    "PlaitViTForImageClassification",
    "PlaitViTPreTrainedModel",
    "PlaitViTImageProcessor",
]
