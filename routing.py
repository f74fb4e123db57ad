"""
Routing ideas for learning with noisy labels. This file holds CleaR, which routes each
*sample* through the PEFT modules only as often as it looks clean.

References:
1) Kim, Kim, Lee 2024, "CleaR: Towards Robust and Generalized Parameter-Efficient
   Fine-Tuning for Noisy Label Learning", ACL. Sec. 4.1 (clean probability from a
   two-component Gaussian mixture on per-sample losses), Sec. 4.2 (clean routing: the
   PEFT module of layer l is applied to sample i with probability r * w_i), Sec. 4.3
   (consistency regularisation against the previous epoch's predictions).
2) Arazo et al. 2019, "Unsupervised Label Noise Modeling and Loss Correction", ICML, and
   Li et al. 2020, "DivideMix", ICLR, Sec. 3.1 - the loss-GMM that separates clean from
   noisy samples (small-loss samples are more likely clean).

Every training method plugs into train.py through the same small interface (`Routing`):
    gates(batch)                   -> (B, L) per-sample, per-layer PEFT gates, or None
    aux_loss(logits, batch)        -> dict of extra losses, added to the cross-entropy
    eval_gates(batch_size, device, generator) -> gates for evaluation passes, or None
    after_epoch(logits, obs, true) -> refit per-sample state from the training-set pass; metrics

Usage:
    router = ClearRouting(num_train, num_layers, peft_kind="lora")
    logits = model(batch.input_ids, batch.attention_mask, gates=router.gates(batch))
    loss = F.cross_entropy(logits, batch.label) + sum(router.aux_loss(logits, batch).values())
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


class Routing:
    """No routing: plain training (full fine-tuning or a plain PEFT method)."""

    def gates(self, batch):
        return None

    def aux_loss(self, logits, batch):
        return {}

    def eval_gates(self, batch_size, device, generator):
        return None

    def after_epoch(self, epoch, train_logits, observed, true):
        return {}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


# ----------------------------------------------------------------------------
# A two-component 1-D Gaussian mixture, fitted by EM (Dempster et al. 1977)


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


# ----------------------------------------------------------------------------
# CleaR


BASE_RATE = {"adapter": 0.7, "lora": 0.85, "prefix": 0.85, "bitfit": 0.9}  # the official code's values
CLEAR_EVAL_MODES = ("sample", "all", "expected")


@dataclass
class ClearConfig:
    base_rate: float            # r: gate probability for a sample with clean probability 1
    warmup_epochs: int = 3      # epochs with gates ~ Bernoulli(r) before the GMM takes over
    consistency_weight: float = 1.0  # weight of the KL term to the stored teacher predictions
    consistency_temp: float = 1.0    # temperature T of both distributions in that term
    eval_mode: str = "all"      # gates at evaluation: sample ~ Bernoulli(r), all = 1, expected = r


class ClearRouting(Routing):
    """Per-sample state of CleaR: clean probabilities w (from a loss GMM), the teacher
    logits of the last training-set pass, and the Bernoulli(r * w_i) gate draws.

    The training-set pass is the one train.py makes every epoch to measure memorisation
    (eval mode, no dropout, gated as at evaluation), so CleaR's loss pass costs nothing
    extra. Unlike the official code, the model goes back to train mode after that pass,
    and every PEFT kind is gated per sample and per layer."""

    def __init__(self, num_train, num_layers, cfg):
        if not 0 < cfg.base_rate <= 1:
            raise ValueError(f"CleaR base rate must be in (0, 1], got {cfg.base_rate}")
        if cfg.eval_mode not in CLEAR_EVAL_MODES:
            raise ValueError(f"--clear_eval must be one of {CLEAR_EVAL_MODES}, got {cfg.eval_mode!r}")
        self.cfg, self.num_layers = cfg, num_layers
        self.clean_prob = torch.ones(num_train)  # w_i; 1 during warm-up, so gates ~ Bernoulli(r)
        self.teacher = None                      # (N, K) logits of the last training-set pass

    def gate_prob(self, index):
        """(B,) probability r * w_i that sample i's PEFT modules are on in any one layer."""
        return self.cfg.base_rate * self.clean_prob[index.cpu()]

    def gates(self, batch):
        index = batch.index
        p = self.gate_prob(index)[:, None].expand(-1, self.num_layers)  # (B, L)
        return torch.bernoulli(p).to(index.device)  # a fresh draw per sample, per layer, per step

    def eval_gates(self, batch_size, device, generator):
        """Gates for an evaluation pass; `generator` is seeded per pass, so evaluation is repeatable."""
        r, L = self.cfg.base_rate, self.num_layers
        if self.cfg.eval_mode == "all":
            return None
        if self.cfg.eval_mode == "expected":
            return torch.full((batch_size, L), r, device=device)
        return torch.bernoulli(torch.full((batch_size, L), r), generator=generator).to(device)

    def aux_loss(self, logits, batch):
        """KL(softmax(t/T) || softmax(z/T)) against the stored teacher (Sec. 4.3); zero before one exists."""
        if self.teacher is None or self.cfg.consistency_weight == 0:
            return {}
        T = self.cfg.consistency_temp
        teacher = F.log_softmax(self.teacher[batch.index.cpu()].to(logits.device) / T, dim=-1)
        student = F.log_softmax(logits.float() / T, dim=-1)
        kl = F.kl_div(student, teacher, log_target=True, reduction="batchmean")
        return {"consistency": self.cfg.consistency_weight * kl}

    def after_epoch(self, epoch, train_logits, observed, true):
        """Fit the loss GMM on the training-set pass; from the end of warm-up on, use it."""
        logits = torch.as_tensor(train_logits).float()
        loss = F.cross_entropy(logits, torch.as_tensor(observed), reduction="none").numpy()
        # min-max normalise first, as DivideMix does: the GMM then sees the same scale every epoch
        x = (loss - loss.min()) / max(loss.max() - loss.min(), 1e-12)
        gmm = fit_gmm(x)
        w = gmm.posterior_low(x)
        if epoch + 1 >= self.cfg.warmup_epochs:  # epochs count from 0: warm-up covers 0 .. W-1
            self.clean_prob = torch.as_tensor(w, dtype=torch.float32)
            self.teacher = logits
        clean = observed == true
        pred_clean = w > 0.5
        gate = self.cfg.base_rate * self.clean_prob.numpy()
        return {
            "gmm_auroc": auroc(w, clean),
            "gmm_precision": float(clean[pred_clean].mean()) if pred_clean.any() else None,
            "gmm_recall": float(pred_clean[clean].mean()) if clean.any() else None,
            "gmm_means": gmm.means.tolist(),
            "gate_rate_clean": float(gate[clean].mean()) if clean.any() else None,
            "gate_rate_noisy": float(gate[~clean].mean()) if (~clean).any() else None,
        }

    def state_dict(self):
        return {"clean_prob": self.clean_prob, "teacher": self.teacher}

    def load_state_dict(self, state):
        self.clean_prob, self.teacher = state["clean_prob"], state["teacher"]
