"""
train.py's settings: every flag is a field of one of the dataclasses below (a comment per
field: its --help line), or of a PEFT kind's (peft/) or a method's (methods/) settings. The
parser is generated from them (settings.add_flags), so a new setting is one line here or in
its kind's or method's file. finalize() then fills the defaults that depend on other flags and
checks every value that needs no file, so an impossible run stops before anything is loaded.

Usage:
    >>> args = parse_args(["--method", "clear", "--max_train", "2000"])  # an argparse.Namespace
    >>> args.lr, args.out   # the PEFT kind's learning rate; the default output directory
    (0.002, 'runs/mr-clear-lora-sym0.2-s0')
"""

import argparse
import os
import sys
from dataclasses import dataclass, fields

import batching
import data
import export
import methods
import noise
import peft
from settings import add_flags, setting


class RunError(RuntimeError):
    """A run that cannot start as asked (settings, output directory, resume mismatch)."""


DEFAULT_NOISE_RATE = 0.2  # --noise_rate where noise is drawn and no rate is given
ORACLES = ("none", "clean-subset", "noise-free")  # --oracle: the references a perfect detector / no noise would give


def kind_rates():
    """'full 0.0001, lora 0.002, ...': each PEFT kind's default peak learning rate, for --lr's help."""
    return ", ".join(f"{'full' if c.trains_base else k} {c.default_lr:g}" for k, c in peft.KINDS.items()
                     if c.standalone)


def peft_choices():
    """--peft: the PEFT kinds a method can sit on; none = full fine-tuning."""
    return [k for k, c in peft.KINDS.items() if c.standalone and not c.trains_base] + ["none"]


@dataclass
class WhatToTrain:
    """What to train"""
    method: str = setting("clear", lambda: "what to fine-tune: a PEFT kind alone (" + ", ".join(
                          k for k in methods.names() if k not in methods.METHODS) + ") or a method (methods/): "
                          + methods.METHODS.help(),
                          choices=lambda: methods.names())
    peft: str = setting("lora", "the PEFT kind under a method that sits on one (clear, match); none = full "
                        "fine-tuning", choices=peft_choices)
    model: str | None = setting(None, "BERT directory (config.json, model.safetensors, tokenizer.json); default: "
                                "the packaged all-MiniLM-L6-v2")


@dataclass
class DataAndNoise:
    """Data and label noise"""
    dataset: str = setting("mr", lambda: f"{data.DATASETS.help()}; or your own .csv/.tsv/.jsonl file with text,label "
                           "columns")
    test_file: str | None = setting(None, "test file for a user dataset (else a seeded 20%% split)")
    noise: str | None = setting(None, lambda: "synthetic label noise on the training split (noise.NOISE_MODELS): "
                                + noise.NOISE_MODELS.help()
                                + ". Unset: sym on a packaged dataset (a benchmark), none on your own file (its "
                                "labels as given). The realised flip rate is printed and saved",
                                choices=lambda: list(noise.NOISE_MODELS))
    noise_rate: float | None = setting(None, f"noise rate r in [0, 1); unset: {DEFAULT_NOISE_RATE} where noise is "
                                       "drawn")
    noisy_labels: str | None = setting(None, "train on the observed labels of this noise file (a run's "
                                       "noisy_labels.csv) instead of drawing --noise")
    oracle: str = setting("none", "a reference that reads the true labels (never a method): clean-subset trains "
                          "only on the truly clean rows of the noisy training split, noise-free on their true "
                          "labels; the noisy validation split stays as it is", choices=ORACLES)
    max_len: int = setting(128, "truncate token sequences to this length")
    max_train: int | None = setting(None, "stratified, seeded subsample of N training examples")
    max_test: int | None = setting(None, "stratified subsample of N test examples (the same for every seed)")
    val_fraction: float = setting(0.1, "share of the noisy training split held out as validation data (same "
                                  "noise; stratified by observed label) to select the epoch with; 0 = none")


