"""
Fine-tune a pretrained BERT-style encoder on text classification with noisy labels.

A run, top to bottom (run()):
  prepare      load the data (data.py) and the encoder (model.py), inject the method's PEFT kind
               (peft/), corrupt the training labels (noisy_split.py, noise.py), build the method's
               hooks (hooks.py, methods/) and the optimizer of its first stage (engine.Stages)
  train_epoch  one epoch of optimizer steps (engine.py), then evaluation passes over the clean test
               split, the training rows and the noisy validation rows (evaluation.py): the
               clean-sample detector's refit (mixture.py), memorisation (Arpit et al. 2017; the
               CleaR paper, Kim et al. 2024, Sec. 3), metrics.jsonl and an atomic checkpoint
  finish       the PEFT weights, label issues and noise matrices (outputs.py), summary.json
Under torchrun the run is data parallel (dist.py). The flags come from config.py and the
registries (peft/, methods/): this file never names a method.

Usage:
    python train.py --method clear --max_train 2000              # CleaR on LoRA, a few minutes on a CPU
    python train.py --eval_only --load runs/mr-clear-lora-sym0.2-s0   # reload the saved PEFT weights
"""

import argparse
import json
import os
import resource
import sys
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

import checkpoint
import batching
import data
import dist
import engine
import export
import methods
import noise
import outputs
import peft
from build import build_hooks, build_model
from config import RunError, parse_args, unused_settings  # noqa: F401 (train.parse_args for tools)
from evaluation import Evaluator, epoch_metrics, run_passes
from speedups import can_fold, evaluation_model
from hardware import DeviceError, cpu_has_native_bf16, pick_device, resolve_precision  # noqa: F401
from mixture import LossDetector
from model import Classifier, ModelLoadError, count_params, default_model_dir
from noisy_split import make_noisy_split
from saved_run import evaluate_saved
from settings import SettingError


@dataclass
class Run:
    """One training run's state: what prepare() builds, each train_epoch() advances, finish() writes."""
    args: argparse.Namespace
    ds: data.TextData          # the loaded dataset (texts, labels, class names)
    split: object              # noisy_split.NoisySplit: what the run trains and selects on
    model: Classifier
    hooks: object              # the method's hooks.Hooks
    detector: LossDetector     # the clean-sample detector, refit every epoch
    stages: engine.Stages      # the optimizer and schedule of the current stage
    step: engine.Step          # what an optimizer step calls (DDP-wrapped under torchrun), gradient clipping
    evaluator: Evaluator       # how evaluation passes run
    progress: checkpoint.Progress  # finished epochs' metrics and losses, the next epoch, wall time
    fold: bool                 # the evaluation passes run on the model folded into plain weights
    params: tuple              # (trainable, total) parameters as built
    precision: str             # "fp32" or "bf16"
    rank: int                  # this process of `world` (0 of 1 without torchrun)
    world: int
    log: object                # print on rank 0, silent elsewhere
    started: float             # time.time() at the start of this process's part of the run
    last: tuple | None = None  # (evaluation.EpochPasses, mixture.DetectorFit) of the last epoch run here


def run(args):
    """prepare -> train the epochs -> finish; returns the summary (None on ranks other than 0)."""
    r = prepare(args)
    for epoch in range(r.progress.next_epoch, args.epochs):
        train_epoch(r, epoch)
    return finish(r)


