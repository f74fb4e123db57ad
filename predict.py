"""
Classify new texts with a finished run (or a folder written by --export_hf).

    python predict.py runs/mr-clear-lora-sym0.2-s0 "a gorgeous, moving film" "two hours I will not get back"
    python predict.py RUN --file reviews.txt            # one text per line; or .csv/.tsv (a text column), .jsonl
    cat reviews.txt | python predict.py RUN -            # stdin, one text per line
    python predict.py RUN --file reviews.csv --out predictions.csv   # or .jsonl
    python predict.py RUN --export_hf exported/          # write the merged Hugging Face model and stop

The run's PEFT modules are folded into plain weights when its kind allows (export.fold_model,
export.what_folds), else the run's own model predicts with its
evaluation gates. Texts are batched by length; each gets the label name and every class's
probability. Bad input (no such run, an empty text, a csv without a text column, bytes that are
not UTF-8) is one line on stderr and exit code 2.
"""

import argparse
import csv
import json
import os
import sys
from dataclasses import dataclass

import numpy as np

import batching
import data
import export
import saved_run
import train
from hooks import Hooks
from calibration import softmax
from evaluation import Evaluator


class InputError(ValueError):
    """Texts that cannot be read: a missing file, no text column, an empty text, non-UTF-8 bytes."""


def read_texts(path):
    """The texts of a .txt (one per line), .csv/.tsv (column `text`) or .jsonl (key `text`) file, or '-' (stdin)."""
    if os.path.splitext(path)[1].lower() in data.USER_EXTENSIONS:  # the reader of the training files
        try:
            rows = data.read_columns(path, ("text",))
        except data.DataError as e:
            raise InputError(str(e)) from None
        return _checked([text for _, text in rows], path, [line for line, _ in rows])
    try:
        if path == "-":
            lines = sys.stdin.read().splitlines()
        else:
            with open(path, encoding="utf-8-sig") as f:
                lines = f.read().splitlines()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None
    return _checked([line for line in lines if line.strip()], path)


def _checked(texts, where, line_numbers=None):
    for n, t in zip(line_numbers or range(1, len(texts) + 1), texts):
        if not isinstance(t, str) or not t.strip():
            raise InputError(f"{where}: line {n}: empty text")
    if not texts:
        raise InputError(f"{where}: no texts to classify")
    return texts


@dataclass
class Predictor:
    """A model ready to classify: its tokenizer, the hooks whose evaluation gates it runs with, the
    class names of its head and the length its texts are cut to."""
    model: object
    tokenizer: object
    hooks: Hooks
    class_names: list
    max_len: int


def load_predictor(path, device):
    """The Predictor of a run folder or an --export_hf folder."""
    if os.path.isfile(os.path.join(path, "summary.json")):
        model, tokenizer, hooks, cfg, names, _ = saved_run.load_run(path, device)
        try:
            model, hooks = export.fold_model(model, hooks), Hooks()  # merged: no gates left
        except export.ExportError:
            pass  # adapters, prefix, LoRAMoE, sampled gates: the run's own model and evaluation gates
        return Predictor(model, tokenizer, hooks, names, cfg.max_len)
    if os.path.isfile(os.path.join(path, "config.json")):
        model, tokenizer, names = export.load_exported(path)
        return Predictor(model, tokenizer, Hooks(), names, model.encoder.config.max_position_embeddings)
    raise train.RunError(f"{path}: neither a finished run (summary.json) nor an --export_hf folder (config.json)")


def classify(predictor, texts, batch_size, device, precision="auto"):
    """(N, K) class probabilities of `texts`, batched by length (evaluation.Evaluator)."""
    dev, autocast = train.pick_device(device, precision)
    ids = batching.encode(predictor.tokenizer, texts, predictor.max_len)
    return softmax(Evaluator(batch_size, dev, autocast, predictor.hooks).logits(predictor.model.to(dev), ids))


def write_predictions(path, texts, probs, names):
    """--out: .csv (text, label, p_<class>...) or .jsonl ({"text", "label", "probs": {class: p}})."""
    labels = [names[k] for k in probs.argmax(1)]
    if path.lower().endswith(".jsonl"):
        with open(path, "w", encoding="utf-8") as f:
            for t, lab, p in zip(texts, labels, probs):
                f.write(json.dumps({"text": t, "label": lab, "probs": dict(zip(names, map(float, p)))}) + "\n")
    else:
        with open(path, "w", newline="", encoding="utf-8") as f:
            out = csv.writer(f)
            out.writerow(["text", "label", *[f"p_{n}" for n in names]])
            out.writerows([t, lab, *[f"{x:.4f}" for x in p]] for t, lab, p in zip(texts, labels, probs))


def print_table(texts, probs, names, width=60, max_classes=5):
    """label, its probability, the top other classes, then the (shortened) text."""
    for t, p in zip(texts, probs):
        order = np.argsort(-p)[:max_classes]
        cls = "  ".join(f"{names[k]} {p[k]:.3f}" for k in order)
        short = t if len(t) <= width else t[:width - 3] + "..."
        print(f"{names[order[0]]:<12} | {cls} | {short}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("run", help="a finished run's --out folder, or an --export_hf folder")
    p.add_argument("texts", nargs="*", help="texts to classify ('-': read stdin, one per line)")
    p.add_argument("--file", default=None, help=".txt (one per line), .csv/.tsv (a text column) or .jsonl")
    p.add_argument("--out", default=None, help="also write the predictions to this .csv or .jsonl")
    p.add_argument("--export_hf", default=None, help="write the run merged in the Hugging Face layout here, then "
                   f"stop ({export.what_folds()})")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    try:
        if args.export_hf:
            model, _, hooks, cfg, names, _ = saved_run.load_run(args.run, args.device)
            export.export_hf(model, hooks, names, cfg.model or train.default_model_dir(), args.export_hf)
            print(f"exported {args.run} to {args.export_hf}")
            return None
        if args.texts == ["-"] or (not args.texts and not args.file and not sys.stdin.isatty()):
            texts = read_texts("-")
        elif args.file:
            texts = read_texts(args.file)
        else:
            texts = _checked(args.texts, "the command line")
        predictor = load_predictor(args.run, args.device)
        probs = classify(predictor, texts, args.batch_size, args.device)
        print_table(texts, probs, predictor.class_names)
        if args.out:
            write_predictions(args.out, texts, probs, predictor.class_names)
            print(f"{len(texts)} predictions written to {args.out}")
        return probs
    except (InputError, *train.EXPECTED_ERRORS) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
