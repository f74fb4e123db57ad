"""
The clean-probability detector: a two-component 1-D Gaussian mixture on per-sample
training losses, and the AUROC that scores it against the known truth.

Small-loss samples are more likely clean (Arpit et al. 2017): fit two Gaussians to the
losses and call w_i = P(low-mean component | loss_i) sample i's clean probability.

References:
1) Dempster, Laird, Rubin 1977, "Maximum Likelihood from Incomplete Data via the EM
   Algorithm" - the EM iterations below.
2) Arazo et al. 2019, "Unsupervised Label Noise Modeling and Loss Correction", ICML, and
   Li et al. 2020, "DivideMix", ICLR, Sec. 3.1 - the two-component loss mixture.
3) Kim, Kim, Lee 2024, "CleaR", ACL, Sec. 4.1 - w_i as the probability that routes sample i.

Users: CleaR and LoRAMoE's clean/noisy sample types (clear.py, loramoe.py), report.py's loss
histogram.

Usage:
    detector = LossDetector(ema=0.9)
    fit = detector.update(train_logits, observed)   # every epoch: fit.clean_prob (N,), fit.gmm
    detector_metrics(fit, observed, true)           # AUROC of w and of the loss, precision, recall
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

CLEAN_ABOVE = 0.5  # a sample looks clean when its P(clean) is above this; at or below it, it is flagged noisy


def looks_clean(clean_prob):
    """The detector's call for each sample (bool array or tensor): P(clean) > CLEAN_ABOVE. Every
    user of the call (label issues, LoRAMoE's types, filter and retrain, SelfMix) asks this."""
    return clean_prob > CLEAN_ABOVE


@dataclass
class GaussianMixture1D:
    means: np.ndarray      # (2,) component means, sorted ascending: index 0 is the low-loss one
    variances: np.ndarray  # (2,) component variances, floored
    weights: np.ndarray    # (2,) mixing proportions, sum to 1

    def log_joint(self, x):
        """log(pi_k N(x | mu_k, var_k)), shape (N, 2)."""
        x = np.asarray(x, dtype=np.float64)[:, None]
        return (np.log(self.weights) - 0.5 * np.log(2 * np.pi * self.variances)
                - 0.5 * (x - self.means) ** 2 / self.variances)

    def posterior_low(self, x):
        """P(low-mean component | x) for each x - CleaR's clean probability w."""
        lj = self.log_joint(x)
        log_norm = np.logaddexp(lj[:, 0], lj[:, 1])  # log-sum-exp: no underflow far in the tails
        return np.exp(lj[:, 0] - log_norm)


REG_COVAR = 1e-6  # added to every variance, on the raw loss scale: scikit-learn's default, which the official code uses


def two_means(x, iters=100):
    """1-D k-means with k = 2 (Lloyd), from the 10th/90th percentiles: (boolean mask of the low cluster)."""
    centres = np.percentile(x, [10, 90])
    for _ in range(iters):
        low = x <= centres.mean()
        if low.all() or not low.any():
            break
        new = np.array([x[low].mean(), x[~low].mean()])
        if np.array_equal(new, centres):
            break
        centres = new
    return x <= centres.mean()


def fit_gmm(x, reg_covar=REG_COVAR, iters=100, tol=1e-6):
    """EM for two 1-D Gaussians, regularised and started as scikit-learn's GaussianMixture is by
    default: reg_covar added to each variance, responsibilities first from a 2-means split."""
    x = np.asarray(x, dtype=np.float64)
    low = two_means(x)
    resp = np.stack([low, ~low], 1).astype(np.float64)  # (N, 2) hard start
    if not resp[:, 1].any():  # every value equal: two copies of one component
        resp = np.full((len(x), 2), 0.5)
    prev, gmm = -np.inf, None
    for _ in range(iters):
        nk = resp.sum(0) + 1e-12                                # M-step
        means = (resp * x[:, None]).sum(0) / nk
        variances = (resp * (x[:, None] - means) ** 2).sum(0) / nk + reg_covar
        weights = np.clip(nk / len(x), 1e-6, None)
        gmm = GaussianMixture1D(means, variances, weights / weights.sum())
        lj = gmm.log_joint(x)                                   # E-step
        log_norm = np.logaddexp(lj[:, 0], lj[:, 1])
        resp = np.exp(lj - log_norm[:, None])                   # (N, 2) responsibilities
        ll = log_norm.mean()
        if abs(ll - prev) < tol:
            break
        prev = ll
    order = np.argsort(gmm.means)  # the clean component is the one with the lower mean
    return GaussianMixture1D(gmm.means[order], gmm.variances[order], gmm.weights[order])


def per_sample_loss(logits, labels):
    """Cross-entropy of each row of logits (N, K) against its label (N,), float32 as in training: (N,)."""
    return F.cross_entropy(torch.as_tensor(logits).float(), torch.as_tensor(labels), reduction="none").numpy()


def clean_probability(loss):
    """CleaR's w (Sec. 4.1): fit the mixture to the per-sample losses (N,) and take
    P(low-loss component | loss_i), made non-increasing in the loss. A two-Gaussian posterior
    is not monotone when the clean component is the narrower one: far below its mean the wide
    component wins again, and the smallest losses would be called noisy. The envelope gives
    each sample the highest posterior of any sample with a loss at least as large, so ranking
    by w is ranking by the loss, up to ties. Returns (w (N,), the fitted mixture)."""
    loss = np.asarray(loss, dtype=np.float64)
    gmm = fit_gmm(loss)
    down = np.argsort(-loss, kind="stable")                     # largest loss first
    w = np.empty(len(loss))
    w[down] = np.maximum.accumulate(gmm.posterior_low(loss[down]))
    return w, gmm


@dataclass
class DetectorFit:
    """One epoch's detector output, per training sample."""
    loss: np.ndarray      # (N,) cross-entropy on the observed label, this epoch
    smoothed: np.ndarray  # (N,) its exponential moving average over epochs (= loss without smoothing)
    clean_prob: np.ndarray  # (N,) w, from the mixture fitted to `smoothed`
    gmm: GaussianMixture1D


class LossDetector:
    """The clean-sample detector of every run: each epoch's per-sample losses, smoothed as the
    official CleaR adapter solver does (new = (1 - ema) * loss + ema * previous, kept across
    epochs; ema 0 = no smoothing), then the mixture. CleaR gates with its w, LoRAMoE types
    samples with it, and every method's metrics report how well it separates the truly noisy."""

    def __init__(self, ema=0.9):
        if not 0 <= ema < 1:
            raise ValueError(f"--loss_ema must be in [0, 1), got {ema}")
        self.ema, self.smoothed = ema, None

    def update(self, train_logits, observed):
        return self.update_losses(per_sample_loss(train_logits, observed))

    def update_losses(self, loss):
        """One epoch's per-sample losses (N,) in: smooth, fit, return the DetectorFit (a saved run's
        per_sample.npz replays through this, tools/detector_fit.py)."""
        if self.smoothed is None or self.ema == 0:
            self.smoothed = loss.astype(np.float64)
        else:
            self.smoothed = (1 - self.ema) * loss + self.ema * self.smoothed
        w, gmm = clean_probability(self.smoothed)
        return DetectorFit(loss, self.smoothed.copy(), w, gmm)

    def current(self, train_logits, observed):
        """The fit of the smoothed losses as they stand, without a new update (this epoch's raw loss)."""
        w, gmm = clean_probability(self.smoothed)
        return DetectorFit(per_sample_loss(train_logits, observed), self.smoothed.copy(), w, gmm)

    def state_dict(self):
        return {"smoothed": self.smoothed}

    def load_state_dict(self, state):
        self.smoothed = state["smoothed"] if state["smoothed"] is None else np.asarray(state["smoothed"])


def detector_metrics(fit, observed, true):
    """How well the fit separates truly clean from truly noisy samples: AUROC of w and of the
    (smoothed) loss itself, the share called clean (looks_clean: w > 0.5), precision and recall of that call."""
    clean, called = np.asarray(observed) == np.asarray(true), looks_clean(fit.clean_prob)
    return {
        "det_auroc": auroc(fit.clean_prob, clean), "det_auroc_loss": auroc(-fit.smoothed, clean),
        "det_called_clean": float(called.mean()),
        "det_precision": float(clean[called].mean()) if called.any() else None,
        "det_recall": float(called[clean].mean()) if clean.any() else None,
        "det_means": fit.gmm.means.tolist(),
    }


def auroc(scores, positive):
    """Area under the ROC curve: P(score of a random positive > score of a random negative), ties half."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties, 1-based
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
