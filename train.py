"""
Fine-tune a pretrained BERT-style encoder on text classification with noisy labels.

The run: load a dataset (data.py) and the encoder (model.py) -> inject the method's PEFT
kind (peft.py) -> corrupt the training labels (noise.py) -> train with the engine
(engine.py: AdamW, warm-up + linear decay, the method's hooks from hooks.py) -> every
epoch evaluate on the clean test split and measure memorisation on the training set
(evaluation.py) -> write metrics.jsonl, an atomic checkpoint and finally summary.json and
the PEFT weights into --out (checkpoint.py). Under torchrun the run is data parallel (dist.py).

Memorisation follows Arpit et al. 2017 / the CleaR paper (Kim et al. 2024, Sec. 3): for
each truly noisy training sample, is the prediction the noisy label (memorised), the true
label (corrected) or something else? The methods and their flags come from the registries
(methods/, peft.py): this file never names a method.

Usage:
    python train.py --method clear --max_train 2000              # CleaR on LoRA, a few minutes on a CPU
    python train.py --eval_only --load runs/mr-lora-sym0.4-s0    # reload the saved PEFT weights
"""

import argparse
import json
import os
import resource
import sys
import time
from contextlib import nullcontext
from dataclasses import fields

import numpy as np
import torch

import checkpoint
import data
import dist
import engine
import export
import methods
import noise
import outputs
import peft
import speedups
from evaluation import epoch_metrics, evaluation_model, folds, predict, sentence_embeddings
from mixture import LossDetector
from model import Classifier, ModelLoadError, count_params, default_model_dir, load_pretrained
import settings
from settings import SettingError

class RunError(RuntimeError):
    """A run that cannot start as asked (settings, output directory, resume mismatch)."""


