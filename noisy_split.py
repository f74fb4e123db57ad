"""
The data a run trains and selects on: the training split's labels corrupted by the noise model
(noise.py) or read from a noise file, a noisy validation share held out of it, the oracles'
changes (--oracle), and the token ids of every part. The true labels travel beside the
observed ones only to be scored against; no batch carries them (batching.Batch).

Usage:
    split = make_noisy_split(args, ds, encoder, tokenizer, device, log=print)
    split.train.ids, split.train.observed, split.val.observed, split.test_ids, split.report["realized_rate"]
"""

from dataclasses import dataclass

import numpy as np

import batching
import data
import noise
from evaluation import sentence_embeddings


@dataclass
class Part:
    """Token ids with their true and observed (possibly noisy) labels."""
    ids: list         # N token-id lists
    true: np.ndarray  # (N,) the labels before noise
    observed: np.ndarray  # (N,) the labels the run sees


@dataclass
class NoisySplit:
    """The training split as a run uses it."""
    train: Part               # the rows trained on (validation share and --oracle clean-subset's rows left out)
    val: Part                 # the noisy validation share (epoch selection); empty with --val_fraction 0
    test_ids: list            # the clean test split's token ids
    report: dict              # noise.noise_report of the training part, + source_noise_rate before --oracle
    observed_all: np.ndarray  # (N_split,) the observed labels of the whole training split, as drawn
    in_train: np.ndarray      # (N_split,) bool: which rows of the split are in `train`
    in_val: np.ndarray        # (N_split,) bool: which rows of the split are in `val`
    has_truth: bool           # the true labels are known (synthetic noise or a noise file): score against them


def make_noisy_split(args, ds, encoder, tokenizer, device, log):
    """Encode the texts, draw (or read) the noise, hold out the validation share, apply --oracle."""
    train_ids = batching.encode(tokenizer, ds.train.texts, args.max_len)
    test_ids = batching.encode(tokenizer, ds.test.texts, args.max_len)
    true, K = ds.train.labels, len(ds.class_names)
    if args.noisy_labels:  # a given noise draw (a run's noisy_labels.csv) instead of --noise
        observed = noise.read_noisy_labels(args.noisy_labels, true, ds.class_names)
        log(f"noise: observed labels read from {args.noisy_labels} (--noise and --noise_rate not used)")
    else:
        features = None
        if noise.NOISE_MODELS[args.noise].needs_features:  # before training: the pretrained encoder's view of each sample
            features = sentence_embeddings(encoder.to(device), train_ids, args.eval_batch_size, device)
        observed = noise.add_noise(true, args.noise, args.noise_rate, K, seed=args.seed, features=features)
        log("noise: none - training on the labels as given" if args.noise == "none" else
            f"noise: {args.noise} r={args.noise_rate:g} drawn on purpose over the labels as given (synthetic; "
            "--noise none trains on them as they are)")
    is_val = data.validation_split(observed, args.val_fraction, args.seed)
    source_rate = noise.noise_report(true[~is_val], observed[~is_val], K)["realized_rate"]
    observed, left_out = oracle_labels(args.oracle, observed, true, is_val, log)
    in_train = ~is_val & ~left_out
    part = lambda keep: Part([train_ids[i] for i in np.flatnonzero(keep)], true[keep], observed[keep])
    train, val = part(in_train), part(is_val)
    report = {**noise.noise_report(train.true, train.observed, K), "source_noise_rate": source_rate}
    how = f"from {args.noisy_labels}" if args.noisy_labels else f"{args.noise} r={args.noise_rate}"
    log(f"data: {ds.name}, {len(train.true)} train / {len(val.true)} noisy validation / {len(ds.test.labels)} "
        f"test, {K} classes; noise {how}: realised flip rate {report['realized_rate']:.3f}")
    for note in ds.notes:
        log(f"data: {note}")
    has_truth = args.noise != "none" or bool(args.noisy_labels)
    return NoisySplit(train, val, test_ids, report, observed, in_train, is_val, has_truth)


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