@dataclass
class Optimisation:
    """Optimisation"""
    epochs: int = setting(6, "training epochs")
    batch_size: int = setting(32, "training batch size")
    batch_order: str = setting("bucketed", "bucketed: similar lengths batched together (little padding); random: "
                               "random batches, as the reference codes feed them (batching.py)",
                               choices=lambda: batching.BATCH_ORDERS)
    eval_batch_size: int = setting(64, "batch size for evaluation passes")
    lr: float | None = setting(None, lambda: f"peak learning rate; unset: the PEFT kind's ({kind_rates()}) or the "
                               "method's own")
    weight_decay: float = setting(0.01, "AdamW weight decay (not on biases/LayerNorm)")
    warmup_ratio: float = setting(0.1, "fraction of steps with linear LR warm-up")
    lr_schedule: str = setting("linear", "linear: warm-up then linear decay to zero; constant: the peak "
                               "throughout (official CleaR)", choices=("linear", "constant"))
    grad_clip: float = setting(1.0, "max gradient norm (0 = off)")
    dropout: float = setting(0.1, "dropout before the classifier head")
    warmup_epochs: int = setting(3, "epochs before a loss-mixture router (CleaR, LoRAMoE --moe_types clean) "
                                 "starts using the mixture")
    loss_ema: float = setting(0.9, "the clean-sample detector fits its mixture to an exponential moving average "
                              "of each sample's loss, this weight on the previous value (the official CleaR "
                              "adapter code's 0.9; 0 = this epoch's loss alone)")
    seed: int = setting(0, "seed for noise, initialisation, dropout and batch order")


@dataclass
class RunAndOutputs:
    """Run, outputs and reloading"""
    out: str | None = setting(None, "output directory (default: runs/<dataset>-<method>[-<peft>]-<noise><rate>-"
                              "s<seed>)")
    device: str = setting("auto", "auto = cuda when available", choices=("auto", "cpu", "cuda"))
    resume: bool = setting(False, "continue the run in --out from its last checkpoint")
    overwrite: bool = setting(False, "start over even if --out already holds a run")
    no_progress: bool = setting(False, "no tqdm bars (for logs)")
    keep: str = setting("selected", "the weights a run saves (peft.safetensors: what predict.py, --export_hf and "
                        "--eval_only use): selected = the epoch chosen on noisy validation (the last without a "
                        "validation split), last = the last epoch's; checkpoint.safetensors always holds the last "
                        "for --resume", choices=("selected", "last"))
    export_hf: str | None = setting(None, lambda: "after training (or with --eval_only), write the kept model "
                                    "merged into the Hugging Face BertForSequenceClassification layout in this folder "
                                    f"({export.what_folds()}; export.py)")
    eval_only: bool = setting(False, "only evaluate the run saved in --load on its test split")
    load: str | None = setting(None, "a finished run's directory (with peft.safetensors) for --eval_only")


@dataclass
class SpeedAndPrecision:
    """Speed, memory and precision"""
    pad_to_max_len: bool = setting(False, "random batches padded to --max_len instead of length buckets (only to "
                                   "measure what bucketing saves; the CleaR reference code feeds data this way)")
    grad_checkpointing: bool = setting(False, "recompute each layer's activations in backward: less memory, "
                                       "about 1/3 more compute")
    no_speedups: bool = setting(False, "the plain textbook path (speedups.py off): nn.Dropout, SDPA, every "
                                "top-layer token, unfolded evaluation (slower; other dropout draws, so other numbers)")
    precision: str = setting("auto", "bf16 autocast (fp32 master weights, losses and metrics) or fp32; auto: bf16 "
                             "on a GPU that supports it and on a CPU with native bf16 (avx512_bf16 / AMX), else "
                             "fp32", choices=("auto", "fp32", "bf16"))


class HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each flag's default, except where there is none (its help says what unset means)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


RUN_SETTINGS = (WhatToTrain, DataAndNoise, Optimisation, RunAndOutputs, SpeedAndPrecision)


def parse_args(argv=None):
    """train.py's flags: the run's settings, then every PEFT kind's and every method's (generated)."""
    p = argparse.ArgumentParser(description="Fine-tune a pretrained BERT-style encoder on text classification "
                                "with noisy labels.", formatter_class=HelpWithDefaults)
    for cls in (*RUN_SETTINGS, *peft.KINDS.values(), *(m.settings for m in methods.METHODS.values() if m.settings)):
        add_flags(p, cls)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    refuse_idle_flags(args, {a[2:].split("=")[0] for a in argv if a.startswith("--")})
    return finalize(args)


# what --eval_only reads besides the saved run: where it runs, what it exports, a method's evaluation settings
EVAL_ONLY_FLAGS = {"eval_only", "load", "device", "export_hf", "no_progress"}