ORACLES = ("none", "clean-subset", "noise-free")  # --oracle: the references a perfect detector / no noise would give


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    kinds = [k for k, c in peft.KINDS.items() if c.standalone and not c.trains_base]  # "none" is full fine-tuning
    p.add_argument("--method", choices=methods.names(), default="clear", help="what to fine-tune (see methods/__init__.py)")
    p.add_argument("--peft", choices=kinds + ["none"], default="lora",
                   help="the PEFT kind under a method that sits on one (clear, match); none = full fine-tuning")
    p.add_argument("--dataset", default="mr", help=f"{', '.join(data.DATASETS)} (data.DATASETS), or a "
                   ".csv/.tsv/.jsonl file with text,label columns")
    p.add_argument("--test_file", default=None, help="test file for a user dataset (else a seeded 20%% split)")
    p.add_argument("--model", default=None, help="BERT directory (config.json, model.safetensors, tokenizer.json); "
                                                "default: the packaged all-MiniLM-L6-v2")
    p.add_argument("--noise", choices=noise.NOISE_KINDS, default="sym",
                   help="label noise on the training split (noise.py): sym flips exactly a share r of the labels to "
                        "another class; sym-incl (the CleaR code's) redraws r of them from all K classes, so only "
                        "r(K-1)/K change - r/2 on two classes; asym i -> i+1 with probability r; idn per-sample "
                        "rates (Xia et al. 2020; on two classes the flip target cannot depend on the text). The "
                        "realised flip rate is printed and saved")
    p.add_argument("--noise_rate", type=float, default=0.2, help="noise rate r in [0, 1)")
    p.add_argument("--oracle", choices=ORACLES, default="none",
                   help="a reference that reads the true labels (never a method): clean-subset trains only on the "
                        "truly clean rows of the noisy training split, noise-free on their true labels; the noisy "
                        "validation split stays as it is")
    p.add_argument("--epochs", type=int, default=6, help="training epochs")
    p.add_argument("--batch_size", type=int, default=32, help="training batch size")
    p.add_argument("--eval_batch_size", type=int, default=64, help="batch size for evaluation passes")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the PEFT kind's, peft.py)")
    p.add_argument("--weight_decay", type=float, default=0.01, help="AdamW weight decay (not on biases/LayerNorm)")
    p.add_argument("--warmup_ratio", type=float, default=0.1, help="fraction of steps with linear LR warm-up")
    p.add_argument("--lr_schedule", choices=("linear", "constant"), default="linear",
                   help="linear: warm-up then linear decay to zero; constant: the peak throughout (official CleaR)")
    p.add_argument("--grad_clip", type=float, default=1.0, help="max gradient norm (0 = off)")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout before the classifier head")
    p.add_argument("--max_len", type=int, default=128, help="truncate token sequences to this length")
    p.add_argument("--max_train", type=int, default=None, help="stratified, seeded subsample of N training examples")
    p.add_argument("--max_test", type=int, default=None,
                   help="stratified subsample of N test examples (the same for every seed)")
    p.add_argument("--val_fraction", type=float, default=0.1, help="share of the noisy training split held out "
                   "as validation data (same noise; stratified by observed label) to select the epoch with; "
                   "0 = none")
    p.add_argument("--warmup_epochs", type=int, default=3, help="epochs before a loss-mixture router (CleaR, "
                   "LoRAMoE --moe_types clean) starts using the mixture")
    p.add_argument("--loss_ema", type=float, default=0.9, help="the clean-sample detector fits its mixture to an "
                   "exponential moving average of each sample's loss, this weight on the previous value (the "
                   "official CleaR adapter code's 0.9; 0 = this epoch's loss alone)")
    p.add_argument("--seed", type=int, default=0, help="seed for noise, initialisation, dropout and batch order")
    p.add_argument("--out", default=None, help="output directory (default: runs/<dataset>-<method>-<noise><rate>-s<seed>)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto = cuda when available")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start over even if --out already holds a run")
    p.add_argument("--no_progress", action="store_true", help="no tqdm bars (for logs)")
    p.add_argument("--pad_to_max_len", action="store_true",
                   help="random batches padded to --max_len instead of length buckets (only to measure what "
                        "bucketing saves; the CleaR reference code feeds data this way)")
    p.add_argument("--grad_checkpointing", action="store_true",
                   help="recompute each layer's activations in backward: less memory, ~1/3 more compute")
    p.add_argument("--no_speedups", action="store_true", help="the plain textbook path: nn.Dropout, SDPA, every "
                   "top-layer token (slower on a CPU; other dropout draws, so other numbers)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="bf16 autocast (fp32 master weights, losses and metrics) or fp32; auto: bf16 on a GPU that "
                        "supports it and on a CPU with native bf16 (avx512_bf16 / AMX), else fp32")
    p.add_argument("--noisy_labels", default=None, help="train on the observed labels of this noise file "
                   "(a run's noisy_labels.csv) instead of drawing --noise")
    p.add_argument("--export_hf", default=None, help="after training, write the model merged into the Hugging Face "
                   "BertForSequenceClassification layout in this folder (full, lora, bitfit; export.py)")
    p.add_argument("--eval_only", action="store_true", help="only evaluate the run saved in --load on its test split")
    p.add_argument("--load", default=None, help="a finished run's directory (with peft.safetensors) for --eval_only")
    for cls in list(peft.KINDS.values()) + [m.settings for m in methods.METHODS.values() if m.settings]:
        settings.add_flags(p, cls)
    return finalize(p.parse_args(argv))


def finalize(args):
    """Defaults that depend on other flags, and every check that needs no file: RunError,
    PeftError or SettingError with one clear line."""
    method = methods.get(args.method)
    kind = method.kind(args)
    if method.peft is None and not method.allows(peft.KINDS[kind]):
        ok = ["none" if c.trains_base else k for k, c in peft.KINDS.items() if method.allows(c)]
        raise RunError(f"--method {args.method} cannot sit on --peft {args.peft}: choose from {', '.join(ok)}")
    method.finalize(args)
    args.method_module = methods.module_of(args.method)  # where a fresh process finds the entry again (load_run)
    if args.oracle != "none" and args.noise == "none" and not args.noisy_labels:
        raise RunError(f"--oracle {args.oracle} needs synthetic noise (--noise or --noisy_labels): without it the "
                       "true labels are unknown")
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


