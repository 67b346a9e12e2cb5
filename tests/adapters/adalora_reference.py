"""Side by side: slimtune's AdaLoRA and PEFT's AdaLoraModel from the same initial weights on the same
data and Trainer settings (used by tests/adapters/test_adalora.py)."""

import copy

import torch

from slimtune.adapters.adalora import AdaLoraCallback, AdaLoraOptions, add_adalora, adalora_layers, orthogonality
from slimtune.train import Objective, TrainConfig, train

TARGETS = ("q_proj", "v_proj", "down_proj")


def _losses():
    from transformers import TrainerCallback

    class Losses(TrainerCallback):
        def __init__(self):
            self.losses = []

        def add_micro_batch_loss(self, value):
            self.losses.append(value)

    return Losses()


def _peft_allocate():
    from transformers import TrainerCallback

    class PeftAllocate(TrainerCallback):  # what a PEFT user has to remember to write
        def __init__(self, model):
            self.model = model

        def on_optimizer_step(self, args, state, control, **kwargs):
            self.model.base_model.update_and_allocate(state.global_step)

    return PeftAllocate


def run_both(net, tokenizer, examples, tmp, options: AdaLoraOptions, steps: int, alpha: float = 8.0, lr: float = 5e-3):
    from peft import AdaLoraConfig, get_peft_model

    ours = copy.deepcopy(net)
    torch.manual_seed(0)
    peft_config = AdaLoraConfig(init_r=options.init_r, target_r=options.target_r, tinit=options.tinit,
                                tfinal=options.tfinal, deltaT=options.deltaT, beta1=options.beta1, beta2=options.beta2,
                                orth_reg_weight=options.orth_reg_weight, total_step=steps, lora_alpha=alpha,
                                lora_dropout=0.0, target_modules=list(TARGETS), task_type="CAUSAL_LM")
    reference = get_peft_model(net, peft_config)
    names = [n for n, _ in ours.named_modules() if n.endswith(TARGETS)]
    # PEFT scales by alpha / (init_r + 1e-5) (its ranknum), so ours gets the alpha that gives that scaling
    r = options.init_r
    layers = add_adalora(ours, names, r=r, alpha=alpha * r / (r + 1e-5), dropout=0.0)
    with torch.no_grad():
        for name, layer in layers.items():
            theirs = reference.base_model.model.get_submodule(name)  # noqa
            layer.lora_A.weight.copy_(theirs.lora_A["default"])
            layer.lora_B.weight.copy_(theirs.lora_B["default"])
            layer.lora_E.copy_(theirs.lora_E["default"])
    config = TrainConfig(max_steps=steps, batch_size=4, learning_rate=lr, warmup_steps=0, lr_scheduler="constant",
                         logging_steps=1, save_steps=1000, max_length=64, seed=0)
    theirs_losses, ours_losses = _losses(), _losses()
    train(reference, tokenizer, examples, config, tmp / "peft", callbacks=[_peft_allocate()(reference), theirs_losses],
          progress=False)
    allocate = AdaLoraCallback(ours, options)
    train(ours, tokenizer, examples, config, tmp / "ours", callbacks=[allocate, ours_losses], progress=False,
          objective=Objective(regularizers=[orthogonality(options.orth_reg_weight)]))
    pattern = reference.peft_config["default"].rank_pattern
    peft_ranks = {n: sum(pattern[f"{n}.lora_E.default"]) for n in names}
    peft_kept = {n: torch.tensor(pattern[f"{n}.lora_E.default"]) for n in names}
    our_kept = {n: l.kept.clone() for n, l in adalora_layers(ours).items()}
    return dict(peft_losses=theirs_losses.losses, our_losses=ours_losses.losses, peft_ranks=peft_ranks,
                our_ranks={n: int(k.sum()) for n, k in our_kept.items()}, peft_kept=peft_kept, our_kept=our_kept,
                ours=ours, reference=reference, allocate=allocate)


if __name__ == "__main__":
    import sys
    from pathlib import Path

    from slimtune import lineage
    from slimtune.models import build_tiny_model, load_model

    tmp = Path(sys.argv[1])
    net, tok = load_model(build_tiny_model(tmp / "tiny", seed=0))
    examples = lineage.task_split("polarity", 0).train[:64]
    opts = AdaLoraOptions(init_r=6, target_r=3, tinit=2, tfinal=3, deltaT=1)
    out = run_both(net, tok, examples, tmp, opts, steps=14, lr=float(sys.argv[2]) if len(sys.argv) > 2 else 5e-3)
    for a, b in zip(out["peft_losses"], out["our_losses"]):
        print(f"{a:.7f} {b:.7f} {abs(a-b):.2e}")
    print(out["peft_ranks"]); print(out["our_ranks"])
    print(all(torch.equal(out["peft_kept"][n], out["our_kept"][n]) for n in out["peft_kept"]))