def refuse_idle_flags(args, typed):
    """No flag is silently ignored: one typed where it cannot act is an error naming it (RunError)."""
    if args.eval_only:
        own = {f.name for m in methods.METHODS.values() if m.settings for f in fields(m.settings)}
        idle = sorted(typed - EVAL_ONLY_FLAGS - own)
        if idle:
            raise RunError(f"--{idle[0]} does nothing with --eval_only (it evaluates the saved run's settings); "
                           "drop it")
        if not args.load:
            raise RunError("--eval_only needs --load RUN (a finished run's folder)")
        return
    if args.load:
        raise RunError("--load is for --eval_only; to continue a run use --resume with its --out")
    if args.resume and args.overwrite:
        raise RunError("--resume continues the run in --out and --overwrite starts it over: choose one")
    method = methods.get(args.method)
    idle = sorted(typed & unused_settings(args))
    if idle:
        owners = [m.name for m in methods.METHODS.values() if m.settings and idle[0] in
                  {f.name for f in fields(m.settings)}] or [k for k, c in peft.KINDS.items()
                                                            if idle[0] in {f.name for f in fields(c)}]
        raise RunError(f"--{idle[0]} is a setting of {', '.join(owners)}; --method {args.method} (PEFT kind "
                       f"{method.kind_name(args)}) does not use it")


def finalize(args):
    """Defaults that depend on other flags, and every check that needs no file: RunError,
    PeftError or SettingError with one clear line."""
    resolve_noise(args)
    method = methods.get(args.method)
    kind = method.kind_name(args)
    if method.peft is None and not method.can_sit_on(peft.KINDS[kind]):
        ok = ["none" if c.trains_base else k for k, c in peft.KINDS.items() if method.can_sit_on(c)]
        raise RunError(f"--method {args.method} cannot sit on --peft {args.peft}: choose from {', '.join(ok)}")
    method.finalize(args)
    args.method_module = methods.module_of(args.method)  # where a fresh process finds the entry again (load_run)
    for name, low in (("epochs", 1), ("batch_size", 1), ("eval_batch_size", 1), ("max_len", 2)):
        if getattr(args, name) < low:
            raise RunError(f"--{name} must be >= {low}, got {getattr(args, name)}")
    for name in ("dropout", "loss_ema"):
        if not 0 <= getattr(args, name) < 1:
            raise RunError(f"--{name} must be in [0, 1), got {getattr(args, name)}")
    peft.kind_config(kind, vars(args))  # the settings are checked now, before anything is loaded
    method.config(args)
    if args.lr is None:
        args.lr = method.default_lr or peft.KINDS[kind].default_lr
    if args.out is None:
        name = os.path.basename(args.dataset).split(".")[0]
        label = args.method if kind == args.method or method.peft else f"{args.method}-{kind}"
        args.out = os.path.join("runs", f"{name}-{label}-{args.noise}{args.noise_rate:g}-s{args.seed}")
    return args


def resolve_noise(args):
    """Your own data is yours: a file trains on its labels as given unless --noise asks for synthetic noise;
    a packaged dataset (a benchmark) gets sym noise at the default rate. A rate without noise is an error."""
    own_file = data.is_user_file(args.dataset)
    if args.noise is None:
        args.noise = "none" if own_file or args.noisy_labels else "sym"
    if args.oracle != "none" and args.noise == "none" and not args.noisy_labels:
        raise RunError(f"--oracle {args.oracle} needs synthetic noise (--noise or --noisy_labels): without it the "
                       "true labels are unknown")
    if args.noise == "none":
        if args.noise_rate not in (None, 0):
            raise RunError(f"--noise_rate {args.noise_rate:g} without --noise: "
                           + ("your file trains on its labels as given; " if own_file else "")
                           + "add --noise sym (or asym, idn, ...) to corrupt them on purpose")
        args.noise_rate = 0.0
    elif args.noise_rate is None:
        args.noise_rate = DEFAULT_NOISE_RATE


def unused_settings(args):
    """The flags of the methods and PEFT kinds this run does not use: a change of their defaults (a newer
    version of the code) does not stop --resume."""
    method = methods.get(args.method)
    kind = peft.KINDS[method.kind_name(args)]
    others = [m.settings for m in methods.METHODS.values() if m.settings and m.settings is not method.settings]
    others += [k for k in peft.KINDS.values() if k is not kind]
    mine = {f.name for cls in (method.settings, kind) if cls for f in fields(cls)}
    return {f.name for cls in others for f in fields(cls)} - mine
