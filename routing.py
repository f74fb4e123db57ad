"""
Three routing ideas for learning with noisy labels:
- CleaR routes *samples* to PEFT modules: each sample passes through them only as often
  as it looks clean;
- LoRAMoE routes *tokens* to LoRA experts, with a balancing constraint that can make two
  expert groups serve two kinds of samples (here: suspected clean vs suspected noisy);
- Match-Tuning routes *instances* to each other: each representation is mixed with the
  batch's before the classifier.

References:
1) Kim, Kim, Lee 2024, "CleaR: Towards Robust and Generalized Parameter-Efficient
   Fine-Tuning for Noisy Label Learning", ACL. Sec. 4.1 (clean probability from a
   two-component Gaussian mixture on per-sample losses), Sec. 4.2 (clean routing: the
   PEFT module of layer l is applied to sample i with probability r * w_i), Sec. 4.3
   (consistency regularisation against the previous epoch's predictions).
2) Arazo et al. 2019, "Unsupervised Label Noise Modeling and Loss Correction", ICML, and
   Li et al. 2020, "DivideMix", ICLR, Sec. 3.1 - the loss-GMM that separates clean from
   noisy samples (small-loss samples are more likely clean).
3) Dou et al. 2024, "LoRAMoE: Alleviating World Knowledge Forgetting in Large Language
   Models via MoE-Style Plugin", ACL. Sec. 3.1 (LoRA experts + router in the FFN),
   Sec. 3.2 (localized balancing constraint).
4) Tong et al. 2022, "Robust Fine-tuning via Perturbation and Interpolation from
   In-batch Instances" (Match-Tuning), IJCAI, Sec. 3.

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

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import peft
from model import Dropout


class RoutingError(ValueError):
    """An impossible routing setting (base rate, temperature, expert count, ...)."""


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


def fit_loss_gmm(loss):
    """Min-max normalise per-sample losses (as DivideMix does, so the GMM sees the same
    scale every epoch) and fit the two Gaussians. Returns (normalised losses x, mixture)."""
    x = (loss - loss.min()) / max(loss.max() - loss.min(), 1e-12)
    return x, fit_gmm(x)


def clean_probability(train_logits, observed):
    """CleaR's recipe (Sec. 4.1): per-sample CE on the observed label, the loss GMM, and
    w_i = P(low-loss component | loss_i). Returns (w (N,), the fitted mixture)."""
    loss = F.cross_entropy(torch.as_tensor(train_logits).float(), torch.as_tensor(observed),
                           reduction="none").numpy()
    x, gmm = fit_loss_gmm(loss)
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
    eval_mode: str = "expected"  # gates at evaluation: sample ~ Bernoulli(r), all = 1, expected = r (best measured)


class ClearRouting(Routing):
    """Per-sample state of CleaR: clean probabilities w (from a loss GMM), the teacher
    logits of the last training-set pass, and the Bernoulli(r * w_i) gate draws.

    The training-set pass is the one train.py makes every epoch to measure memorisation
    (eval mode, no dropout, gated as at evaluation), so CleaR's loss pass costs nothing
    extra. Unlike the official code, the model goes back to train mode after that pass,
    and every PEFT kind is gated per sample and per layer."""

    def __init__(self, num_train, num_layers, cfg):
        if not 0 < cfg.base_rate <= 1:
            raise RoutingError(f"CleaR base rate must be in (0, 1], got {cfg.base_rate}")
        if cfg.eval_mode not in CLEAR_EVAL_MODES:
            raise RoutingError(f"--clear_eval must be one of {CLEAR_EVAL_MODES}, got {cfg.eval_mode!r}")
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
        w, gmm = clean_probability(train_logits, observed)
        if epoch + 1 >= self.cfg.warmup_epochs:  # epochs count from 0: warm-up covers 0 .. W-1
            self.clean_prob = torch.as_tensor(w, dtype=torch.float32)
            self.teacher = torch.as_tensor(train_logits).float()
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


# ----------------------------------------------------------------------------
# LoRAMoE (tokens -> experts) and Match-Tuning (instances -> instances)


def _fp32(t):
    """A context where autocast is off, so router/similarity softmaxes stay in fp32 (bf16 rounds the logits)."""
    return torch.autocast(t.device.type, enabled=False)


@dataclass
class LoRAMoEConfig:
    n_experts: int = 6     # N LoRA experts per wrapped linear
    r: int = 4             # rank of each expert
    alpha: float = 32      # expert deltas are scaled by alpha / r (8 by default)
    dropout: float = 0.05  # dropout on the experts' input (not the router's)
    delta: float = 0.1     # localized balancing: coefficients are 1 -/+ delta
    beta: float = 0.1      # weight of the balance loss
    types: str = "none"    # sample types: "none" (plain balance) or "clean" (loss-GMM clean/noisy split)
    warmup_epochs: int = 3  # types="clean": epochs of plain balance before the GMM types samples
    method: str = field(default="loramoe", init=False)  # read by peft.save_peft / load_peft

    def __post_init__(self):
        if self.types not in ("none", "clean"):
            raise RoutingError(f"--moe_types must be none or clean, got {self.types!r}")
        if self.n_experts < (2 if self.types == "clean" else 1) or self.r < 1:
            raise RoutingError(f"LoRAMoE needs r >= 1 and n_experts >= 2 for two groups, got {self.n_experts}, {self.r}")
        if not 0 <= self.delta < 1:
            raise RoutingError(f"--moe_delta must be in [0, 1), got {self.delta}")


class LoRAMoELinear(nn.Module):
    """Dou et al. 2024, Sec. 3.1: N LoRA experts on a frozen linear, mixed per token by a router.
        y = base(x) + gate * (alpha/r) * sum_i g_i(x) B_i A_i dropout(x),  g = softmax(W_r x)
    The mix is dense (every expert, every token). B_i = 0 at init, so the module is the
    identity whatever the router says. The routing weights of the last forward are kept
    in `last_route` (B, T, N) fp32, with their graph, for the balance loss that
    LoRAMoERouting.aux_loss returns."""

    def __init__(self, base, n_experts, r, alpha, dropout):
        super().__init__()
        self.base, self.n_experts, self.r, self.scaling = base, n_experts, r, alpha / r
        w = base.weight  # (out, in), frozen
        A = torch.empty(n_experts, r, base.in_features, dtype=w.dtype, device=w.device)
        for a in A:  # per expert, so the fan-in is `in` (on the 3-D tensor it would be r * in)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.lora_A = nn.Parameter(A)                                                    # (N, r, in)
        self.lora_B = nn.Parameter(torch.zeros(n_experts, base.out_features, r, dtype=w.dtype, device=w.device))
        self.router_weight = nn.Parameter(torch.empty(n_experts, base.in_features, device=w.device))  # (N, in), fp32
        nn.init.kaiming_uniform_(self.router_weight, a=math.sqrt(5))  # nn.Linear's init, as the official router
        self.lora_dropout = Dropout(dropout)
        self.last_route = None

    def forward(self, x, gate=None):
        y = self.base(x, gate)                                                    # (B, T, out)
        with _fp32(x):
            g = torch.softmax(F.linear(x.float(), self.router_weight.float()), -1)  # (B, T, N) fp32
        self.last_route = g
        a = torch.einsum("bti,nri->btnr", self.lora_dropout(x), self.lora_A)      # (B, T, N, r)
        a = a * g.to(a.dtype)[..., None]  # weight each expert before B: sum_i B_i (g_i A_i x)
        h = torch.einsum("btnr,nor->bto", a, self.lora_B)                        # (B, T, out)
        scale = self.scaling if gate is None else gate.to(h.dtype)[:, None, None] * self.scaling
        return y + h * scale

    def extra_repr(self):
        return f"n_experts={self.n_experts}, r={self.r}, scaling={self.scaling:g}"


def inject_loramoe(model, cfg):
    """Wrap every layer's ffn_in and ffn_out (BERT intermediate.dense, output.dense), freeze
    all but lora_/router_ and the head, and record cfg as model.peft_config (method "loramoe")."""
    if getattr(model, "peft_config", None) is not None:
        raise peft.PeftError(f"the model already has {model.peft_config.method!r} injected")
    for layer in model.encoder.layers:
        for name in ("ffn_in", "ffn_out"):
            moe = LoRAMoELinear(getattr(layer, name), cfg.n_experts, cfg.r, cfg.alpha, cfg.dropout)
            setattr(layer, name, moe.train(model.training))  # keep the model's mode (dropout off in eval)
    model.peft_config = replace(cfg)
    model.cls_only = False  # the balance loss counts every real token of every layer, the top one too
    return peft.mark_trainable(model)


def balance_loss(route, mask, types, delta, beta):
    """Localized balancing constraint (Dou et al. 2024, Sec. 3.2) for one wrapped linear.
    route (B, T, N) routing weights; mask (B, T) 1 = real token; types (B,) 0/1 or None.
    Q[m, i] = sum of g_i over sample m's real tokens (the official code also counts padding);
    loss = beta * Var(C * Q) / Mean(C * Q)^2 over all B*N entries, population variance.

    Direction: the minimum makes C * Q equal, so experts with the *smaller* coefficient get
    *more* mass. Group 0 = experts [0, N//2), group 1 = the rest. We set C = 1 - delta where
    the expert's group equals the sample's type (the group that serves it) and 1 + delta
    elsewhere, so clean samples (type 0) are served by group 0 and suspected-noisy ones
    (type 1) by group 1; at the optimum the serving group holds (1 + delta) / 2 of a
    sample's mass. types None: C = 1, plain balance over all experts."""
    Q = (route * mask[..., None].to(route.dtype)).sum(1)  # (B, N)
    Z = Q
    if types is not None:
        group = (torch.arange(Q.size(1), device=Q.device) >= Q.size(1) // 2).long()  # (N,)
        Z = Q * torch.where(group[None] == types[:, None], 1 - delta, 1 + delta)      # (B, N)
    return beta * Z.var(correction=0) / (Z.mean() ** 2 + 1e-10)


class LoRAMoERouting(Routing):
    """Returns the balance loss of every LoRAMoE module; with types="clean" the sample types
    come from a CleaR-style loss GMM (Sec. 4.1 of CleaR) refitted after every epoch; logs
    how much routing mass each expert group gives truly clean vs truly noisy samples."""

    def __init__(self, model, num_train, cfg):
        self.cfg, self.modules = cfg, [m for m in model.modules() if isinstance(m, LoRAMoELinear)]
        if not self.modules:
            raise RoutingError("the model has no LoRAMoE layers; call inject_loramoe(model, cfg) first")
        self.types = torch.zeros(num_train, dtype=torch.long)  # 1 = suspected noisy
        self.typed = False  # False: plain balance (types="none", or still warming up)
        self._reset()

    def _reset(self):
        self.sums = torch.zeros(2, 2, dtype=torch.float64)  # [truly clean/noisy, group 0/1] of routing shares
        self.counts = torch.zeros(2, dtype=torch.float64)
        self.loss_sum, self.steps = 0.0, 0

    def aux_loss(self, logits, batch):
        if any(m.last_route is None for m in self.modules):
            raise RuntimeError("aux_loss needs a forward pass through the LoRAMoE model first")
        types = self.types[batch.index.cpu()].to(batch.index.device) if self.typed else None
        mask = batch.attention_mask
        loss = sum(balance_loss(m.last_route, mask, types, self.cfg.delta, self.cfg.beta) for m in self.modules)
        with torch.no_grad():  # per sample: group 0's share, mean over real tokens and wrapped layers
            w = mask.double() / mask.sum(1, keepdim=True).double()                        # (B, T)
            share0 = sum((m.last_route[..., : m.n_experts // 2].sum(-1).double() * w).sum(1)
                         for m in self.modules) / len(self.modules)                      # (B,)
            noisy = (batch.label != batch.true_label).long().cpu()
            share = torch.stack([share0, 1 - share0], 1).cpu()                           # (B, 2)
            self.sums.index_add_(0, noisy, share)
            self.counts.index_add_(0, noisy, torch.ones(len(noisy), dtype=torch.float64))
        self.loss_sum, self.steps = self.loss_sum + float(loss.detach()), self.steps + 1
        return {"balance": loss}

    def after_epoch(self, epoch, train_logits, observed, true):
        m = {f"moe_g{g}_{kind}": (float(self.sums[k, g] / self.counts[k]) if self.counts[k] else None)
             for k, kind in enumerate(("clean", "noisy")) for g in (0, 1)}
        m["moe_balance"] = self.loss_sum / self.steps if self.steps else None
        self._reset()
        if self.cfg.types == "clean":  # the same clean probability CleaR uses
            w, _ = clean_probability(train_logits, observed)
            if epoch + 1 >= self.cfg.warmup_epochs:  # the new types apply from the next epoch on
                self.types, self.typed = torch.as_tensor(w < 0.5).long(), True
            m["moe_gmm_auroc"] = auroc(w, observed == true)
            m["moe_typed_noisy"] = float(self.types.float().mean())
        return m

    def state_dict(self):
        return {"types": self.types, "typed": self.typed}

    def load_state_dict(self, state):
        self.types, self.typed = state["types"], state["typed"]


class MatchHead(nn.Module):
    """Tong et al. 2022, Sec. 3: each [CLS] representation is replaced by a softmax-weighted
    mix of the batch's representations before the classifier.
        z = match_dense(h) (B, C);  S = z z^T / tau (B, B);  M = row-softmax(S);  z~ = M z
    S uses the raw dot product and includes the example itself. Early in training the
    mix perturbs each example with others; later same-label examples dominate (Sec. 3.2).
    tau -> 0 gives z~ = z when each example is its own nearest neighbour in dot product
    (e.g. equal norms, as after a LayerNorm); a much longer z_j can still attract row i.
    Evaluation uses the plain z, so a prediction never depends on the rest of the batch;
    eval_mix=True keeps the mix. match_dense starts as the identity with zero bias: the
    first similarities are those of the pretrained [CLS] states, and the plain path
    equals the old head (replace_head_with_match copies it), so nothing is lost at step 0."""

    def __init__(self, hidden, num_classes, tau, eval_mix=False, dropout=0.1):
        super().__init__()
        if not tau > 0:
            raise RoutingError(f"--match_tau must be > 0, got {tau}")
        self.tau, self.eval_mix = tau, eval_mix
        self.match_dense = nn.Linear(hidden, hidden)
        with torch.no_grad():
            self.match_dense.weight.copy_(torch.eye(hidden))
            self.match_dense.bias.zero_()
        self.dropout = Dropout(dropout)  # on z~, where BERT puts it: the similarities see no dropout noise
        self.classifier = nn.Linear(hidden, num_classes)
        self.last_mix = None  # (B, B) M of the last mixed forward, detached, for MatchRouting

    @property
    def out_features(self):  # peft.save_peft / load_peft read model.head.out_features
        return self.classifier.out_features

    def mix(self, z):
        """z (B, C) -> (z~ (B, C), M (B, B)); similarities and softmax in fp32."""
        with _fp32(z):
            zf = z.float()
            M = torch.softmax(zf @ zf.T / self.tau, dim=-1)  # (B, B), rows sum to 1
            return (M @ zf).to(z.dtype), M

    def forward(self, h):
        z = self.match_dense(h)  # (B, C)
        self.last_mix = None
        if self.training or self.eval_mix:
            z, M = self.mix(z)
            self.last_mix = M.detach()
        return self.classifier(self.dropout(z))  # (B, K)


def replace_head_with_match(model, tau, eval_mix=False):
    """Swap model.head for a MatchHead whose classifier starts as the old head. The
    Classifier's dropout moves into the head (after the mix), so h is not dropped twice."""
    old = model.head
    head = MatchHead(old.in_features, old.out_features, tau, eval_mix, model.head_dropout.p).train(model.training)
    with torch.no_grad():
        head.classifier.weight.copy_(old.weight)
        head.classifier.bias.copy_(old.bias)
    model.head, model.head_dropout = head.to(old.weight.device, old.weight.dtype), nn.Identity()
    return model


class MatchRouting(Routing):
    """No extra loss; logs where each example's mixing mass goes, per epoch: to itself
    (match_diag), to other examples with the same / a different observed label
    (match_same_label / match_diff_label), and the same split by true label (*_true)."""

    KEYS = ("match_diag", "match_same_label", "match_diff_label", "match_same_true", "match_diff_true")

    def __init__(self, model):
        if not isinstance(model.head, MatchHead):
            raise RoutingError("MatchRouting needs replace_head_with_match(model, tau) first")
        self.head = model.head
        self.sums, self.rows = dict.fromkeys(self.KEYS, 0.0), 0

    def aux_loss(self, logits, batch):
        M = self.head.last_mix  # (B, B), detached
        if M is not None:
            off = 1 - torch.eye(len(M), device=M.device)  # (B, B) off-diagonal positions
            self.sums["match_diag"] += float(M.diagonal().sum())
            for suffix, y in (("label", batch.label), ("true", batch.true_label)):
                same = (y[:, None] == y[None, :]).to(M.dtype) * off
                self.sums[f"match_same_{suffix}"] += float((M * same).sum())
                self.sums[f"match_diff_{suffix}"] += float((M * (off - same)).sum())
            self.rows += len(M)
        return {}

    def after_epoch(self, epoch, train_logits, observed, true):
        m = {k: (v / self.rows if self.rows else None) for k, v in self.sums.items()}
        self.sums, self.rows = dict.fromkeys(self.KEYS, 0.0), 0
        return m
