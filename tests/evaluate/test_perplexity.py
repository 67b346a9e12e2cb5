import math

import pytest
import torch

from slimtune.errors import ConfigError, DataError
from slimtune.evaluate import perplexity
from slimtune.evaluate.perplexity import windows


def _tokens(tok, text):
    return tok(text, add_special_tokens=False, verbose=False)["input_ids"]


def _reference_nll_sum(model, ids: list[int], first: int) -> tuple[float, int]:
    """Naive: one unpadded forward, sum -log p(token) for the tokens from `first` on."""
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    return -sum(logp[t - 1, ids[t]].item() for t in range(first, len(ids))), len(ids) - first


def test_non_overlapping_matches_naive_loop(tiny, news):
    model, tok = tiny
    ids, L = _tokens(tok, news), 64
    total, count = 0.0, 0
    for begin in range(0, len(ids), L):
        window = ids[begin:begin + L]
        if len(window) > 1:
            s, n = _reference_nll_sum(model, window, 1)
            total, count = total + s, count + n
    r = perplexity(model, tok, news, seq_len=L, batch_size=3, progress=False, prefix=False)
    assert r["tokens_scored"] == count
    assert r["nll"] == pytest.approx(total / count, rel=1e-5)
    assert r["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)
    assert (r["seq_len"], r["stride"]) == (L, L)


def test_sliding_window_matches_naive_loop(tiny, news):
    model, tok = tiny
    ids, L, stride = _tokens(tok, news)[:700], 64, 16
    text = tok.decode(ids)
    assert _tokens(tok, text) == ids  # byte-level BPE round-trips
    # Every token t >= 1 is predicted from the window that ends right after it scores it.
    total, count, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + L, len(ids))
        s, n = _reference_nll_sum(model, ids[begin:end], max(prev_end, begin + 1) - begin)
        total, count, prev_end = total + s, count + n, end
        if end == len(ids):
            break
    r = perplexity(model, tok, text, seq_len=L, stride=stride, batch_size=4, progress=False, prefix=False)
    assert r["tokens_scored"] == count == len(ids) - 1
    assert r["nll"] == pytest.approx(total / count, rel=1e-5)


@pytest.mark.parametrize("stride", [None, 16])
def test_prefix_windows_match_naive_loop(tiny, news, stride):
    """Each window is [BOS] + its text: every token is scored, the first after BOS alone."""
    model, tok = tiny
    ids, L = _tokens(tok, news)[:700], 64
    text = tok.decode(ids)
    step = stride or L
    total, count, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), step):
        end = min(begin + L, len(ids))
        s, n = _reference_nll_sum(model, [tok.bos_token_id] + ids[begin:end], max(prev_end, begin) - begin + 1)
        total, count, prev_end = total + s, count + n, end
        if end == len(ids):
            break
    r = perplexity(model, tok, text, seq_len=L, stride=stride, batch_size=3, progress=False)
    assert r["prefix_token"] == tok.bos_token_id
    assert r["tokens_scored"] == count == len(ids)
    assert r["nll"] == pytest.approx(total / count, rel=1e-5)


def test_prefix_is_not_doubled_by_a_tokenizer_that_adds_bos(tiny, tiny_bos, news):
    a = perplexity(*tiny, news, seq_len=40, progress=False)
    b = perplexity(*tiny_bos, news, seq_len=40, progress=False)
    assert (a["tokens_scored"], a["prefix_token"]) == (b["tokens_scored"], b["prefix_token"])
    assert a["nll"] == pytest.approx(b["nll"], rel=1e-6)
    assert a["nll"] != pytest.approx(perplexity(*tiny, news, seq_len=40, progress=False, prefix=False)["nll"])


def test_agrees_with_lm_eval_rolling_loglikelihood(tiny, news):
    """Each window scored as lm-eval scores a one-window document: [prefix] + tokens[:-1] -> tokens."""
    from lm_eval.api.instance import Instance

    from slimtune.evaluate.lm_eval_bridge import _lm

    model, tok = tiny
    L, k = 48, 3
    ids = _tokens(tok, news)[:L * k]
    docs = [tok.decode(ids[i * L:(i + 1) * L]) for i in range(k)]
    assert [_tokens(tok, d) for d in docs] == [ids[i * L:(i + 1) * L] for i in range(k)]
    ours = perplexity(model, tok, tok.decode(ids), seq_len=L, progress=False)
    lm = _lm(model, tok, batch_size=2, max_length=L)
    requests = [Instance("loglikelihood_rolling", {}, (d,), i) for i, d in enumerate(docs)]
    theirs = -sum(lm.loglikelihood_rolling(requests, disable_tqdm=True)) / (L * k)
    assert ours["tokens_scored"] == L * k
    assert ours["nll"] == pytest.approx(theirs, rel=1e-5)


@pytest.mark.parametrize("n", [64, 65, 100, 128, 129, 300])
@pytest.mark.parametrize("seq_len,stride", [(64, 64), (64, 32), (64, 1), (64, 63), (16, 5)])
def test_window_invariants(n, seq_len, stride):
    with_prefix = [t for _, end, first in windows(n, seq_len, stride, prefix=True) for t in range(first, end)]
    assert sorted(with_prefix) == list(range(n))  # after a prefix token, every token exactly once
    spans = windows(n, seq_len, stride)
    scored = [t for _, end, first in spans for t in range(first, end)]
    assert len(scored) == len(set(scored))  # nothing scored twice
    assert all(end - begin <= seq_len for begin, end, _ in spans)
    if stride < seq_len:
        assert sorted(scored) == list(range(1, n))  # every token but the first, exactly once
        # each scored token (after the first window) sees at least seq_len - stride tokens of context
        assert all(first - begin >= seq_len - stride for begin, _, first in spans[1:])
    else:  # non-overlapping: the first token of each window has no context
        assert len(scored) == n - sum(1 for b in range(0, n, seq_len))


def test_batch_size_and_progress_do_not_change_results(tiny, news):
    model, tok = tiny
    a = perplexity(model, tok, news, seq_len=48, stride=20, batch_size=1, progress=False)
    b = perplexity(model, tok, news, seq_len=48, stride=20, batch_size=7, progress=True)
    assert a["tokens_scored"] == b["tokens_scored"] and a["windows"] == b["windows"]
    assert a["perplexity"] == pytest.approx(b["perplexity"], rel=1e-5)


def test_max_windows(tiny, news):
    model, tok = tiny
    r = perplexity(model, tok, news, seq_len=32, max_windows=3, progress=False)
    assert r["windows"] == 3 and r["tokens_scored"] == 3 * 32


def test_errors(tiny):
    model, tok = tiny
    with pytest.raises(DataError, match="fewer than one window"):
        perplexity(model, tok, "too short", seq_len=64, progress=False)
    with pytest.raises(ConfigError, match="stride"):
        perplexity(model, tok, "x " * 200, seq_len=16, stride=17, progress=False)
    with pytest.raises(ConfigError, match="context"):
        perplexity(model, tok, "x " * 2000, seq_len=1024, progress=False)