def prepare(args):
    """Data, model, noise, hooks and optimizer of a run, resumed from --out's checkpoint with --resume."""
    started, (device, autocast) = time.time(), pick_device(args.device, args.precision)
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
    split = make_noisy_split(args, ds, model.encoder, tokenizer, device, log)
    model.to(device)
    model.encoder.grad_checkpointing = args.grad_checkpointing
    hooks, detector = build_hooks(args, model, len(split.train.true)), LossDetector(args.loss_ema)
    oracle = methods.get(args.method).reads_truth(vars(args))
    if oracle:  # a reference by construction: its hooks are handed the true labels
        log(f"oracle {oracle}: the method's hooks read the true training labels")
        hooks.read_truth(split.train.observed, split.train.true)
    fold = not args.no_speedups and can_fold(model, hooks)  # evaluation on the folded model: a speed path
    if args.export_hf and not fold:
        export.fold_model(model, hooks)  # raises the ExportError saying why, now rather than after training
    precision = resolve_precision(device, args.precision)
    log(f"{args.method}: {peft.param_summary(model)}; {precision}" + (" autocast" if precision == "bf16" else "")
        + (f"; {world} ranks" if world > 1 else ""))
    params = count_params(model)  # (trainable, total) as built: --clear_freeze stops some of them later
    stages = engine.Stages(model, hooks, split.train.observed, steps_per_epoch(args, split, rank, world),
                           args.epochs, optimizer_settings(args))  # keeps the initial weights
    progress = resume(ckpt, model, hooks, detector, stages, args.epochs)
    if ckpt is not None:
        log(f"resumed from {args.out} after epoch {progress.next_epoch}")
    if main_rank:
        write_metrics(args.out, progress.history, "w")  # rewritten from the checkpoint's history
    # under torchrun, DistributedDataParallel averages the gradients of the ranks' batches
    step_model = model if world == 1 else torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    evaluator = Evaluator(args.eval_batch_size, device, autocast, hooks,
                          args.max_len if args.pad_to_max_len else None, rank, world)
    return Run(args, ds, split, model, hooks, detector, stages, engine.Step(step_model, hooks, args.grad_clip,
               autocast), evaluator, progress, fold, params, precision, rank, world, log, started)


def optimizer_settings(args):
    """engine.build_optimizer's settings for this run (the method may give some parameters their own rate)."""
    return dict(lr=args.lr, weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio,
                lr_overrides=methods.get(args.method).lr_overrides(args), schedule=args.lr_schedule)


def batch_plan(args):
    """batching.BatchPlan of this run's training epochs."""
    return batching.BatchPlan(args.batch_size, args.seed, args.batch_order,
                              args.max_len if args.pad_to_max_len else None)


def steps_per_epoch(args, split, rank, world):
    """rows -> this rank's number of batches in an epoch over those training rows (None: all of them)."""
    lengths = np.array([len(t) for t in split.train.ids])
    return lambda rows: len(dist.shard(batching.length_bucketed_batches(
        lengths if rows is None else lengths[rows], args.batch_size, args.seed, 0), rank, world))


def resume(ckpt, model, hooks, detector, stages, epochs):
    """The checkpoint's Progress (a fresh one without), and the optimizer of the stage it resumes in."""
    progress = checkpoint.restore(ckpt, model, hooks, detector)
    at_stage_start = progress.next_epoch in stages.starts  # just before a fresh model: nothing of the old one
    stages.enter(min(progress.next_epoch, epochs - 1), fresh=at_stage_start)
    if not at_stage_start:
        checkpoint.restore_optimizer(ckpt, stages.opt, stages.sched)
    return progress


