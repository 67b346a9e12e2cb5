"""Perplexity with and without the prefix token, against lm-eval's rolling log-likelihood.

    python bench/bos.py --model /path/gemma-3-270m-q4_k_m.gguf       # 4 x 256 Wikipedia windows
    python bench/bos.py --model smollm2-135m --windows 8 --seq-len 512
    python bench/bos.py --model DIR_A --model DIR_B                  # several (e.g. compressed) models

For each model, on the first --windows windows of --seq-len text tokens of --text:
  slimtune   slimtune.evaluate.perplexity (each window after the prefix token: BOS, else EOS)
  no_prefix  the same windows scored without the prefix token (the old definition; the first
             token of each window unscored)
  lm_eval    lm-eval's HFLM.loglikelihood_rolling with each window's text as one document and
             max_length = seq_len, on the same in-memory model; `lm_eval_bos` with the tokenizer's
             own special tokens (Gemma's adds <bos>, so lm-eval's document starts <bos><bos>),
             `lm_eval` with add_bos_token=False (one prefix token, as slimtune)
Prints one JSON line per model and the ratios slimtune / lm_eval.
"""

from __future__ import annotations

import argparse
import json
import math


def measure(spec: str, text_source: str, windows: int, seq_len: int, batch_size: int) -> dict:
    from lm_eval.api.instance import Instance

    from slimtune.data import load_text
    from slimtune.evaluate import perplexity
    from slimtune.evaluate.lm_eval_bridge import _lm
    from slimtune.models import load_model

    model, tok = load_model(spec)
    ids = tok(load_text(text_source), add_special_tokens=False, verbose=False)["input_ids"][:windows * seq_len]
    docs = [tok.decode(ids[i * seq_len:(i + 1) * seq_len]) for i in range(windows)]
    text = tok.decode(ids)
    ours = perplexity(model, tok, text, seq_len=seq_len, max_windows=windows, batch_size=batch_size, progress=False)
    plain = perplexity(model, tok, text, seq_len=seq_len, max_windows=windows, batch_size=batch_size,
                       progress=False, prefix=False)
    out = {"model": spec, "text": text_source, "windows": windows, "seq_len": seq_len,
           "prefix_token": ours["prefix_token"], "slimtune": ours["perplexity"], "no_prefix": plain["perplexity"]}
    for key, add_bos in (("lm_eval", False), ("lm_eval_bos", None)):
        lm = _lm(model, tok, batch_size=batch_size, max_length=seq_len)
        lm.add_bos_token = add_bos
        requests = [Instance("loglikelihood_rolling", {}, (d,), i) for i, d in enumerate(docs)]
        logp = lm.loglikelihood_rolling(requests, disable_tqdm=True)
        n_tokens = sum(len(lm.tok_encode(d)) for d in docs)
        out[key] = math.exp(-sum(logp) / n_tokens)
    out["slimtune_over_lm_eval"] = out["slimtune"] / out["lm_eval"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", required=True)
    p.add_argument("--text", default="wiki")
    p.add_argument("--windows", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=2)
    args = p.parse_args()
    for spec in args.model:
        print(json.dumps(measure(spec, args.text, args.windows, args.seq_len, args.batch_size)), flush=True)


if __name__ == "__main__":
    main()
