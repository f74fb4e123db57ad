"""
The practitioner's baseline: no fine-tuning at all - a logistic regression on frozen sentence
embeddings, cleaned by confident learning and refitted.

What a practitioner with noisy labels and a pretrained encoder tries first (cleanlab's
tutorial recipe), written here without scikit-learn or cleanlab:
1. Features: the frozen encoder's mean-pooled last hidden states (the features
   instance-dependent noise is drawn from too), standardised with the training rows' mean and
   standard deviation.
2. A multinomial logistic regression trained to convergence with L-BFGS, minimising
   sum_i CE_i + ||W||^2 / (2C) (scikit-learn's objective, no penalty on the intercept); C chosen
   from --cl_c_grid by accuracy on the noisy validation split.
3. Out-of-sample probabilities of every training row by K-fold cross-fitting (K = --cl_folds,
   folds stratified by observed label).
4. Confident learning (Northcutt, Jiang, Chuang 2021, "Confident Learning: Estimating
   Uncertainty in Dataset Labels", JAIR, Sec. 3.1-3.2): per-class thresholds t_j = the mean
   out-of-sample p_j of the rows observed as j; the confident joint (label_issues.confident_joint)
   calibrated to the observed class counts; pruning by noise rate (Sec. 3.2): for each observed
   class i and other class j, the n * Q[j, i] rows
   observed as i with the largest margin p_j - p_i are flagged; rows whose predicted class is
   their label are never flagged (as cleanlab's find_label_issues).
5. The same regression refitted on the rows that are not flagged; its test accuracy is the
   row's figure (one model, so selected = best = last). The out-of-sample self-confidence
   p_observed is the label-issue score (det_auroc): label_issues.csv ranks by the out-of-sample
   loss -log p_observed (its column keeps the name mean_loss, the mean over one pass) and marks the
   rows confident learning flagged.
Cross-checked once against scikit-learn + cleanlab in a scratch environment (RESULTS.md).

Usage:
    python train.py --method practitioner --dataset 20ng --max_train 1000 --noise sym --noise_rate 0.4
"""

import json
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

import data
import methods
import outputs
from calibration import calibration_metrics, softmax
from checkpoint import prepare_out_dir, write_json
from evaluation import EpochPasses, memorisation, sentence_embeddings
from label_issues import confident_joint
from mixture import DetectorFit, auroc
from model import load_pretrained
from noisy_split import make_noisy_split
from settings import SettingError, setting


@dataclass
class PractitionerConfig:
    """The practitioner's baseline (methods/practitioner.py, confident learning on frozen embeddings)"""
    cl_folds: int = setting(5, "K of the K-fold cross-fitting that gives out-of-sample probabilities")
    cl_c_grid: str = setting("0.001,0.003,0.01,0.03,0.1,0.3,1,3,10,100",
                             "the inverse L2 strengths C to choose from on noisy validation")
    cl_max_iter: int = setting(1000, "L-BFGS iterations at most (it stops earlier at convergence)")

    def __post_init__(self):
        if self.cl_folds < 2:
            raise SettingError(f"--cl_folds must be >= 2, got {self.cl_folds}")
        try:
            grid = [float(c) for c in self.cl_c_grid.split(",")]
        except ValueError:
            grid = []
        if not grid or min(grid) <= 0:
            raise SettingError(f"--cl_c_grid must be a comma list of positive numbers, got {self.cl_c_grid!r}")


