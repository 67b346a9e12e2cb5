"""Greedy decoding, batch 1, with a static KV cache and a compiled one-token step (StaticDecoder).

A decode step of a small model on a CPU is mostly interpreter overhead: hundreds of small eager
kernels per token (dtype casts around each int4 matmul, cache concatenation, norms, rotary), each
dispatched from Python. transformers' StaticCache gives every step the same shapes, so
torch.compile (inductor, C++ on a CPU) traces the step once into one graph that fuses those small
kernels; the int4 kernel and the LM head stay extern calls. bench/inference.py measures what it buys.

  decoder = StaticDecoder(model, max_length=512)        # compile=False: the same loop, eager
  tokens = decoder.generate(ids [1, T], new_tokens=64)  # [1, new_tokens], greedy
  token = decoder.prefill(ids); token = decoder.step(token, T)  # the same, one token at a time

The prompt runs eagerly (its length varies); each later token is one compiled step. Compiling takes
tens of seconds on the first step (once per decoder). The compiled step treats the model as frozen:
the model's weights, its int4 packing and its dequantized caches are read as they were when the first
step ran (QuantLinear's forward skips its buffer-state checks under compile), so build a new decoder
after changing the model. Greedy tokens equal an eager loop's up to float summation order: the test
compares them on a tiny model.
"""

from __future__ import annotations

import inspect
import shutil

import torch

from ..errors import ConfigError


def cpp_compiler() -> str | None:
    """The C++ compiler torch.compile builds CPU kernels with, if this machine has it."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return shutil.which(get_cpp_compiler())
    except Exception:  # no compiler configured or found
        return None


class StaticDecoder:
    def __init__(self, model, max_length: int = 512, compile: bool = True):
        from transformers import StaticCache

        if model.get_output_embeddings() is None:
            raise ConfigError("StaticDecoder needs a causal LM with an LM head (this model has none)")
        if max_length < 2:
            raise ConfigError(f"max_length {max_length}: the cache must hold a prompt token and a new one")
        on_cpu = next(model.parameters()).device.type == "cpu"
        if compile and on_cpu and cpp_compiler() is None:
            raise ConfigError("compiling the decode step on a CPU needs a C++ compiler (torch.compile builds its "
                              "kernels with g++ or clang++): install one, or decode without compile")
        self.model, self.max_length = model.eval(), max_length
        self.cache = StaticCache(config=model.config, max_cache_len=max_length)
        # transformers >= 5.2x names the KV cache `cache` (`past_key_values` is deprecated)
        self._cache_key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self._prompted = False
        self._step = torch.compile(self._forward, dynamic=False, fullgraph=True) if compile else self._forward

    def _forward(self, ids: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=ids, use_cache=True, cache_position=position, logits_to_keep=1,
                         **{self._cache_key: self.cache})
        return out.logits[:, -1]

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """Start over with the prompt `ids` [1, T] (eager); returns the first greedy token, [1, 1]."""
        if ids.dim() != 2 or ids.shape[0] != 1:
            raise ConfigError(f"StaticDecoder decodes one sequence: ids must be [1, T], got {list(ids.shape)}")
        if ids.shape[1] >= self.max_length:
            raise ConfigError(f"{ids.shape[1]} prompt tokens leave no room for a new one in max_length "
                              f"{self.max_length}: build the decoder with a larger max_length")
        self.cache.reset()
        self._prompted = True
        return self._forward(ids, torch.arange(ids.shape[1], device=ids.device)).argmax(-1, keepdim=True)

    @torch.no_grad()
    def step(self, token: torch.Tensor, position: int) -> torch.Tensor:
        """The greedy token after `token` [1, 1] at cache position `position` (compiled)."""
        if not self._prompted:  # the eager prompt also builds the kernel weights the compiled step reads
            raise ConfigError("StaticDecoder.step before any prompt: call prefill(ids) first")
        # a fresh position tensor each step: the compiled graph reads its value, not a Python int
        return self._step(token, torch.tensor([position], device=token.device)).argmax(-1, keepdim=True)

    def generate(self, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
        """The `new_tokens` greedy tokens after the prompt `ids` [1, T], as [1, new_tokens]."""
        length = ids.shape[-1]
        if new_tokens < 1 or length + new_tokens > self.max_length:
            raise ConfigError(f"{length} prompt tokens + {new_tokens} new ones do not fit max_length "
                              f"{self.max_length} (and at least one new token is needed): build the decoder "
                              "with a larger max_length")
        tokens = [self.prefill(ids)]
        for i in range(new_tokens - 1):
            tokens.append(self.step(tokens[-1], length + i))
        return torch.cat(tokens, dim=1)
