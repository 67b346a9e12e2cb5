"""Tokenizer metadata for a GGUF file, from a Hugging Face fast tokenizer (byte-level BPE).

Keys as llama.cpp reads them (the names GGUFWriter's add_* methods write): tokenizer.ggml.model
"gpt2" (byte-level BPE), tokenizer.ggml.pre (which pre-tokenizer regex llama.cpp applies),
tokens, token_type (special added tokens CONTROL, other added tokens USER_DEFINED, padding rows
of a larger embedding UNUSED), merges, the bos/eos/unk/pad ids, add_bos/add_eos (what the HF
tokenizer does to a plain text) and the chat template.

The pre-tokenizer is named from the tokenizer's own pre_tokenizer: plain ByteLevel with its regex
is "gpt-2"; Digits(individual) then ByteLevel is "smollm" (SmolLM's). Anything else needs an
explicit `tokenizer_pre` (a name llama.cpp knows), so a file never tokenizes silently differently.
"""

from __future__ import annotations

import json

import gguf

from ..errors import ConfigError


def _pre_name(pre: dict | None) -> str | None:
    if not pre:
        return None
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"):
        return "gpt-2"
    if pre.get("type") == "Sequence":
        kinds = [(p.get("type"), p.get("individual_digits"), p.get("use_regex", True)) for p in pre["pretokenizers"]]
        if kinds == [("Digits", True, True), ("ByteLevel", None, True)]:
            return "smollm"
    return None


def _add_special(tokenizer) -> tuple[bool, bool]:
    ids = tokenizer("a").input_ids
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return (bos is not None and ids[:1] == [bos], eos is not None and len(ids) > 1 and ids[-1] == eos)


def add_vocab(writer: gguf.GGUFWriter, tokenizer, n_vocab: int, tokenizer_pre: str | None = None) -> dict:
    """Write the tokenizer keys; returns {"model", "pre", "tokens"} for the export report."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError("GGUF export needs a fast (tokenizers) tokenizer; this one has no tokenizer.json")
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise ConfigError(f"GGUF export writes byte-level BPE tokenizers (GPT-2 style); this one is "
                          f"{model.get('type')} with a {(spec.get('decoder') or {}).get('type')} decoder")
    pre = tokenizer_pre or _pre_name(spec.get("pre_tokenizer"))
    if pre is None:
        raise ConfigError(f"cannot name this tokenizer's pre-tokenizer for llama.cpp "
                          f"({json.dumps(spec.get('pre_tokenizer'))[:200]}); pass tokenizer_pre (e.g. 'gpt-2', "
                          f"'llama-bpe', 'smollm'), a name llama.cpp's vocabulary loader knows")
    vocab = tokenizer.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    if sorted(by_id) != list(range(len(by_id))) or len(by_id) > n_vocab:
        raise ConfigError(f"tokenizer ids are not 0..{len(by_id) - 1} within the model's {n_vocab} embeddings")
    added = {i: tok for i, tok in tokenizer.added_tokens_decoder.items()}
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL if i not in added else
                         gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for kind in ("bos", "eos", "unk", "pad"):
        tid = getattr(tokenizer, f"{kind}_token_id", None)
        if tid is not None:
            getattr(writer, f"add_{kind}_token_id")(int(tid))
    add_bos, add_eos = _add_special(tokenizer)
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(add_eos)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str):
        writer.add_chat_template(template)
    return {"model": "gpt2", "pre": pre, "tokens": n_vocab, "merges": len(merges)}
