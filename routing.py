"""
Three routing ideas for learning with noisy labels, as training hooks (`Routing`):
- CleaR routes *samples* to PEFT modules: each sample passes through them only as often
  as it looks clean;
- LoRAMoE routes *tokens* to LoRA experts, with a balancing constraint that can make two
  expert groups serve two kinds of samples (here: suspected clean vs suspected noisy);
- Match-Tuning routes *instances* to each other: each representation is mixed with the
  batch's before the classifier.

References:
1) Kim, Kim, Lee 2024, "CleaR: Towards Robust and Generalized Parameter-Efficient
   Fine-Tuning for Noisy Label Learning", ACL. Sec. 4.1 (clean probability from a
   two-component Gaussian mixture on per-sample losses, mixture.py), Sec. 4.2 (clean
   routing: the PEFT module of layer l is applied to sample i with probability r * w_i),
   Sec. 4.3 (consistency regularisation against the previous epoch's predictions).
2) Dou et al. 2024, "LoRAMoE: Alleviating World Knowledge Forgetting in Large Language
   Models via MoE-Style Plugin", ACL. Sec. 3.1 (LoRA experts + router in the FFN),
   Sec. 3.2 (localized balancing constraint).
3) Tong et al. 2022, "Robust Fine-tuning via Perturbation and Interpolation from
   In-batch Instances" (Match-Tuning), IJCAI, Sec. 3.

Every method plugs into the engine (engine.py) through the hooks of `Routing`; methods.py
says which method builds which router. Usage:
    router = ClearRouting(num_train, num_layers, ClearConfig(base_rate=0.85), warmup_epochs=3)
    logits = model(batch.input_ids, batch.attention_mask, gates=router.gates(batch))
    loss, extra = router.loss(logits, batch)   # CE on the observed label + extra (returned, not hidden)
"""

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import peft

from model import linear_shapes
from peft import setting


class RoutingError(ValueError):
    """An impossible routing setting (base rate, temperature, expert count, ...)."""


class Routing:
    """The hooks of a training method; this base class is plain training.

        gates(batch)                    -> (B, L) per-sample, per-layer PEFT gates, or None (all on)
        eval_gates(B, device, generator) -> the same for evaluation passes
        extra_losses(logits, batch)     -> {name: scalar tensor}, added to the loss, logged as train_<name>
        loss(logits, batch)             -> (loss, extra_losses): cross-entropy on the observed label
                                           plus the extras; override to select or reweight samples
        end_epoch(epoch, train_logits, observed, fit) -> refit per-sample state after the training-set
                                           pass; fit: that epoch's mixture.DetectorFit (clean_prob w)
        epoch_metrics(observed, true)   -> {name: value}: the one hook that sees the true labels

    A batch (data.Batch) holds input_ids, attention_mask, index and the observed label: no
    per-batch hook can see a true label, only the per-epoch metrics do."""

    summary_keys: ClassVar[tuple] = ()  # last-epoch metrics repeated in summary.json

    def gates(self, batch):
        return None

    def eval_gates(self, batch_size, device, generator):
        return None

    def constant_eval_gate(self):
        """The gate every evaluation forward applies to every layer's PEFT branch, if it is one
        constant (1.0: no gating), else None (sampled gates): export.fold_model scales by it."""
        return 1.0

    def extra_losses(self, logits, batch):
        return {}

    def loss(self, logits, batch):
        extra = self.extra_losses(logits, batch)
        return F.cross_entropy(logits.float(), batch.label) + sum(extra.values()), extra

    def end_epoch(self, epoch, train_logits, observed, fit):
        pass

    def epoch_metrics(self, observed, true):
        return {}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


# ----------------------------------------------------------------------------
# CleaR


CLEAR_EVAL_MODES = ("sample", "all", "expected")


@dataclass
class ClearConfig:
    """CleaR (routing.py, Kim et al. 2024)"""
    base_rate: float = setting(None, "gate probability r of a surely clean sample (default per PEFT kind: "
                                     "adapter 0.7, lora/prefix 0.85, bitfit 0.9, as the official code)")
    consistency_weight: float = setting(1.0, "weight of the KL term to the last epoch's training-set predictions")
    consistency_temp: float = setting(1.0, "temperature of that KL term")
    clear_eval: str = setting(None, "gates at evaluation (test and training-set passes): sample ~ Bernoulli(r) "
                                    "(official code), all on, or their expected value r (default: expected, best "
                                    "measured, docs/earlier-results.md; with --eval_only: the saved run's mode unless given)",
                              choices=CLEAR_EVAL_MODES)
    clear_freeze: bool = setting(False, "ablation: stop training the PEFT modules after warm-up (the head goes on) - "
                                        "what the official LoRA code does by accident (loralib merges on eval())")


