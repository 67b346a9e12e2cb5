"""Diagnostics of a tuned model against its base: intruder dimensions (intruders.py).

`diagnose_intruders` compares every adapted matrix with the base it was trained on: for an adapter,
the weight its layer computes with (W + update, masked for SparsePEFT, on the INT grid for
quantization-aware adapters) against its base layer's weight (dequantized for an INT4 base); for a
merged model, each block linear whose weight differs from the base model's.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..errors import ArtifactError, ConfigError
from ..guards import check_result_file
from .intruders import DEFAULT_EPSILON, DEFAULT_K, check_settings, intruder_dimensions, summarize

__all__ = ["diagnose_intruders", "format_intruders", "plot_intruders", "intruder_dimensions"]

PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def _check_plot(plot) -> None:
    if plot is None:
        return
    plot = Path(plot)
    if plot.is_dir() or plot.suffix.lower() not in PLOT_SUFFIXES:
        raise ConfigError(f"--plot {plot}: give a file path ending in {', '.join(PLOT_SUFFIXES)}")


def adapter_pairs(model, adapter, targets=None):
    """(module, base weight, tuned weight) of every adapted module: the base layer's weight (dequantized when
    quantized) and the layer's effective weight (what merge writes)."""
    from ..adapted import load_adapted
    from ..adapters import lora_layers
    from ..architectures import matches_any

    net, _ = load_adapted(model, adapter)
    for name, layer in lora_layers(net).items():
        if targets and not matches_any(name, targets):
            continue
        yield name, layer.base_layer.weight.detach(), layer.effective_weight().detach()


def tuned_pairs(model, tuned, targets=None):
    """(module, base weight, tuned weight) of every targeted block linear of `model` that `tuned` changed."""
    from ..models import adaptable_modules, load_model, target_modules

    base_net, _ = load_model(model)
    tuned_net, _ = load_model(tuned)
    names = target_modules(base_net, list(targets) if targets else None)
    tuned_linears = adaptable_modules(tuned_net)
    for name in names:
        if name not in tuned_linears:
            raise ArtifactError(f"the tuned model {tuned} has no linear module {name}; pass the base it was made "
                                "from (--model)")
        w0, w1 = base_net.get_submodule(name).weight.detach(), tuned_linears[name].weight.detach()
        if w0.shape != w1.shape:
            raise ArtifactError(f"module {name} is {tuple(w0.shape)} in {model} and {tuple(w1.shape)} in {tuned}; "
                                "pass the base the tuned model was made from (--model)")
        if not torch.equal(w0.float(), w1.float()):
            yield name, w0, w1


def diagnose_intruders(model: str | Path | None = None, *, adapter: str | Path | None = None,
                       tuned: str | Path | None = None, k: int = DEFAULT_K, epsilon: float = DEFAULT_EPSILON,
                       targets=None, out: str | Path | None = None, plot: str | Path | None = None) -> dict:
    """Intruder dimensions of an adapter on its base (`adapter`) or of a merged / fully tuned model against
    its base (`tuned`): per adapted matrix, how many of the tuned weight's top-k left singular vectors have
    |cosine| < epsilon with every left singular vector of the base (diagnose/intruders.py). `model` defaults
    to the base the adapter (or the tuned model's manifest) records. Returns {summary..., layers: [...]};
    writes the JSON to `out` and a plot to `plot` when given."""
    from ..adapters.peft_io import base_of_adapter
    from ..artifacts import Artifact, write_json_atomic

    started = time.time()
    k, epsilon = check_settings(k, epsilon)
    if (adapter is None) == (tuned is None):
        raise ConfigError("diagnose intruders compares one tuned weight set with its base: give either an adapter "
                          "(--adapter) or a tuned/merged model (--tuned), not " + ("both" if adapter else "neither"))
    check_result_file(out)
    _check_plot(plot)
    if model is None:
        model = base_of_adapter(adapter) if adapter is not None else _base_of_tuned(tuned)
    pairs = adapter_pairs(model, adapter, targets) if adapter is not None else tuned_pairs(model, tuned, targets)
    rows = []
    for name, w0, w1 in pairs:
        rows.append({"module": name, "shape": list(w0.shape), **intruder_dimensions(w0, w1, k, epsilon)})
    if not rows:
        raise ArtifactError(f"no adapted matrix to diagnose: {tuned or adapter} changes none of the targeted "
                            f"modules of {model}")
    artifact = Artifact.find(adapter if adapter is not None else tuned)
    result = {"model": str(model), "adapter": str(adapter) if adapter is not None else None,
              "tuned": str(tuned) if tuned is not None else None,
              "method": artifact.method if artifact is not None else None,
              **summarize(rows, k, epsilon), "seconds": round(time.time() - started, 3), "layers": rows}
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out, result)
    if plot is not None:
        plot_intruders(result, plot)
    return result


def _base_of_tuned(tuned) -> str:
    """The base a merged model was made from: the model its merge manifest records."""
    from ..artifacts import Artifact

    artifact = Artifact.find(tuned)
    if artifact is None or not artifact.base:
        raise ConfigError(f"{tuned} does not record the base it was made from; pass it with --model")
    return artifact.base


def format_intruders(result: dict, width: int = 100) -> str:
    """A per-layer table (module, k, intruders, the max-similarity of each top-k vector) and the summary."""
    lines = [f"{'module':<44} {'k':>3} {'intr':>4}  max |cos| of each top-k singular vector (* < {result['epsilon']})"]
    for r in result["layers"]:
        sims = " ".join(f"{v:.2f}{'*' if i in r['intruder_index'] else ''}" for i, v in enumerate(r["max_sim"]))
        lines.append(f"{r['module']:<44} {r['k']:>3} {r['intruders']:>4}  {sims}"[:width + 60])
    lines.append(f"intruders: {result['total_intruders']} in {result['modules_with_intruders']} of "
                 f"{result['modules']} matrices (k={result['k']}, epsilon={result['epsilon']}; "
                 f"mean {result['mean_intruders_per_module']:.2f} per matrix)")
    return "\n".join(lines)


def plot_intruders(result: dict, path) -> None:
    """Per matrix: the max |cosine| of each of its tuned top-k singular vectors (intruders in red, below the
    epsilon line), and the intruder count per matrix as bars."""
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["layers"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(7.0, 0.12 * len(rows) + 3), 6), dpi=120, sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    for x, r in enumerate(rows):
        sims = r["max_sim"]
        bad = set(r["intruder_index"])
        top.scatter([x] * len(sims), sims, s=10, c=["tab:red" if i in bad else "0.55" for i in range(len(sims))])
    top.axhline(result["epsilon"], color="tab:red", lw=0.8, ls="--", label=f"epsilon = {result['epsilon']}")
    top.set_ylim(0, 1.02)
    top.set_ylabel("max |cos| with the base")
    top.legend(loc="lower right", fontsize=8)
    top.set_title(f"intruder dimensions: {result['total_intruders']} in {result['modules_with_intruders']} of "
                  f"{result['modules']} matrices (top k={result['k']})", fontsize=10)
    bottom.bar(range(len(rows)), [r["intruders"] for r in rows], color="tab:red")
    bottom.set_ylabel("intruders")
    step = max(1, len(rows) // 40)
    bottom.set_xticks(range(0, len(rows), step))
    bottom.set_xticklabels([rows[i]["module"].replace("model.layers.", "") for i in range(0, len(rows), step)],
                           rotation=90, fontsize=6)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
