"""Fine-tuning adapters: KAN adapters (NeRA, S-KAN) as PEFT LoRA custom modules."""

from .nera import NeRAPhi
from .peft_kan import KANConfig, KANLinear, kan_modules, load_kan_adapter, skan_prune, skan_select
from .skan import FAMILIES, SKANPhi

__all__ = [
    "FAMILIES",
    "KANConfig",
    "KANLinear",
    "NeRAPhi",
    "SKANPhi",
    "kan_modules",
    "load_kan_adapter",
    "skan_prune",
    "skan_select",
]
