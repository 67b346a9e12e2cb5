import pytest
import torch

from slimtune.calibration import StatsCollector, capture_layer_inputs, decoder_layers, run_layerwise
from slimtune.data.calibration import calibration_batches
from slimtune.errors import ConfigError, DataError


@pytest.fixture
def tiny(tiny_llama):
    return tiny_llama


@pytest.fixture(scope="module")
def text(news_snippet):
    return news_snippet


def test_batches_shape_deterministic_and_windows_of_the_text(tiny, text):
    _, tok = tiny
    a = calibration_batches(tok, text, n_samples=5, seq_len=40, seed=3)
    b = calibration_batches(tok, text, n_samples=5, seq_len=40, seed=3)
    c = calibration_batches(tok, text, n_samples=5, seq_len=40, seed=4)
    assert a.shape == (5, 40) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    joined = " " + " ".join(map(str, ids)) + " "
    assert (a[:, 0] == tok.bos_token_id).all()  # each sample starts with the prefix token, as lm-eval scores
    for row in a[:, 1:].tolist():
        assert " " + " ".join(map(str, row)) + " " in joined


def test_batches_prefix_once_for_a_tokenizer_that_adds_bos_and_none_without_one(tiny_gemma3_dir, tiny_bert_dir, text):
    from slimtune.models import load_model

    _, gemma_tok = load_model(tiny_gemma3_dir)
    assert gemma_tok("a b")["input_ids"][0] == gemma_tok.bos_token_id  # Gemma's tokenizer adds <bos> itself
    rows = calibration_batches(gemma_tok, text, 3, 20)
    assert (rows[:, 0] == gemma_tok.bos_token_id).all() and not (rows[:, 1:] == gemma_tok.bos_token_id).any()
    _, bert_tok = load_model(tiny_bert_dir)  # neither BOS nor EOS: the windows are text only
    ids = bert_tok(text, add_special_tokens=False)["input_ids"]
    rows = calibration_batches(bert_tok, text, 2, 20, seed=5)
    joined = " " + " ".join(map(str, ids)) + " "
    assert rows.shape == (2, 20) and all(" " + " ".join(map(str, r)) + " " in joined for r in rows.tolist())


def test_named_source_and_file(tiny, tmp_path, text):
    _, tok = tiny
    assert calibration_batches(tok, "news", 2, 16).shape == (2, 16)
    f = tmp_path / "calib.txt"
    f.write_text(text)
    assert torch.equal(calibration_batches(tok, str(f), 3, 16, seed=1), calibration_batches(tok, text, 3, 16, seed=1))


def test_too_short_text_names_the_numbers(tiny):
    _, tok = tiny
    with pytest.raises(DataError, match=r"has \d+ tokens, but 16 samples x 511 text tokens \(after the prefix token\) need 8176"):
        calibration_batches(tok, "a short text, far too short", 16, 512)


@pytest.mark.parametrize("kwargs,match", [({"n_samples": 0}, "n_samples"), ({"seq_len": 1}, "seq_len"),
                                          ({"seed": "x"}, "seed")])
def test_bad_counts(tiny, text, kwargs, match):
    _, tok = tiny
    with pytest.raises(ConfigError, match=match):
        calibration_batches(tok, text, **kwargs)


def test_capture_gives_embeddings_and_layer_kwargs(tiny, text):
    model, tok = tiny
    ids = calibration_batches(tok, text, 4, 24)
    chunks = capture_layer_inputs(model, ids, batch_size=3)
    assert [c.hidden.shape[0] for c in chunks] == [3, 1]
    emb = model.get_input_embeddings()(ids)
    torch.testing.assert_close(torch.cat([c.hidden for c in chunks]), emb)
    assert "position_embeddings" in chunks[0].calls[0][1]
    assert decoder_layers(model)[0] == "model.layers"