def fit_logreg(X, y, num_classes, C, max_iter=1000):
    """Multinomial logistic regression: (W (D, K), b (K,)) minimising sum CE + ||W||^2 / (2C), fp64 L-BFGS."""
    X, y = torch.as_tensor(X, dtype=torch.float64), torch.as_tensor(y, dtype=torch.long)
    W = torch.zeros(X.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, tolerance_grad=1e-7, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (torch.nn.functional.cross_entropy(X @ W + b, y, reduction="sum") + (W * W).sum() / (2 * C)) / len(y)
        loss.backward()
        return loss
    opt.step(closure)
    return W.detach().numpy(), b.detach().numpy()


def logreg_logits(params, X):
    W, b = params
    return (np.asarray(X, dtype=np.float64) @ W + b).astype(np.float32)


def stratified_folds(labels, k, seed):
    """(N,) fold number of every row: each observed class dealt round-robin over k folds, in random order."""
    rng, fold = np.random.default_rng([seed, 5]), np.zeros(len(labels), dtype=int)
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        fold[rows] = np.arange(len(rows)) % k
    return fold


def cross_fit(X, y, num_classes, C, k, seed, max_iter):
    """(N, K) out-of-sample logits: each fold's rows scored by the model fitted on the other folds."""
    fold, out = stratified_folds(y, k, seed), np.zeros((len(y), num_classes), dtype=np.float32)
    for f in range(k):
        out[fold == f] = logreg_logits(fit_logreg(X[fold != f], y[fold != f], num_classes, C, max_iter), X[fold == f])
    return out


def find_label_issues(probs, observed, num_classes):
    """Confident learning's prune-by-noise-rate flags (N,) bool from out-of-sample probabilities (N, K)."""
    observed = np.asarray(observed)
    joint = confident_joint(np.log(np.clip(probs, 1e-12, None)), observed, num_classes).astype(np.float64)  # [j, i]
    counts = np.bincount(observed, minlength=num_classes)
    col = joint.sum(0)  # per observed class i: rows counted anywhere
    calibrated = np.where(col > 0, joint / np.maximum(col, 1) * counts, 0.0)  # columns sum to the class counts
    flagged = np.zeros(len(observed), dtype=bool)
    for i in range(num_classes):
        rows = np.flatnonzero(observed == i)
        budget = max(0, len(rows) - 1)  # keep at least one row of every class
        for j in range(num_classes):
            n = min(int(round(calibrated[j, i])), budget) if j != i else 0
            if n > 0:
                margin = probs[rows, j] - probs[rows, i]
                flagged[rows[np.argsort(-margin, kind="stable")[:n]]] = True
    flagged[probs.argmax(1) == observed] = False
    return flagged


def choose_c(X, y, X_val, y_val, num_classes, grid, max_iter):
    """(C with the best noisy-validation accuracy - the first such in the grid, {C: accuracy})."""
    accs = {C: float((logreg_logits(fit_logreg(X, y, num_classes, C, max_iter), X_val).argmax(1) == y_val).mean())
            for C in grid}
    return max(accs, key=accs.get), accs


@dataclass
class Features:
    """Standardised frozen-encoder embeddings of a run's parts (N, C); val is None without a validation split."""
    train: np.ndarray
    val: np.ndarray | None
    test: np.ndarray


def embed_parts(args, split, encoder, device):
    """The frozen encoder's mean-pooled embeddings of the parts, standardised with the training rows'
    mean and standard deviation (step 1)."""
    embed = lambda ids: sentence_embeddings(encoder.to(device), ids, args.eval_batch_size, device)  # noqa: E731
    X = embed(split.train.ids)
    mean, std = X.mean(0), X.std(0) + 1e-6
    scale = lambda Z: (Z - mean) / std  # noqa: E731
    return Features(scale(X), scale(embed(split.val.ids)) if len(split.val.ids) else None, scale(embed(split.test_ids)))


def pick_c(feats, split, K, cfg):
    """(C, {C: noisy validation accuracy}) (step 2); without a validation split the middle of the grid."""
    grid = [float(c) for c in cfg.cl_c_grid.split(",")]
    if feats.val is None:
        print(f"practitioner: no validation split, C = {grid[len(grid) // 2]:g} (the middle of --cl_c_grid)")
        return grid[len(grid) // 2], {}
    C, val_accs = choose_c(feats.train, split.train.observed, feats.val, split.val.observed, K, grid, cfg.cl_max_iter)
    print(f"practitioner: C = {C:g} chosen on noisy validation ({', '.join(f'{c:g}: {a:.3f}' for c, a in val_accs.items())})")
    return C, val_accs


def baseline_metrics(feats, split, ds, C, cfg, seed):
    """Steps 3-5 -> (the one epoch's metrics, out-of-sample logits (N, K) and losses (N,), flags (N,) bool,
    the refit's test and validation logits)."""
    observed, true, K = split.train.observed, split.train.true, len(ds.class_names)
    oos = cross_fit(feats.train, observed, K, C, cfg.cl_folds, seed, cfg.cl_max_iter)  # (N, K) logits
    flagged = find_label_issues(softmax(oos), observed, K)
    plain = fit_logreg(feats.train, observed, K, C, cfg.cl_max_iter)
    params = fit_logreg(feats.train[~flagged], observed[~flagged], K, C, cfg.cl_max_iter)
    test_logits, train_logits = logreg_logits(params, feats.test), logreg_logits(params, feats.train)
    val_pred = None if feats.val is None else logreg_logits(params, feats.val).argmax(1)
    oos_loss = -np.log(np.clip(softmax(oos)[np.arange(len(observed)), observed], 1e-12, None))
    clean, test_labels = observed == true, ds.test.labels
    m = {"epoch": 1, "test_acc": float((test_logits.argmax(1) == test_labels).mean()),
         **calibration_metrics(test_logits, test_labels),
         "val_acc": None if val_pred is None else float((val_pred == split.val.observed).mean()),
         "val_true_acc": None if val_pred is None else float((val_pred == split.val.true).mean()),
         **memorisation(train_logits.argmax(1), observed, true),
         "det_auroc": auroc(-oos_loss, clean), "det_auroc_loss": auroc(-oos_loss, clean),
         "cl_flagged": float(flagged.mean()),
         "cl_flag_precision": float((~clean)[flagged].mean()) if flagged.any() else None,
         "cl_flag_recall": float(flagged[~clean].mean()) if (~clean).any() else None,
         "cl_c": C, "cl_plain_test_acc": float((logreg_logits(plain, feats.test).argmax(1) == test_labels).mean())}
    return m, oos, oos_loss, flagged, test_logits, None if feats.val is None else logreg_logits(params, feats.val)


def run(args):
    """The whole baseline as one train.py run: the same data, noise and validation split as the other methods."""
    import train  # the CLI's data preparation, shared
    t0 = time.time()
    if args.export_hf:
        raise train.RunError("--method practitioner fine-tunes no encoder, so there is nothing to --export_hf")
    if args.resume:
        raise train.RunError("--method practitioner runs in seconds and keeps no checkpoint: start over with "
                             "--overwrite")
    cfg = methods.get("practitioner").config(args)
    device, _ = train.pick_device(args.device, "fp32")
    ds = data.load_data(args.dataset, test_file=args.test_file, max_train=args.max_train, seed=args.seed,
                        max_test=args.max_test)
    encoder, tokenizer = load_pretrained(args.model)
    prepare_out_dir(args.out, False, args.overwrite, vars(args))
    split = make_noisy_split(args, ds, encoder, tokenizer, device, print)
    feats = embed_parts(args, split, encoder, device)
    C, val_accs = pick_c(feats, split, len(ds.class_names), cfg)
    m, oos, oos_loss, flagged, test_logits, val_logits = baseline_metrics(feats, split, ds, C, cfg, args.seed)
    m.update(epoch_s=time.time() - t0, train_pass_s=time.time() - t0)
    with open(os.path.join(args.out, "metrics.jsonl"), "w") as f:
        f.write(json.dumps(m) + "\n")
    fit = DetectorFit(oos_loss, oos_loss, np.where(flagged, 0.0, 1.0), None)  # the CL flag has no probability
    held = {} if val_logits is None else {"validation": val_logits}
    if data.is_user_file(args.dataset):
        held["test"] = test_logits
    final = outputs.FinalState(EpochPasses(test_logits, oos), fit, oos_loss[None], 0.0, held)  # out-of-sample logits
    issues = outputs.write_run_outputs(args.out, ds, split, final, print)
    summary = summarise(m, split, feats, val_accs, device, t0, {**issues, "config": vars(args)})
    write_json(os.path.join(args.out, "summary.json"), summary)
    train.print_done(args, summary)
    return summary


def summarise(m, split, feats, val_accs, device, t0, extra):
    """summary.json of the baseline: one model, so selected = best = last (selected only with validation)."""
    report, params = split.report, (feats.train.shape[1] + 1) * len(split.report["class_counts"])
    has_val, acc = m["val_acc"] is not None, m["test_acc"]
    return {"selected_test_acc": acc if has_val else None, "selected_epoch": 1 if has_val else None,
            "selected_val_acc": m["val_acc"], "best_test_acc": acc, "best_epoch": 1, "last_test_acc": acc,
            "noisy_memorized": m["noisy_memorized"], "train_clean_acc": m["train_clean_acc"],
            "realized_noise_rate": report["realized_rate"], "source_noise_rate": report["source_noise_rate"],
            "num_train": report["num_samples"], "num_test": len(split.test_ids), "num_classes": len(report["class_counts"]),
            "trainable_params": params, "total_params": params, "wall_s": time.time() - t0, "samples_per_s": None,
            "peak_mem_mb": None, "device": device.type, "precision": "fp32", "ranks": 1,
            **{k: m[k] for k in ("det_auroc", "det_auroc_loss", "test_nll", "test_ece", "cl_c")}, "cl_val_accs": val_accs,
            **{k: m[k] for k in ("cl_flagged", "cl_flag_precision", "cl_flag_recall", "cl_plain_test_acc")}, **extra}


@methods.register
class Practitioner(methods.Method):
    name, summary = "practitioner", "baseline: logistic regression on frozen embeddings, confident learning, refit"
    settings = PractitionerConfig
    peft = "probe"  # what it trains is a linear head on frozen features (its own, by L-BFGS)
    reference = True
    run = staticmethod(run)