class ClearRouting(Routing):
    """Per-sample state of CleaR: clean probabilities w (from the loss mixture, mixture.py),
    the teacher logits of the last training-set pass, and the Bernoulli(r * w_i) gate draws.

    The training-set pass is the one the engine makes every epoch to measure memorisation
    (eval mode, no dropout, gated as at evaluation), so CleaR's loss pass costs nothing
    extra. Unlike the official code, the model goes back to train mode after that pass,
    and every PEFT kind is gated per sample and per layer."""

    def __init__(self, num_train, num_layers, cfg, warmup_epochs=3, model=None):
        if cfg.base_rate is None or not 0 < cfg.base_rate <= 1:
            raise RoutingError(f"CleaR base rate must be in (0, 1], got {cfg.base_rate}")
        if cfg.clear_eval not in CLEAR_EVAL_MODES:
            raise RoutingError(f"--clear_eval must be one of {CLEAR_EVAL_MODES}, got {cfg.clear_eval!r}")
        self.cfg, self.num_layers, self.warmup_epochs, self.model = cfg, num_layers, warmup_epochs, model
        if cfg.clear_freeze and model is None:
            raise RoutingError("--clear_freeze needs the model to freeze")
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
        if self.cfg.clear_eval == "all":
            return None
        if self.cfg.clear_eval == "expected":
            return torch.full((batch_size, L), r, device=device)
        return torch.bernoulli(torch.full((batch_size, L), r), generator=generator).to(device)

    def constant_eval_gate(self):
        return {"all": 1.0, "expected": self.cfg.base_rate}.get(self.cfg.clear_eval)  # sample: None

    def extra_losses(self, logits, batch):
        """KL(softmax(t/T) || softmax(z/T)) against the stored teacher (Sec. 4.3); none before one exists."""
        if self.teacher is None or self.cfg.consistency_weight == 0:
            return {}
        T = self.cfg.consistency_temp
        teacher = F.log_softmax(self.teacher[batch.index.cpu()].to(logits.device) / T, dim=-1)
        student = F.log_softmax(logits.float() / T, dim=-1)
        kl = F.kl_div(student, teacher, log_target=True, reduction="batchmean")
        return {"consistency": self.cfg.consistency_weight * kl}

    def end_epoch(self, epoch, train_logits, observed, fit):
        """From the end of warm-up on, gate with the detector's clean probabilities (mixture.py)."""
        if epoch + 1 >= self.warmup_epochs:  # epochs count from 0: warm-up covers 0 .. W-1
            self.clean_prob = torch.as_tensor(fit.clean_prob, dtype=torch.float32)
            self.teacher = torch.as_tensor(train_logits).float()
            self.freeze()

    def freeze(self):
        """--clear_freeze: the PEFT modules stop learning (no gradient, so AdamW skips them); the head trains on."""
        if self.cfg.clear_freeze:
            for name, p in self.model.named_parameters():
                if not name.startswith("head."):
                    p.requires_grad_(False)

    def epoch_metrics(self, observed, true):
        """The mean gate rate r * w of truly clean and truly noisy samples (the detector's own
        figures are every method's, evaluation.epoch_metrics)."""
        clean = observed == true
        gate = self.cfg.base_rate * self.clean_prob.numpy()
        return {"gate_rate_clean": float(gate[clean].mean()) if clean.any() else None,
                "gate_rate_noisy": float(gate[~clean].mean()) if (~clean).any() else None}

    def state_dict(self):
        return {"clean_prob": self.clean_prob, "teacher": self.teacher}

    def load_state_dict(self, state):
        self.clean_prob, self.teacher = state["clean_prob"], state["teacher"]
        if self.teacher is not None:  # resumed after warm-up
            self.freeze()


# ----------------------------------------------------------------------------
# LoRAMoE (tokens -> experts)