def train_epoch(r, epoch):
    """One epoch: the method's rows and labels -> optimizer steps -> evaluation passes -> the detector's
    refit and the hooks' end_epoch -> metrics.jsonl and a checkpoint."""
    args, started = r.args, time.time()
    if r.stages.enter(epoch, fresh=True):
        r.log(f"epoch {epoch + 1}: a fresh model starts (stage {r.stages.starts.index(r.stages.start) + 1})")
    if r.world > 1:  # each rank its own dropout / gate draws
        torch.manual_seed(dist.rank_seed(args.seed, epoch, r.rank))
    labels, keep = r.hooks.epoch_data(epoch, r.split.train.observed)  # default: every row, observed labels
    rows = None if keep is None else np.flatnonzero(keep)
    share = lambda batches: dist.shard(batches, r.rank, r.world)  # this rank's batches
    batches = batching.iterate_batches(r.split.train.ids, labels, batch_plan(args), epoch, rows=rows, share=share)
    shown = not args.no_progress and r.rank == 0 and sys.stderr.isatty()
    bar = (f"epoch {epoch + 1}/{args.epochs}", r.stages.steps_of(rows)) if shown else None
    stats = engine.train_epoch(r.model, r.step, r.stages, batches, r.evaluator.device, bar)
    passes, fit = evaluate_epoch(r)
    r.hooks.end_epoch(epoch, passes.train_logits, r.split.train.observed, fit)
    train_pass_s = stats.pop("train_pass_s")
    m = {"epoch": epoch + 1, **stats, **epoch_metrics(passes, r.split, r.ds.test.labels, r.hooks, fit),
         "lr": r.stages.sched.get_last_lr()[0], "train_pass_s": train_pass_s, "epoch_s": time.time() - started}
    r.progress.history.append(m)
    r.progress.sample_losses.append(fit.loss)
    r.progress.next_epoch = epoch + 1
    mem = "" if m["noisy_memorized"] is None else f", noisy memorised {m['noisy_memorized']:.3f}"
    fit_name = "train clean acc" if mem else "train acc (labels as given)"  # no injected noise: no truth to score
    r.log(f"epoch {epoch + 1}: train loss {m['train_loss']:.4f}, test acc {m['test_acc']:.4f}, "
          f"{fit_name} {m['train_clean_acc']:.4f}{mem}")
    if r.rank == 0:
        write_metrics(args.out, [m], "a")
        if args.keep == "selected" and selected_epoch(r.progress.history, r.hooks.stage_starts()) == epoch:
            save_weights(r)  # the best epoch on noisy validation so far: the model the run will keep
        r.progress.wall_s += time.time() - r.started
        r.started = time.time()
        checkpoint.save_training_state(args.out, vars(args), r.progress, r.model, r.stages, r.hooks, r.detector)


def evaluate_epoch(r, refit=True):
    """The evaluation passes on the model as it is now (folded where it folds) and the detector's fit
    to its training-set losses: refit (a finished epoch) or the current one (a resumed, finished run)."""
    eval_model = evaluation_model(r.model, r.hooks, r.fold)
    passes = run_passes(r.evaluator, eval_model, r.split)
    fit = (r.detector.update if refit else r.detector.current)(passes.train_logits, r.split.train.observed)
    r.last = (passes, fit)
    return passes, fit


def finish(r):
    """Rank 0 writes the PEFT weights, the Hugging Face export (--export_hf), the per-sample losses, label
    issues and noise matrices, and summary.json; returns the summary."""
    args = r.args
    passes, fit = r.last or evaluate_epoch(r, refit=False)  # resumed after the last epoch: the passes again
    dist.barrier()  # every rank has finished before rank 0 writes the results
    if r.rank != 0:
        return None
    kept = kept_epoch(r)
    if kept == len(r.progress.history) - 1:
        save_weights(r)  # --keep last, or no validation split: the model as it is now
    else:
        checkpoint.load_peft(r.model, args.out)  # the selected epoch's weights, saved when it ended
    if args.export_hf:
        export.export_hf(r.model, r.hooks, r.ds.class_names, args.model or default_model_dir(), args.export_hf)
        r.log(f"exported to {args.export_hf} (Hugging Face BertForSequenceClassification layout)")
    losses = np.stack(r.progress.sample_losses)
    np.savez_compressed(os.path.join(args.out, "per_sample.npz"), loss=losses, observed=r.split.train.observed,
                        true=r.split.train.true)
    final = outputs.FinalState(passes, fit, losses, args.loss_ema, held_out_logits(r))
    issues = outputs.write_run_outputs(args.out, r.ds, r.split, final, r.log)
    r.progress.wall_s += time.time() - r.started
    summary = {**summarise(r), **issues}
    summary["config"] = summary.pop("config")  # last, as a reader expects it
    checkpoint.write_json(os.path.join(args.out, "summary.json"), summary)
    print_done(args, summary)
    return summary


def save_weights(r):
    checkpoint.save_peft(r.model, r.args.out, extra={"class_names": r.ds.class_names})


