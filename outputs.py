"""
What a finished run leaves its user, beside the weights and summary.json (train.py):

    label_issues.csv   every training, validation and (your own file's) test row, most suspect first
                       within each split, the detector's estimated share of each flagged (label_issues.py)
    noisy_labels.csv   the noise this run trained on, to hand on (`train.py --noisy_labels FILE`)
    noise_matrix.json  the realised transition counts (true x observed) beside the model's estimate
                       (estimated true x observed, label_issues.confident_joint)
    calibration.json   the clean test split's reliability bins after the last epoch (calibration.py)

and the figures it returns for summary.json: the label-issue ranking's AUROC, the detector flag's
precision and recall (when the true labels are known), test NLL and ECE. Pictures of the two
matrices and the reliability diagram: `python tools/report.py --run DIR`.
"""

import os
from dataclasses import dataclass, field

import numpy as np

import data
import label_issues
import noise
from calibration import reliability_bins
from checkpoint import write_json
from mixture import auroc, per_sample_loss


MATRIX_PRINTED_UP_TO = 8  # classes: the noise matrices are printed in the log up to this many (always saved)


def _matrix_text(counts, names, title):
    """A small count matrix as aligned text lines (rows: first index, columns: observed)."""
    width = max(6, *(len(n) for n in names))
    lines = [title, " " * width + "".join(f"{n[:width]:>{width + 1}}" for n in names)]
    lines += [f"{names[i][:width]:<{width}}" + "".join(f"{c:>{width + 1}}" for c in row)
              for i, row in enumerate(counts)]
    return lines


@dataclass
class FinalState:
    """What a run ends with: its last evaluation passes (evaluation.EpochPasses; train_logits may be
    out-of-sample logits of a method without epochs), the detector's last fit (mixture.DetectorFit),
    every epoch's per-sample losses (E, N), the EMA weight the detector smoothed them with, and the
    kept model's logits of the held-out rows label_issues.csv also ranks ({"validation": (N_val, K),
    "test": (N_test, K)}, test only for a user's own file)."""
    passes: object
    fit: object
    loss_history: np.ndarray
    loss_ema: float
    held_out: dict = field(default_factory=dict)


def held_out_rows(split_name, data_split, observed, logits):
    """label_issues.IssueRows of held-out rows, scored by the kept model's loss on their label."""
    loss = per_sample_loss(logits, observed)  # (N,), as the training rows' losses are computed
    return label_issues.IssueRows(split_name, data_split.rows, data_split.texts, observed, logits, loss)


def write_run_outputs(out, ds, split, final, log):
    """Write the files above into `out`; returns their summary figures. ds: the data.TextData the run
    loaded; split: its noisy_split.NoisySplit (the rows trained on, the noise as drawn on the whole
    training split, whether the true labels are known); final: a FinalState."""
    keep, K, class_names = split.in_train, len(ds.class_names), ds.class_names
    observed, true, has_truth, fit = split.train.observed, split.train.true, split.has_truth, final.fit
    train_logits, test_logits, test_labels = final.passes.train_logits, final.passes.test_logits, ds.test.labels
    scores = label_issues.suspicion(final.loss_history, label_issues.DEFAULT_SCORE, final.loss_ema)
    parts = [label_issues.IssueRows("train", ds.train.rows[keep], [t for t, k in zip(ds.train.texts, keep) if k],
                                    observed, train_logits, scores, fit.clean_prob)]
    if "validation" in final.held_out:
        parts.append(held_out_rows("validation", data.subset(ds.train, np.flatnonzero(split.in_val)), split.val.observed,
                                   final.held_out["validation"]))
    if "test" in final.held_out:
        parts.append(held_out_rows("test", ds.test, ds.test.labels, final.held_out["test"]))
    rate = label_issues.estimated_noise_rate(fit.clean_prob)
    flags = label_issues.write_label_issues(os.path.join(out, "label_issues.csv"), parts, class_names, rate)
    noise.write_noisy_labels(os.path.join(out, "noisy_labels.csv"), ds.train.rows, ds.train.labels,
                             split.observed_all, class_names)
    realised = noise.noise_report(true, observed, K)["transition_counts"] if has_truth else None
    estimated = label_issues.confident_joint(train_logits, observed, K).tolist()
    write_json(os.path.join(out, "noise_matrix.json"),
               {"class_names": class_names, "realised_true_x_observed": realised,
                "estimated_true_x_observed": estimated})
    write_json(os.path.join(out, "calibration.json"), reliability_bins(test_logits, test_labels))
    flagged = flags["train"]
    summary = {"issues_score": label_issues.DEFAULT_SCORE, "issues_estimated_rate": rate,
               "issues_flagged": float(flagged.mean())}
    if has_truth:
        summary.update(label_issues.flag_metrics(flagged, observed, true))
        summary["issues_auroc"] = auroc(scores, observed != true)
    held = "".join(f", {int(f.sum())} of {len(f)} {name}" for name, f in flags.items() if name != "train")
    log(f"label issues: {int(flagged.sum())} of {len(flagged)} training labels flagged as noisy{held} (the detector's "
        f"estimated noise rate {rate:.3f}), ranked by {label_issues.DEFAULT_SCORE} in {os.path.join(out, 'label_issues.csv')}"
        + (f" (ranking AUROC {summary['issues_auroc']:.3f}, flag precision "
           f"{summary['issues_precision'] or 0:.3f}, recall {summary['issues_recall'] or 0:.3f})"
           if has_truth and summary["issues_auroc"] is not None else ""))
    if K <= MATRIX_PRINTED_UP_TO:
        if realised is not None:
            for line in _matrix_text(realised, class_names, "noise: realised counts (true x observed)"):
                log(line)
        for line in _matrix_text(estimated, class_names, "noise: estimated counts (estimated true x observed)"):
            log(line)
    return summary

