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
"Label issues"). Validation and test rows have no training history: the kept model's loss on
their label is their score (held out, as cleanlab scores out-of-sample probabilities). Each
split flags its round(r N) most suspect rows, r the detector's estimate of the noise rate
(estimated_noise_rate), so the flag count follows the noise the detector sees. ``confident_joint`` estimates the noise's transition counts from the model's
probabilities in the spirit of cleanlab's confident joint (Northcutt et al. 2021, Sec. 3.1).

Usage:
    >>> history = np.array([[0.1, 2.0, 0.3], [0.05, 1.5, 0.2]])   # (E epochs, N samples) losses
    >>> suspicion(history, "mean_loss", ema=0.9).round(3).tolist()  # sample 1 looks mislabelled
    [0.075, 1.75, 0.25]
    >>> list(SCORES)
    ['last_loss', 'ema_loss', 'mean_loss', 'mixture']
"""

import csv
from dataclasses import dataclass

import numpy as np

from calibration import softmax
from mixture import auroc, clean_probability
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
    """How well the "noisy" flag finds the truly mislabelled samples."""
    flagged, noisy = np.asarray(flagged, dtype=bool), np.asarray(observed) != np.asarray(true)
    return {"issues_flagged": float(flagged.mean()),
            "issues_precision": float(noisy[flagged].mean()) if flagged.any() else None,
            "issues_recall": float(flagged[noisy].mean()) if noisy.any() else None}


def estimated_noise_rate(clean_prob):
    """The detector's own estimate of the share of wrong labels: the mean P(noisy) of the training rows
    (the noisy component's weight of the loss mixture at its fit)."""
    return float(np.mean(1.0 - np.asarray(clean_prob, dtype=np.float64)))


def flag_most_suspect(scores, rate):
    """(N,) bool: the round(rate * N) highest scores (ties: the earlier row), so the number flagged
    follows the estimated noise rate rather than a threshold on a probability."""
    scores = np.asarray(scores, dtype=np.float64)
    flagged = np.zeros(len(scores), dtype=bool)
    flagged[np.argsort(-scores, kind="stable")[:int(round(rate * len(scores)))]] = True
    return flagged


@dataclass
class IssueRows:
    """One split's rows of label_issues.csv."""
    split: str              # "train", "validation" or "test"
    rows: np.ndarray        # (N,) each example's line in the user's file (or position in the packaged split)
    texts: list             # N raw texts
    observed: np.ndarray    # (N,) the labels as the run saw them
    logits: np.ndarray      # (N, K) the model's logits
    scores: np.ndarray      # (N,) suspicion, higher = more suspect
    clean_prob: np.ndarray | None = None  # (N,) the detector's P(clean); training rows only


def write_label_issues(path, parts, class_names, rate):
    """label_issues.csv: every row of `parts` (IssueRows), split by split, each most suspect first, with
    its split, rank, row in the data, text, observed and predicted label, the model's probability of the
    observed label, P(clean) (training rows), the score and whether it is flagged - the round(rate * N)
    most suspect of each split. Returns {split: (N,) flagged}."""
    flags = {}
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["split", "rank", "row", "text", "observed_label", "predicted_label", "p_observed", "p_clean",
                      "suspicion", "flagged_noisy"])
        for part in parts:
            probs, flags[part.split] = softmax(part.logits), flag_most_suspect(part.scores, rate)  # (N, K), (N,)
            for rank, i in enumerate(np.argsort(-np.asarray(part.scores), kind="stable"), 1):
                p_clean = "" if part.clean_prob is None else f"{part.clean_prob[i]:.4f}"
                out.writerow([part.split, rank, int(part.rows[i]), part.texts[i], class_names[part.observed[i]],
                              class_names[probs[i].argmax()], f"{probs[i, part.observed[i]]:.4f}", p_clean,
                              f"{part.scores[i]:.6g}", int(flags[part.split][i])])
    return flags


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