def _fp32(t):
    """A context where autocast is off, so router/similarity softmaxes stay in fp32 (bf16 rounds the logits)."""
    return torch.autocast(t.device.type, enabled=False)


class LoRAMoELinear(nn.Module):
    """Dou et al. 2024, Sec. 3.1: N LoRA experts on a frozen linear, mixed per token by a router.
        y = base(x) + gate * (alpha/r) * sum_i g_i(x) B_i A_i dropout(x),  g = softmax(W_r x)
    The mix is dense (every expert, every token). B_i = 0 at init, so the module is the
    identity whatever the router says. The routing weights of the last forward are kept
    in `last_route` (B, T, N) fp32, with their graph, for the balance loss that
    LoRAMoERouting.extra_losses returns."""

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
        self.lora_dropout = nn.Dropout(dropout)
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


MOE_SITES = ("ffn_in", "ffn_out")  # BERT intermediate.dense and output.dense


@peft.register
@dataclass
class LoRAMoE(peft.PeftKind):
    """LoRAMoE experts (routing.py, Dou et al. 2024)"""
    name: ClassVar[str] = "loramoe"
    default_lr: ClassVar[float] = 5e-4
    standalone: ClassVar[bool] = False  # only with its balance loss: --method loramoe
    must_match: ClassVar[tuple] = ("moe_experts", "moe_r", "moe_alpha")
    param_prefixes: ClassVar[tuple] = ("lora_", "router_")
    fold_note: ClassVar[str] = "the router weighs the experts per token, so the update depends on the input"
    moe_experts: int = setting(6, "LoRA experts per FFN linear")
    moe_r: int = setting(4, "rank of each expert")
    moe_alpha: float = setting(32, "expert deltas are scaled by alpha/r")
    moe_dropout: float = setting(0.05, "dropout on the experts' input (not the router's)")

    def validate(self):
        if self.moe_experts < 1 or self.moe_r < 1:
            raise RoutingError(f"LoRAMoE needs --moe_experts >= 1 and --moe_r >= 1, got {self.moe_experts}, {self.moe_r}")

    def inject(self, model):
        """Wrap every layer's ffn_in and ffn_out."""
        for layer in model.encoder.layers:
            for name in MOE_SITES:
                moe = LoRAMoELinear(getattr(layer, name), self.moe_experts, self.moe_r, self.moe_alpha, self.moe_dropout)
                setattr(layer, name, moe.train(model.training))  # keep the model's mode (dropout off in eval)

    def trainable_params(self, bert, num_classes):  # per site: N experts (r, in) + (out, r), router (N, in)
        shapes = linear_shapes(bert)
        N, r = self.moe_experts, self.moe_r
        per_layer = sum(N * r * (i + o) + N * i for i, o in (shapes[s] for s in MOE_SITES))
        return bert.num_hidden_layers * per_layer + peft.head_params(bert, num_classes)

    def branch_flops(self, bert):  # experts and router, every token
        return 2 * (self.trainable_params(bert, 0))


@dataclass
class LoRAMoEConfig:
    """LoRAMoE balance (routing.py, Dou et al. 2024, Sec. 3.2)"""
    moe_delta: float = setting(0.1, "localized balancing coefficients 1 -/+ delta")
    moe_beta: float = setting(0.1, "weight of the balance loss")
    moe_types: str = setting("none", "sample types for the balance: none = plain balance; clean = after "
                                     "--warmup_epochs, loss-GMM clean samples to expert group 0, suspected noisy "
                                     "to group 1", choices=("none", "clean"))

    def __post_init__(self):
        if self.moe_types not in ("none", "clean"):
            raise RoutingError(f"--moe_types must be none or clean, got {self.moe_types!r}")
        if not 0 <= self.moe_delta < 1:
            raise RoutingError(f"--moe_delta must be in [0, 1), got {self.moe_delta}")


