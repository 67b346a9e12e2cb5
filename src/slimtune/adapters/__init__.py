"""Adapter layers (the contract in base.py; LoRA and its variants) and their PEFT-format input/output."""

from .base import AdapterExport, AdapterLayer, QuantAware, SparseMask, Variant, adapter_layers, merge_adapters
from .lora import LoraLinear, add_lora, lora_layers, merge_lora
from .peft_io import load_adapter, save_adapter

__all__ = ["AdapterExport", "AdapterLayer", "QuantAware", "SparseMask", "Variant", "adapter_layers", "merge_adapters",
           "LoraLinear", "add_lora", "lora_layers", "merge_lora", "load_adapter", "save_adapter"]
