"""
Which training labels look wrong: a ranked list a person can review, and the noise it implies.

Every run ends with each training example's cross-entropy on its observed label for every
epoch (the losses the clean-sample detector sees, mixture.LossDetector). Samples with wrong
labels are learnt late, so they keep a high loss for longer (Arpit et al. 2017, Sec. 4; the
small-loss criterion of Co-teaching, Han et al. 2018, and DivideMix, Li et al. 2020, Sec. 3.1).
The scores below rank by that signal; higher = more suspect:

* ``last_loss``  - the last epoch's loss (a single snapshot, as DivideMix fits on)
* ``ema_loss``   - its exponential moving average over epochs (what the detector fits, ema = --loss_ema)
* ``mean_loss``  - the mean over all epochs (training dynamics, in the spirit of Swayamdipta et
                   al. 2020's mean confidence and Pleiss et al. 2020's area under the margin)
* ``mixture``    - 1 - P(clean) of the two-component mixture on the smoothed loss (CleaR, Sec. 4.2)

DEFAULT_SCORE is the one that ranked the truly noisy samples best in our runs (README,
"Label issues"). ``confident_joint`` estimates the noise's transition counts from the model's
probabilities in the spirit of cleanlab's confident joint (Northcutt et al. 2021, Sec. 3.1).

Usage:
    >>> history = np.array([[0.1, 2.0, 0.3], [0.05, 1.5, 0.2]])   # (E epochs, N samples) losses
    >>> suspicion(history, "mean_loss", ema=0.9).round(3).tolist()  # sample 1 looks mislabelled
    [0.075, 1.75, 0.25]
    >>> list(SCORES)
    ['last_loss', 'ema_loss', 'mean_loss', 'mixture']
"""

import csv

import numpy as np

from calibration import softmax
from mixture import auroc, clean_probability, looks_clean
from registry import Registry

DEFAULT_SCORE = "mean_loss"  # measured: README "Label issues"


def ema_of(loss_history, ema):
    """The detector's smoothing, replayed: s_1 = l_1, s_e = (1 - ema) l_e + ema s_{e-1}."""
    smoothed = np.asarray(loss_history[0], dtype=np.float64)
    for loss in loss_history[1:]:
        smoothed = (1 - ema) * np.asarray(loss, dtype=np.float64) + ema * smoothed
    return smoothed


SCORES = Registry("label-issue score")  # name -> f(loss history (E, N), ema) -> (N,) suspicion, higher = more suspect


@SCORES.register("last_loss")
def _last_loss(history, ema):
    """the last epoch's loss"""
    return np.asarray(history[-1], dtype=np.float64)


@SCORES.register("ema_loss")
def _ema_loss(history, ema):
    """the detector's smoothed loss"""
    return ema_of(history, ema)


@SCORES.register("mean_loss")
def _mean_loss(history, ema):
    """the mean loss over the epochs"""
    return np.mean(np.asarray(history, dtype=np.float64), axis=0)


@SCORES.register("mixture")
def _mixture(history, ema):
    """1 - the loss mixture's clean posterior"""
    return 1.0 - clean_probability(ema_of(history, ema))[0]


def suspicion(loss_history, score, ema):
    """(N,) suspicion scores of one named score from the per-epoch losses (E, N)."""
    if score not in SCORES:
        raise ValueError(f"unknown label-issue score {score!r}; choose one of {', '.join(SCORES)}")
    if len(loss_history) == 0:
        raise ValueError("no epochs were run, so no losses to rank by")
    return SCORES[score](loss_history, ema)


def score_auroc(loss_history, observed, true, ema):
    """{score name: AUROC of ranking the truly mislabelled samples first} - the comparison the
    README reports; None when every label is clean (or every label wrong)."""
    noisy = np.asarray(observed) != np.asarray(true)
    return {name: auroc(suspicion(loss_history, name, ema), noisy) for name in SCORES}


def flag_metrics(flagged, observed, true):
    """How well the detector's "noisy" flag finds the truly mislabelled samples."""
    flagged, noisy = np.asarray(flagged, dtype=bool), np.asarray(observed) != np.asarray(true)
    return {"issues_flagged": float(flagged.mean()),
            "issues_precision": float(noisy[flagged].mean()) if flagged.any() else None,
            "issues_recall": float(flagged[noisy].mean()) if noisy.any() else None}


def write_label_issues(path, rows, texts, observed, logits, clean_prob, scores, class_names, score_name):
    """label_issues.csv, most suspect first: one line per training example with its row in the data
    (`rows`), text, observed and predicted label, the model's probability of the observed label,
    P(clean) from the detector, the ranking score and whether the detector calls it noisy (not mixture.looks_clean)."""
    probs = softmax(logits)                          # (N, K)
    order = np.argsort(-np.asarray(scores), kind="stable")
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["rank", "row", "text", "observed_label", "predicted_label", "p_observed", "p_clean",
                      score_name, "flagged_noisy"])
        for rank, i in enumerate(order, 1):
            out.writerow([rank, int(rows[i]), texts[i], class_names[observed[i]], class_names[probs[i].argmax()],
                          f"{probs[i, observed[i]]:.4f}", f"{clean_prob[i]:.4f}", f"{scores[i]:.6g}",
                          int(not looks_clean(clean_prob[i]))])


def confident_joint(logits, observed, num_classes):
    """(K, K) counts C[j, i]: samples observed with label i whose true label is estimated as j.
    A sample counts for class j when p_j reaches class j's threshold t_j (the mean p_j of the samples
    observed as j); among several such classes the most probable wins; none: not counted. The
    model's own training-set predictions are used (cleanlab uses held-out ones), so a model that
    memorised its noise pulls the estimate towards the identity."""
    probs, observed = softmax(logits), np.asarray(observed)
    thresholds = np.array([probs[observed == j, j].mean() if (observed == j).any() else np.inf
                           for j in range(num_classes)])
    above = probs >= thresholds - 1e-12                          # (N, K)
    guess = np.where(above, probs, -1.0).argmax(axis=1)          # the most probable class over threshold
    joint = np.zeros((num_classes, num_classes), dtype=np.int64)
    keep = above.any(axis=1)
    np.add.at(joint, (guess[keep], observed[keep]), 1)
    return joint