def balance_loss(route, mask, types, delta, beta):
    """Localized balancing constraint (Dou et al. 2024, Sec. 3.2) for one wrapped linear.
    route (B, T, N) routing weights; mask (B, T) 1 = real token; types (B,) 0/1 or None.
    Q[m, i] = the mean of g_i over sample m's real tokens; loss = beta * Var(C * Q) / Mean(C * Q)^2
    over all B*N entries, population variance. The paper sums over tokens (and the official
    code over padding too, at batch size 1): summed over a batch of mixed lengths, the loss
    is minimised by moving mass between samples, and samples much shorter than the batch
    mean end up served by the wrong group. The mean makes every sample weigh the same.

    Direction: the minimum makes C * Q equal, so experts with the *smaller* coefficient get
    *more* mass. Group 0 = experts [0, N//2), group 1 = the rest. We set C = 1 - delta where
    the expert's group equals the sample's type (the group that serves it) and 1 + delta
    elsewhere, so clean samples (type 0) are served by group 0 and suspected-noisy ones
    (type 1) by group 1; at the optimum the serving group holds (1 + delta) / 2 of a
    sample's mass. types None: C = 1, plain balance over all experts."""
    m = mask[..., None].to(route.dtype)                                  # (B, T, 1)
    Q = (route * m).sum(1) / m.sum(1).clamp_min(1)                       # (B, N), rows sum to 1
    Z = Q
    if types is not None:
        group = (torch.arange(Q.size(1), device=Q.device) >= Q.size(1) // 2).long()  # (N,)
        Z = Q * torch.where(group[None] == types[:, None], 1 - delta, 1 + delta)      # (B, N)
    return beta * Z.var(correction=0) / (Z.mean() ** 2 + 1e-10)


class LoRAMoERouting(Routing):
    """Returns the balance loss of every LoRAMoE module; with moe_types="clean" the sample
    types come from the loss mixture (mixture.py, as CleaR's) refitted after every epoch;
    logs how much routing mass each expert group gives truly clean vs truly noisy samples,
    and samples typed clean vs typed noisy (moe_g0_typed_*), accumulated per sample index
    during the epoch and split by truth only in epoch_metrics."""

    def __init__(self, model, num_train, cfg, warmup_epochs=3):
        self.cfg, self.warmup_epochs = cfg, warmup_epochs
        self.modules = [m for m in model.modules() if isinstance(m, LoRAMoELinear)]
        if not self.modules:
            raise RoutingError("the model has no LoRAMoE layers; inject a routing.LoRAMoE config first")
        if cfg.moe_types == "clean" and any(m.n_experts < 2 for m in self.modules):
            raise RoutingError("--moe_types clean needs --moe_experts >= 2 for two expert groups")
        self.types = torch.zeros(num_train, dtype=torch.long)  # 1 = suspected noisy
        self.typed = False  # False: plain balance (moe_types="none", or still warming up)
        self.share0 = torch.zeros(num_train, dtype=torch.float64)  # per sample: sum of group 0's shares
        self.visits = torch.zeros(num_train, dtype=torch.float64)  # and how many steps saw it
        self.loss_sum, self.steps = 0.0, 0
        self.last = None  # (share0, visits, balance, assigned types) of the last finished epoch, for the metrics

    def extra_losses(self, logits, batch):
        if any(m.last_route is None for m in self.modules):
            raise RuntimeError("extra_losses needs a forward pass through the LoRAMoE model first")
        types = self.types[batch.index.cpu()].to(batch.index.device) if self.typed else None
        mask = batch.attention_mask
        loss = sum(balance_loss(m.last_route, mask, types, self.cfg.moe_delta, self.cfg.moe_beta)
                   for m in self.modules)
        with torch.no_grad():  # per sample: group 0's share, mean over real tokens and wrapped layers
            w = mask.double() / mask.sum(1, keepdim=True).double()                        # (B, T)
            share0 = sum((m.last_route[..., : m.n_experts // 2].sum(-1).double() * w).sum(1)
                         for m in self.modules) / len(self.modules)                      # (B,)
            index = batch.index.cpu()
            self.share0.index_add_(0, index, share0.cpu())
            self.visits.index_add_(0, index, torch.ones(len(index), dtype=torch.float64))
        self.loss_sum, self.steps = self.loss_sum + float(loss.detach()), self.steps + 1
        return {"balance": loss}

    def end_epoch(self, epoch, train_logits, observed, fit):
        balance = self.loss_sum / self.steps if self.steps else None
        assigned = self.types.numpy().copy() if self.typed else None  # the types this epoch trained with
        self.last = (self.share0.numpy(), self.visits.numpy(), balance, assigned)
        if self.cfg.moe_types == "clean" and epoch + 1 >= self.warmup_epochs:  # the detector CleaR uses
            self.types, self.typed = torch.as_tensor(fit.clean_prob < 0.5).long(), True  # from the next epoch on
        self.share0, self.visits = torch.zeros_like(self.share0), torch.zeros_like(self.visits)
        self.loss_sum, self.steps = 0.0, 0

    def epoch_metrics(self, observed, true):
        share0, visits, balance, assigned = self.last
        m = {}
        groups = [("clean", observed == true), ("noisy", observed != true)]
        if assigned is not None:  # and by the type each sample was assigned (0 = called clean)
            groups += [("typed_clean", assigned == 0), ("typed_noisy", assigned == 1)]
        for kind, rows in groups:
            n = visits[rows].sum()
            g0 = float(share0[rows].sum() / n) if n else None
            m[f"moe_g0_{kind}"], m[f"moe_g1_{kind}"] = g0, (None if g0 is None else 1 - g0)
        m["moe_balance"] = balance
        if self.cfg.moe_types == "clean":
            m["moe_typed_noisy"] = float(self.types.float().mean())
        return m

    def state_dict(self):
        return {"types": self.types, "typed": self.typed}

    def load_state_dict(self, state):
        self.types, self.typed = state["types"], state["typed"]


# ----------------------------------------------------------------------------
# Match-Tuning (instances -> instances)


@dataclass
class MatchConfig:
    """Match-Tuning (routing.py, Tong et al. 2022)"""
    match_tau: float = setting(3.0, "temperature of the in-batch similarity z z^T / tau (unpublished; 3 is a "
                                    "first guess from MiniLM [CLS] dot products, not yet tuned)")
    match_eval: str = setting("plain", "evaluation: plain z (batch-independent) or the in-batch mix",
                              choices=("plain", "mix"))
    match_lr: float = setting(None, "peak learning rate of the new dense layer match_dense (default: --lr)")

    def __post_init__(self):
        if not self.match_tau > 0:
            raise RoutingError(f"--match_tau must be > 0, got {self.match_tau}")


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
        self.dropout = nn.Dropout(dropout)  # on z~, where BERT puts it: the similarities see no dropout noise
        self.classifier = nn.Linear(hidden, num_classes)
        self.last_mix = None  # (B, B) M of the last mixed forward, detached, for MatchRouting

    @property
    def out_features(self):  # checkpoint.save_peft / load_peft read model.head.out_features
        return self.classifier.out_features

    @torch.no_grad()
    def as_linear(self):
        """The evaluation path classifier(match_dense(h)) as one nn.Linear (export.py); None when
        evaluation mixes the batch (eval_mix), which no per-example classifier can express."""
        if self.eval_mix:
            return None
        d, c = self.match_dense, self.classifier
        out = nn.Linear(d.in_features, c.out_features).to(c.weight.device)
        out.weight.copy_(c.weight @ d.weight)
        out.bias.copy_(c.weight @ d.bias + c.bias)
        return out

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
    (match_same_label / match_diff_label), and the same split by true label (*_true).
    Each step keeps its batch's (index, M); the labels are looked up in epoch_metrics."""

    def __init__(self, model):
        if not isinstance(model.head, MatchHead):
            raise RoutingError("MatchRouting needs replace_head_with_match(model, tau) first")
        self.head, self.mixes, self.last = model.head, [], []

    def extra_losses(self, logits, batch):
        if self.head.last_mix is not None:
            self.mixes.append((batch.index.cpu(), self.head.last_mix.cpu()))  # (B,), (B, B) detached
        return {}

    def end_epoch(self, epoch, train_logits, observed, fit):
        self.last, self.mixes = self.mixes, []

    def epoch_metrics(self, observed, true):
        sums, rows = dict.fromkeys(("match_diag", "match_same_label", "match_diff_label", "match_same_true",
                                    "match_diff_true"), 0.0), 0
        for index, M in self.last:
            off = 1 - torch.eye(len(M))  # (B, B) off-diagonal positions
            sums["match_diag"] += float(M.diagonal().sum())
            for suffix, labels in (("label", observed), ("true", true)):
                y = torch.as_tensor(np.asarray(labels)[index.numpy()])
                same = (y[:, None] == y[None, :]).to(M.dtype) * off
                sums[f"match_same_{suffix}"] += float((M * same).sum())
                sums[f"match_diff_{suffix}"] += float((M * (off - same)).sum())
            rows += len(M)
        return {k: (v / rows if rows else None) for k, v in sums.items()}
