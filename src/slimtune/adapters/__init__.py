"""Adapter layers (LoRA and its variants) and their PEFT-format input/output."""

from .lora import LoraLinear, add_lora, lora_layers, merge_lora
from .peft_io import load_adapter, save_adapter

__all__ = ["LoraLinear", "add_lora", "lora_layers", "merge_lora", "load_adapter", "save_adapter"]