def test_dense_walk_matches_model_and_stats_match_direct(tiny, text):
    model, tok = tiny
    ids = calibration_batches(tok, text, 4, 24)
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states
    seen = {}

    def on_layer(ctx):
        seen[ctx.index] = torch.cat([c.hidden for c in ctx.inputs])
        groups = sorted(tuple(n.rsplit(".", 1)[-1] for n in s.names) for s in ctx.stats)
        assert groups == [("down_proj",), ("gate_proj", "up_proj"), ("o_proj",), ("q_proj", "k_proj", "v_proj")]
        qkv = next(s for s in ctx.stats if len(s.names) == 3)
        x = ctx.layer.input_layernorm(seen[ctx.index]).reshape(-1, 64)
        assert qkv.n_tokens == x.shape[0]
        torch.testing.assert_close(qkv.sqnorm, (x ** 2).sum(0), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(qkv.hessian, 2 * x.t() @ x / x.shape[0], rtol=1e-4, atol=1e-4)

    run_layerwise(model, ids, on_layer, collect=("sqnorm", "hessian"), batch_size=3, progress=False)
    for i in range(2):
        torch.testing.assert_close(seen[i], hidden[i], rtol=1e-5, atol=1e-5)


def test_next_layer_inputs_come_from_pruned_layers(tiny, text):
    from slimtune.sparsity import wanda_prune

    model, tok = tiny
    ids = calibration_batches(tok, text, 4, 24)
    seen = {}

    def on_layer(ctx):
        seen[ctx.index] = torch.cat([c.hidden for c in ctx.inputs])
        for s in ctx.stats:
            for name in s.names:
                w = ctx.modules[name].weight
                w.data.copy_(wanda_prune(w, s.sqnorm, 0.5))

    run_layerwise(model, ids, on_layer, batch_size=2, progress=False)
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states  # the pruned model
    torch.testing.assert_close(seen[1], hidden[1], rtol=1e-5, atol=1e-5)


def _full_forward_layer_calls(model, ids):
    """Every block's (hidden states, keyword arguments) in one ordinary forward pass (hooks)."""
    _, layers = decoder_layers(model)
    calls = {}
    handles = [layer.register_forward_pre_hook(
        lambda m, a, k, i=i: calls.__setitem__(i, (a[0] if a else k["hidden_states"], dict(k))), with_kwargs=True)
        for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            model(ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return calls


def _assert_same(a, b, where):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape, where
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=where)
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("single_pass", [False, True])
def test_every_layer_gets_its_own_inputs(arch, single_pass, tiny_llama_dir, tiny_gemma3_dir, text):
    """Each layer's inputs in the layer-by-layer runner equal those of a full forward pass: Gemma-3's
    full-attention layer 2 has another RoPE base and no sliding window (here 8 < 24 tokens)."""
    from slimtune.models import load_model

    model, tok = load_model(tiny_llama_dir if arch == "llama" else tiny_gemma3_dir)
    ids = calibration_batches(tok, text, 4, 24)
    expected = _full_forward_layer_calls(model, ids)
    seen = {}

    def on_layer(ctx):
        if ctx.index not in seen:
            seen[ctx.index] = (torch.cat([c.hidden for c in ctx.inputs]), ctx.inputs[0].calls[ctx.index][1])

    run_layerwise(model, ids, on_layer, batch_size=4, progress=False, single_pass=single_pass)
    assert sorted(seen) == sorted(expected) == list(range(model.config.num_hidden_layers))
    for i, (hidden, kwargs) in seen.items():
        want_hidden, want_kwargs = expected[i]
        _assert_same(hidden, want_hidden, f"layer {i} hidden states")
        for key in ("position_embeddings", "attention_mask", "position_ids"):
            _assert_same(kwargs.get(key), want_kwargs.get(key), f"layer {i} {key}")
    if arch == "gemma3":  # the test has teeth: the layer types really differ
        assert not torch.equal(seen[2][1]["position_embeddings"][0], seen[0][1]["position_embeddings"][0])
        m0, m2 = seen[0][1]["attention_mask"], seen[2][1]["attention_mask"]
        assert m0 is not None and (m2 is None or not torch.equal(m0, m2))
        layer2 = decoder_layers(model)[1][2]
        with torch.no_grad():  # layer 0's arguments (the old runner's) give layer 2 another output
            own, borrowed = (layer2(seen[2][0], **kw) for kw in (seen[2][1], seen[0][1]))
        assert (own - borrowed).abs().max() > 1e-3


def test_collector_rejects_unknown_statistic():
    with pytest.raises(ConfigError, match="sqnorm, hessian"):
        StatsCollector({}, ["fisher"])


def test_layerwise_restores_training_mode(tiny, text):
    model, tok = tiny
    model.train()
    run_layerwise(model, calibration_batches(tok, text, 2, 16), lambda ctx: None, progress=False)
    assert model.training


def test_single_pass_prunes_each_linear_from_inputs_of_the_already_pruned_ones(tiny, text):
    """single_pass: one forward per layer; each group of linears sharing an input is pruned, just
    before it runs, from the statistics of its actual input, i.e. after the linears before it in
    the same layer were pruned. Check against a direct recomputation: the sqnorm each group was
    handed equals the squared norms of its input in the final (fully pruned) model."""
    from slimtune.calibration import input_groups
    from slimtune.sparsity import wanda_prune

    model, tok = tiny
    ids = calibration_batches(tok, text, 4, 24)
    assert input_groups(model, ids) == [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                                        ["self_attn.o_proj"], ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]
    handed, calls = {}, []

    def on_layer(ctx):
        (stats,) = ctx.stats
        assert list(ctx.modules) == stats.names
        calls.append([n.rpartition(".")[2] for n in stats.names])
        for name in stats.names:
            handed[name] = stats.sqnorm.clone()
            w = ctx.modules[name].weight
            w.data.copy_(wanda_prune(w, stats.sqnorm, 0.5))

    run_layerwise(model, ids, on_layer, batch_size=1, progress=False, single_pass=True)
    assert calls == [["q_proj", "k_proj", "v_proj"], ["o_proj"], ["gate_proj", "up_proj"], ["down_proj"]] * 2
    actual = {}

    def record(name):
        def fn(module, args):
            actual[name] = args[0].reshape(-1, args[0].shape[-1])
        return fn

    hooks = [m.register_forward_pre_hook(record(n)) for n, m in model.named_modules() if n in handed]
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    for name, sq in handed.items():
        torch.testing.assert_close(sq, actual[name].square().sum(0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("width", [64, 600])
def test_hessian_is_the_exact_symmetric_gram_matrix_over_all_chunks(width):
    from slimtune.calibration import InputStats

    g = torch.Generator().manual_seed(0)
    chunks = [torch.randn(2, 50, width, generator=g) for _ in range(3)]
    stats = InputStats(["x"], width, _want=("hessian",))
    for c in chunks:
        stats.add(c)
    stats.finish()
    x = torch.cat([c.reshape(-1, width) for c in chunks]).double()
    assert stats.n_tokens == 300
    assert torch.equal(stats.hessian, stats.hessian.t())          # mirrored from the upper triangle
    torch.testing.assert_close(stats.hessian.double(), 2 * x.t() @ x / 300, rtol=1e-5, atol=1e-4)