def held_out_logits(r):
    """The kept model's logits of the validation rows and, for your own file, of its test rows: what
    label_issues.csv ranks beside the training rows (rank 0 alone, so no pass waits for other ranks)."""
    alone, model = replace(r.evaluator, rank=0, world=1), evaluation_model(r.model, r.hooks, r.fold)
    held = {"validation": alone.logits(model, r.split.val.ids)} if len(r.split.val.ids) else {}
    if data.is_user_file(r.args.dataset):
        held["test"] = alone.logits(model, r.split.test_ids)
    return held


def kept_epoch(r):
    """The index of the epoch whose weights the run keeps (--keep): the selected one, or the last."""
    selected = selected_epoch(r.progress.history, r.hooks.stage_starts())
    return len(r.progress.history) - 1 if r.args.keep == "last" or selected is None else selected


def print_done(args, summary):
    chosen = "" if summary["selected_epoch"] is None else \
        f"selected on noisy validation {summary['selected_test_acc']:.4f} (epoch {summary['selected_epoch']}), "
    kept = f"; kept: epoch {summary['kept_epoch']}'s weights" if summary.get("kept_epoch") else ""
    print(f"done: test acc {chosen}best {summary['best_test_acc']:.4f} (epoch {summary['best_epoch']}, an "
          f"oracle), last {summary['last_test_acc']:.4f}{kept}; results in {args.out}")


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


def selected_epoch(history, stage_starts):
    """The index of the first epoch with the best noisy-validation accuracy among the epochs of the last
    stage (a two-stage method's detecting stage is a means, not a candidate); None without validation."""
    val, first = [m["val_acc"] for m in history], max(stage_starts, default=0)
    return first + int(np.argmax(val[first:])) if None not in val and len(val) > first else None


def summarise(r):
    """summary.json: selected, best and last test accuracy, memorisation, sizes, cost, the method's keys."""
    history, report, device = r.progress.history, r.split.report, r.evaluator.device
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:  # ru_maxrss is in KiB on Linux
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    accs, last, val = [m["test_acc"] for m in history], history[-1], [m["val_acc"] for m in history]
    selected = selected_epoch(history, r.hooks.stage_starts())
    (trainable, total), train_s = r.params, sum(m["train_pass_s"] for m in history)
    return {
        "selected_test_acc": None if selected is None else accs[selected],
        "selected_epoch": None if selected is None else selected + 1,
        "selected_val_acc": None if selected is None else val[selected],
        "kept_epoch": kept_epoch(r) + 1, "kept_test_acc": accs[kept_epoch(r)],
        "best_test_acc": max(accs), "best_epoch": int(np.argmax(accs)) + 1, "last_test_acc": accs[-1],
        "noisy_memorized": last["noisy_memorized"], "train_clean_acc": last["train_clean_acc"],
        "realized_noise_rate": report["realized_rate"], "source_noise_rate": report.get("source_noise_rate"),
        "num_train": report["num_samples"], "num_test": len(r.split.test_ids),
        "num_classes": len(report["class_counts"]), "trainable_params": trainable, "total_params": total,
        "wall_s": r.progress.wall_s,
        "samples_per_s": len(history) * report["num_samples"] / train_s if train_s else None,
        "peak_mem_mb": peak_mb, "device": device.type, "precision": r.precision, "ranks": r.world,
        "det_auroc": last["det_auroc"], "det_auroc_loss": last["det_auroc_loss"],
        "test_nll": last["test_nll"], "test_ece": last["test_ece"],
        **{k: last[k] for k in r.hooks.summary_keys if k in last}, "config": vars(r.args),
    }


EXPECTED_ERRORS = (ModelLoadError, checkpoint.CheckpointError, data.DataError, DeviceError, dist.DistError,
                   export.ExportError, noise.NoiseError, peft.PeftError, SettingError, RunError)


def main(argv=None):
    args = None
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        args = parse_args(argv)
        if args.eval_only:
            return evaluate_saved(args, argv)
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
