"""
The clean-probability detector: a two-component 1-D Gaussian mixture on per-sample
training losses, and the AUROC that scores it against the known truth.

Small-loss samples are more likely clean (Arpit et al. 2017): fit two Gaussians to the
losses and call w_i = P(low-mean component | loss_i) sample i's clean probability.

References:
1) Dempster, Laird, Rubin 1977, "Maximum Likelihood from Incomplete Data via the EM
   Algorithm" - the EM iterations below.
2) Arazo et al. 2019, "Unsupervised Label Noise Modeling and Loss Correction", ICML, and
   Li et al. 2020, "DivideMix", ICLR, Sec. 3.1 - the loss mixture on min-max scaled losses.
3) Kim, Kim, Lee 2024, "CleaR", ACL, Sec. 4.1 - w_i as the probability that routes sample i.

Users: CleaR and LoRAMoE's clean/noisy sample types (routing.py), report.py's loss
histogram.

Usage:
    w, gmm = clean_probability(train_logits, observed)   # (N,) clean probabilities, the mixture
    auroc(w, observed == true)                           # how well w separates the truly clean
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


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


def fit_gmm(x, iters=100, tol=1e-6, var_floor=1e-4):
    """EM for two 1-D Gaussians. Deterministic init at the 10th/90th percentiles; the
    variance floor keeps a component from collapsing onto a single repeated value."""
    x = np.asarray(x, dtype=np.float64)
    spread = max(x.var(), var_floor)
    gmm = GaussianMixture1D(means=np.percentile(x, [10, 90]).astype(np.float64),
                            variances=np.full(2, spread), weights=np.full(2, 0.5))
    prev = -np.inf
    for _ in range(iters):
        lj = gmm.log_joint(x)                                   # E-step
        log_norm = np.logaddexp(lj[:, 0], lj[:, 1])
        resp = np.exp(lj - log_norm[:, None])                   # (N, 2) responsibilities
        nk = resp.sum(0) + 1e-12                                # M-step
        means = (resp * x[:, None]).sum(0) / nk
        variances = np.maximum((resp * (x[:, None] - means) ** 2).sum(0) / nk, var_floor)
        weights = np.clip(nk / len(x), 1e-6, None)
        gmm = GaussianMixture1D(means, variances, weights / weights.sum())
        ll = log_norm.mean()
        if abs(ll - prev) < tol:
            break
        prev = ll
    order = np.argsort(gmm.means)  # the clean component is the one with the lower mean
    return GaussianMixture1D(gmm.means[order], gmm.variances[order], gmm.weights[order])


def fit_loss_gmm(loss):
    """Min-max normalise per-sample losses (as DivideMix does, so the GMM sees the same
    scale every epoch) and fit the two Gaussians. Returns (normalised losses x, mixture)."""
    x = (loss - loss.min()) / max(loss.max() - loss.min(), 1e-12)
    return x, fit_gmm(x)


def per_sample_loss(logits, labels):
    """Cross-entropy of each row of logits (N, K) against its label (N,), float32 as in training: (N,)."""
    return F.cross_entropy(torch.as_tensor(logits).float(), torch.as_tensor(labels), reduction="none").numpy()


def clean_probability(train_logits, observed):
    """CleaR's recipe (Sec. 4.1): per-sample CE on the observed label, the loss GMM, and
    w_i = P(low-loss component | loss_i). Returns (w (N,), the fitted mixture)."""
    x, gmm = fit_loss_gmm(per_sample_loss(train_logits, observed))
    return gmm.posterior_low(x), gmm


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