def build_model(args, num_classes):
    """Pretrained encoder (+ tokenizer) -> classifier -> the method's PEFT kind injected, everything
    else frozen -> the method's own changes -> the speed paths (speedups.py) unless --no_speedups."""
    method = methods.get(args.method)
    encoder, tokenizer = load_pretrained(args.model)
    if args.max_len > encoder.config.max_position_embeddings:
        raise RunError(f"--max_len {args.max_len} exceeds the model's {encoder.config.max_position_embeddings} "
                       "positions (max_position_embeddings in its config.json)")
    model = Classifier(encoder, num_classes, dropout=args.dropout)
    peft.inject(model, peft.kind_config(method.kind(args), vars(args)))
    method.build(model, args)
    if not args.no_speedups:
        speedups.enable(model, cls_only=not method.reads_all_tokens)
    return model, tokenizer


def build_hooks(args, model, num_train):
    return methods.get(args.method).hooks(model, args, num_train)


# --precision auto on a CPU with native bf16 (avx512_bf16 / AMX): bf16, measured against fp32 on CleaR, the quick mr
# command and the 20 Newsgroups fair-test setting, 3 seeds (results/precision, docs/speed.md): 1.6-1.9x the wall
# time, test accuracy within seed noise. Without native bf16 the CPU emulates it, slower than fp32: auto = fp32.
CPU_AUTO_PRECISION = "bf16"


def cpu_has_native_bf16():
    """Does this CPU multiply bf16 natively (the avx512_bf16 or amx_bf16 flag of /proc/cpuinfo)? Where that
    cannot be read (not Linux), no: fp32 is the safe guess."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def resolve_precision(device, precision):
    """fp32 or bf16: --precision as given, or auto's choice on this device."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if CPU_AUTO_PRECISION == "bf16" and cpu_has_native_bf16() else "fp32"


