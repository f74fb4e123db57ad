"""
A finished run, again: rebuilt from its summary.json config and saved PEFT weights (load_run, for
predict.py, --eval_only and --export_hf), and evaluated as the run evaluated it (evaluate_saved,
train.py --eval_only), so the accuracy it prints is the one the run reported for the epoch it kept.

Usage:
    model, tokenizer, hooks, cfg, class_names, summary = load_run(run_dir)   # e.g. runs/mr-clear-lora-sym0.2-s0
    python train.py --eval_only --load runs/mr-clear-lora-sym0.2-s0 [--export_hf DIR]
"""

import argparse
import json
import os
from dataclasses import fields

import checkpoint
import batching
import data
import export
import methods
from build import build_hooks, build_model
from config import RunError, parse_args
from evaluation import Evaluator
from speedups import can_fold, evaluation_model
from hardware import pick_device
from model import default_model_dir


def load_run(run_dir, device="auto", overrides=None):
    """A finished run rebuilt from its summary.json config and saved PEFT weights:
    (model on its device in eval mode, tokenizer, hooks, config Namespace, class names, saved summary).
    overrides: {setting: value} for this use instead of the run's own (e.g. an evaluation mode)."""
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
    dev, _ = pick_device(cfg.device)
    model, tokenizer = build_model(cfg, len(class_names))
    checkpoint.load_peft(model, run_dir)
    hooks = build_hooks(cfg, model, saved.get("num_train", 1))
    return model.to(dev).eval(), tokenizer, hooks, cfg, class_names, saved


def given_method_settings(args, argv):
    """The methods' own settings typed on this command line (argv): --eval_only evaluates the saved run
    with them instead of its own (e.g. another evaluation mode of its gates)."""
    typed = {a[2:].split("=")[0] for a in argv if a.startswith("--")}
    own = {f.name for m in methods.METHODS.values() if m.settings for f in fields(m.settings)}
    return {name: getattr(args, name) for name in typed & own}


def evaluate_saved(args, argv):
    """--eval_only: rebuild a finished run (load_run) and evaluate it as the run did (the same batches,
    precision and folding), so the test accuracy is the one it reported for the kept epoch; with
    --export_hf, also export it."""
    model, tokenizer, hooks, cfg, names, saved = load_run(args.load, args.device, given_method_settings(args, argv))
    device, autocast = pick_device(cfg.device, cfg.precision)
    ds = data.load_data(cfg.dataset, test_file=cfg.test_file, max_train=cfg.max_train, seed=cfg.seed,
                        max_test=cfg.max_test)
    test_ids = batching.encode(tokenizer, ds.test.texts, cfg.max_len)
    evaluator = Evaluator(cfg.eval_batch_size, device, autocast, hooks, cfg.max_len if cfg.pad_to_max_len else None)
    eval_model = evaluation_model(model, hooks, not cfg.no_speedups and can_fold(model, hooks))
    acc = float((evaluator.logits(eval_model, test_ids).argmax(1) == ds.test.labels).mean())
    reported = saved.get("kept_test_acc", saved["last_test_acc"])  # runs before --keep kept the last epoch
    print(f"{args.load}: test acc {acc:.4f} (the run reported {reported:.4f} for the epoch it kept)")
    if args.export_hf:
        export.export_hf(model, hooks, names, cfg.model or default_model_dir(), args.export_hf)
        print(f"exported to {args.export_hf} (Hugging Face BertForSequenceClassification layout)")
    return {"test_acc": acc, "reported_test_acc": reported}