def pick_device(name, precision="auto"):
    """(device, autocast context factory). bf16 autocast keeps fp32 master weights, and the losses,
    the mixture and every metric are computed in fp32 (engine.py, evaluation.py)."""
    device = torch.device("cuda" if name == "auto" and torch.cuda.is_available() else
                          "cpu" if name == "auto" else name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError("--device cuda: no CUDA device is available")
    if resolve_precision(device, precision) == "fp32":
        return device, nullcontext
    if device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        raise RunError("--precision bf16: this CPU has no bf16 instructions (avx512_bf16 / AMX); use fp32")
    return device, (lambda: torch.autocast(device.type, dtype=torch.bfloat16))


# ----------------------------------------------------------------------------
# the run


def noisy_split(args, ds, model, tokenizer, device, log):
    """Token ids and labels of the noisy training split, minus a noisy validation share:
    ((train ids, true, observed), (val ids, true, observed), test ids, noise report of the training part,
    (observed labels of the whole split, which of its rows train)); --oracle changes the training part."""
    train_ids = data.encode(tokenizer, ds.train.texts, args.max_len)
    test_ids = data.encode(tokenizer, ds.test.texts, args.max_len)
    true, K = ds.train.labels, len(ds.class_names)
    if args.noisy_labels:  # a given noise draw (a run's noisy_labels.csv) instead of --noise
        observed = noise.read_noisy_labels(args.noisy_labels, true, ds.class_names)
        log(f"noise: observed labels read from {args.noisy_labels} (--noise and --noise_rate not used)")
    else:
        features = None
        if args.noise == "idn":  # before training: the pretrained encoder's view of each sample
            features = sentence_embeddings(model.encoder.to(device), train_ids, args.eval_batch_size, device)
        observed = noise.add_noise(true, args.noise, args.noise_rate, K, seed=args.seed, features=features)
    is_val = data.validation_split(observed, args.val_fraction, args.seed)
    source_rate = noise.noise_report(true[~is_val], observed[~is_val], K)["realized_rate"]
    observed, left_out = oracle_labels(args.oracle, observed, true, is_val, log)
    in_train = ~is_val & ~left_out
    part = lambda keep: ([train_ids[i] for i in np.flatnonzero(keep)], true[keep], observed[keep])
    train, val = part(in_train), part(is_val)
    report = {**noise.noise_report(train[1], train[2], K), "source_noise_rate": source_rate}
    how = f"from {args.noisy_labels}" if args.noisy_labels else f"{args.noise} r={args.noise_rate}"
    log(f"data: {ds.name}, {len(train[1])} train / {len(val[1])} noisy validation / {len(ds.test.labels)} test, "
        f"{K} classes; noise {how}: realised flip rate {report['realized_rate']:.3f}")
    for note in ds.notes:
        log(f"data: {note}")
    return train, val, test_ids, report, (observed, in_train)


def oracle_labels(oracle, observed, true, is_val, log):
    """--oracle: (observed labels, rows left out of training) of a reference run. clean-subset
    leaves the truly noisy training rows out, noise-free gives the training rows their true
    labels; the noisy validation rows stay as drawn, so selection is the methods'."""
    left_out = np.zeros(len(observed), dtype=bool)
    if oracle == "none":
        return observed, left_out
    observed, noisy = observed.copy(), (observed != true) & ~is_val
    if oracle == "clean-subset":
        log(f"oracle clean-subset: {int(noisy.sum())} truly noisy training rows left out (reads the true labels)")
        return observed, noisy
    log(f"oracle noise-free: {int(noisy.sum())} training labels set back to the true ones (reads the true labels)")
    observed[~is_val] = true[~is_val]
    return observed, left_out


def run(args):
    t_start = time.time()
    device, autocast = pick_device(args.device, args.precision)
    rank, world, dist_device = dist.setup(args.device)  # (0, 1, None) unless launched by torchrun
    device, main_rank = dist_device or device, rank == 0
    log = print if main_rank else (lambda *a, **k: None)
    torch.manual_seed(args.seed)  # the same on every rank: identical initial PEFT weights
    ds = data.load_data(args.dataset, test_file=args.test_file, max_train=args.max_train, seed=args.seed,
                        max_test=args.max_test)
    model, tokenizer = build_model(args, len(ds.class_names))
    if min(len(ds.train.texts), len(ds.test.texts)) < world:
        raise RunError(f"{min(len(ds.train.texts), len(ds.test.texts))} examples cannot be shared by {world} ranks")
    ckpt = open_out_dir(args, main_rank)  # only now, so that bad settings or files lose nothing
    (train_ids, true, observed), val, test_ids, report, (observed_all, in_train) = \
        noisy_split(args, ds, model, tokenizer, device, log)

    model.to(device)
    model.encoder.grad_checkpointing = args.grad_checkpointing
    hooks, detector = build_hooks(args, model, len(true)), LossDetector(args.loss_ema)
    fold = folds(model, hooks)  # the evaluation passes run on the model folded each epoch, where it folds
    if args.export_hf and not fold:
        export.fold_model(model, hooks)  # raises the ExportError saying why, now rather than after training
    precision = resolve_precision(device, args.precision)
    log(f"{args.method}: {peft.param_summary(model)}; {precision}" + (" autocast" if precision == "bf16" else "")
        + (f"; {world} ranks" if world > 1 else ""))
    params = count_params(model)  # (trainable, total) as built: --clear_freeze stops some of them later
    share = lambda batches: dist.shard(batches, rank, world)  # this rank's batches (all of them in one process)
    lengths = np.array([len(t) for t in train_ids])
    steps_of = lambda rows: len(share(data.length_bucketed_batches(lengths if rows is None else lengths[rows],
                                                                   args.batch_size, args.seed, 0)))
    method = methods.get(args.method)
    optim = dict(lr=args.lr, weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio,
                 lr_overrides=method.lr_overrides(args), schedule=args.lr_schedule)
    stage = engine.Stages(model, hooks, observed, steps_of, args.epochs, optim)  # keeps the initial weights
    history, sample_losses, start_epoch, wall_before = checkpoint.restore(ckpt, model, hooks, detector)
    at_stage_start = start_epoch in stage.starts  # resumed just before a fresh model: nothing of the old one
    stage.enter(min(start_epoch, args.epochs - 1), fresh=at_stage_start)
    if not at_stage_start:
        checkpoint.restore_optimizer(ckpt, stage.opt, stage.sched)
    if ckpt is not None:
        log(f"resumed from {args.out} after epoch {start_epoch}")
    if main_rank:
        write_metrics(args.out, history, "w")  # rewritten from the checkpoint's history
    # under torchrun, DistributedDataParallel averages the gradients of the ranks' batches
    forward = model if world == 1 else torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    pad_to = args.max_len if args.pad_to_max_len else None
    evaluate = lambda m, ids: predict(m, ids, args.eval_batch_size, device, autocast, hooks, pad_to, rank, world)

    for epoch in range(start_epoch, args.epochs):
        t0 = time.time()
        if stage.enter(epoch, fresh=True):
            log(f"epoch {epoch + 1}: a fresh model starts (stage {stage.starts.index(stage.start) + 1})")
        if world > 1:  # each rank its own dropout / gate draws
            torch.manual_seed(args.seed * 100_003 + epoch * 1_009 + rank)
        labels, keep = hooks.epoch_data(epoch, observed)  # the method's rows and labels (default: all, observed)
        rows = None if keep is None else np.flatnonzero(keep)
        batches = data.iterate_batches(train_ids, labels, args.batch_size, args.seed, epoch, shuffle=True,
                                       pad_to=pad_to, share=share, rows=rows)
        bar = None if args.no_progress or not main_rank or not sys.stderr.isatty() else f"epoch {epoch + 1}/{args.epochs}"
        stats = engine.train_epoch(forward, model, hooks, batches, stage.opt, stage.sched, args.grad_clip, autocast,
                                   device, steps_of(rows), bar)
        eval_model = evaluation_model(model, hooks, fold)
        test_logits, train_logits = evaluate(eval_model, test_ids), evaluate(eval_model, train_ids)  # one pass
        val_pred = evaluate(eval_model, val[0]).argmax(1) if len(val[0]) else None       # serves every metric
        del eval_model
        fit = detector.update(train_logits, observed)  # clean probabilities from the (smoothed) losses
        hooks.end_epoch(epoch, train_logits, observed, fit)
        train_pass_s = stats.pop("train_pass_s")
        m = {"epoch": epoch + 1, **stats,
             **epoch_metrics(test_logits, ds.test.labels, train_logits, observed, true, hooks, fit,
                             val_pred, *val[1:]),
             "lr": stage.sched.get_last_lr()[0], "train_pass_s": train_pass_s, "epoch_s": time.time() - t0}
        history.append(m)
        sample_losses.append(fit.loss)
        mem = "" if m["noisy_memorized"] is None else f", noisy memorised {m['noisy_memorized']:.3f}"
        log(f"epoch {epoch + 1}: train loss {m['train_loss']:.4f}, test acc {m['test_acc']:.4f}, "
            f"train clean acc {m['train_clean_acc']:.4f}{mem}")
        if main_rank:
            write_metrics(args.out, [m], "a")
            checkpoint.save_training_state(args.out, vars(args), epoch, history, sample_losses, model, stage.opt,
                                           stage.sched, hooks, detector, wall_before + time.time() - t_start)

    if start_epoch == args.epochs:  # resumed after the last epoch: the final passes again, for the outputs
        eval_model = evaluation_model(model, hooks, fold)
        test_logits, train_logits = evaluate(eval_model, test_ids), evaluate(eval_model, train_ids)
        fit = detector.current(train_logits, observed)
    dist.barrier()  # every rank has finished before rank 0 writes the results
    if not main_rank:
        return None
    checkpoint.save_peft(model, args.out, extra={"class_names": ds.class_names})
    if args.export_hf:
        export.export_hf(model, hooks, ds.class_names, args.model or default_model_dir(), args.export_hf)
        log(f"exported to {args.export_hf} (Hugging Face BertForSequenceClassification layout)")
    np.savez_compressed(os.path.join(args.out, "per_sample.npz"), loss=np.stack(sample_losses),
                        observed=observed, true=true)
    train_part = (ds.train.rows[in_train], [t for t, v in zip(ds.train.texts, in_train) if v], observed, true)
    issues = outputs.write_run_outputs(
        args.out, log, ds.class_names, train_part, (ds.train.rows, ds.train.labels, observed_all), train_logits,
        fit, np.stack(sample_losses), args.loss_ema, test_logits, ds.test.labels,
        has_truth=args.noise != "none" or bool(args.noisy_labels))
    summary = summarise(args, history, hooks, report, params, len(test_ids), device, precision, world,
                        wall_before + time.time() - t_start)
    summary.update(issues)
    checkpoint.write_json(os.path.join(args.out, "summary.json"), summary)
    print_done(args, summary)
    return summary


def print_done(args, summary):
    chosen = "" if summary["selected_epoch"] is None else \
        f"selected on noisy validation {summary['selected_test_acc']:.4f} (epoch {summary['selected_epoch']}), "
    print(f"done: test acc {chosen}best {summary['best_test_acc']:.4f} (epoch {summary['best_epoch']}, an "
          f"oracle), last {summary['last_test_acc']:.4f}; results in {args.out}")


def unused_settings(args):
    """The flags of the methods and PEFT kinds this run does not use: a change of their defaults (a newer
    version of the code) does not stop --resume."""
    method = methods.get(args.method)
    kind = peft.KINDS[method.kind(args)]
    others = [m.settings for m in methods.METHODS.values() if m.settings and m.settings is not method.settings]
    others += [k for k in peft.KINDS.values() if k is not kind]
    mine = {f.name for cls in (method.settings, kind) if cls for f in fields(cls)}
    return {f.name for cls in others for f in fields(cls)} - mine


def open_out_dir(args, main_rank):
    """Rank 0 prepares --out (checkpoint.prepare_out_dir); every rank gets the state to resume from, or None."""
    ckpt = checkpoint.prepare_out_dir(args.out, args.resume, args.overwrite, vars(args),
                                      ignored=unused_settings(args)) if main_rank else None
    dist.barrier()
    if not main_rank and args.resume:
        ckpt = checkpoint.load_state(os.path.join(args.out, checkpoint.CHECKPOINT_NAME))
    return ckpt


def write_metrics(out, rows, mode):
    """metrics.jsonl: one JSON object per epoch, written ("w") or appended ("a")."""
    with open(os.path.join(out, "metrics.jsonl"), mode) as f:
        f.writelines(json.dumps(m) + "\n" for m in rows)


def summarise(args, history, hooks, report, params, num_test, device, precision, world, wall_s):
    """summary.json: best and last test accuracy, memorisation, sizes, cost, the method's summary keys."""
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:  # ru_maxrss is in KiB on Linux
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    accs, last = [m["test_acc"] for m in history], history[-1]
    val = [m["val_acc"] for m in history]
    # the first epoch with the best noisy-val accuracy, among the epochs of the last stage: the model a method
    # makes is its last stage's (filter-and-retrain's detecting stage is a means, not a candidate)
    first = max(hooks.stage_starts(), default=0)
    selected = first + int(np.argmax(val[first:])) if None not in val else None
    trainable, total = params
    train_s = sum(m["train_pass_s"] for m in history)
    return {
        "selected_test_acc": None if selected is None else accs[selected],
        "selected_epoch": None if selected is None else selected + 1,
        "selected_val_acc": None if selected is None else val[selected],
        "best_test_acc": max(accs), "best_epoch": int(np.argmax(accs)) + 1, "last_test_acc": accs[-1],
        "noisy_memorized": last["noisy_memorized"], "train_clean_acc": last["train_clean_acc"],
        "realized_noise_rate": report["realized_rate"], "source_noise_rate": report.get("source_noise_rate"),
        "num_train": report["num_samples"], "num_test": num_test,
        "num_classes": len(report["class_counts"]), "trainable_params": trainable, "total_params": total,
        "wall_s": wall_s, "samples_per_s": len(history) * report["num_samples"] / train_s if train_s else None,
        "peak_mem_mb": peak_mb, "device": device.type, "precision": precision,
        "ranks": world,
        "det_auroc": last["det_auroc"], "det_auroc_loss": last["det_auroc_loss"],
        "test_nll": last["test_nll"], "test_ece": last["test_ece"],
        **{k: last[k] for k in hooks.summary_keys if k in last}, "config": vars(args),
    }


def load_run(run_dir, device="auto", clear_eval=None, overrides=None):
    """A finished run rebuilt from its summary.json config and saved PEFT weights:
    (model on its device in eval mode, tokenizer, hooks, config Namespace, class names, saved summary).
    clear_eval: CleaR's gate mode for this use (default: the run's own); overrides: other settings."""
    summary_path = os.path.join(run_dir or "", "summary.json")
    if not os.path.isfile(summary_path):
        raise RunError(f"{summary_path} not found: {run_dir!r} is not a finished run of train.py")
    try:
        with open(summary_path) as f:
            saved = json.load(f)
        config = saved["config"]
        method = methods.get(config["method"], config.get("method_module"))  # outside methods/: imported now
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise RunError(f"{summary_path}: not a summary written by train.py ({e!r})") from None
    if method.run is not None:
        raise RunError(f"{run_dir}: a --method {config['method']} run keeps no fine-tuned model to reload "
                       "(predict, --eval_only and --export_hf need one)")
    class_names = checkpoint.read_peft_config(run_dir)["class_names"]
    defaults = vars(parse_args(["--method", config["method"]]))  # settings added since the run was made
    cfg = argparse.Namespace(**{**defaults, **config, "device": device, **(overrides or {})})
    if clear_eval is not None:
        cfg.clear_eval = clear_eval
    dev, _ = pick_device(cfg.device)
    model, tokenizer = build_model(cfg, len(class_names))
    checkpoint.load_peft(model, run_dir)
    hooks = build_hooks(cfg, model, saved.get("num_train", 1))
    return model.to(dev).eval(), tokenizer, hooks, cfg, class_names, saved


def evaluate_saved(args):
    """--eval_only: rebuild a finished run (load_run), report its test accuracy."""
    model, tokenizer, hooks, cfg, _, saved = load_run(args.load, args.device, args.clear_eval)
    device, autocast = pick_device(cfg.device, cfg.precision)
    ds = data.load_data(cfg.dataset, test_file=cfg.test_file, max_train=cfg.max_train, seed=cfg.seed,
                        max_test=cfg.max_test)
    test_ids = data.encode(tokenizer, ds.test.texts, cfg.max_len)
    acc = float((predict(model, test_ids, args.eval_batch_size, device, autocast, hooks).argmax(1)
                 == ds.test.labels).mean())
    print(f"{args.load}: test acc {acc:.4f} (the run reported {saved['last_test_acc']:.4f} after its last epoch)")
    return {"test_acc": acc, "saved_last_test_acc": saved["last_test_acc"]}


EXPECTED_ERRORS = (ModelLoadError, checkpoint.CheckpointError, data.DataError, dist.DistError, export.ExportError,
                   noise.NoiseError,
                   peft.PeftError, SettingError, RunError)


def main(argv=None):
    args = None
    try:
        args = parse_args(argv)
        if args.eval_only:
            return evaluate_saved(args)
        own_run = methods.get(args.method).run  # a method without train.py's loop (methods/practitioner.py)
        return own_run(args) if own_run else run(args)
    except EXPECTED_ERRORS as e:  # bad input: one clear line, no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        where = f" (checkpoint in {args.out})" if args is not None else ""
        print(f"\ninterrupted: continue with the same command plus --resume{where}", file=sys.stderr)
        sys.exit(130)
    finally:
        dist.teardown()  # leaves the torchrun process group, if any


if __name__ == "__main__":
    main()
