"""
LoRAMoE: LoRA experts in the FFN, mixed per token by a router, with a localized balancing
constraint that can make two expert groups serve two kinds of samples (here: the samples
the loss mixture calls clean vs suspected noisy).

Reference: Dou et al. 2024, "LoRAMoE: Alleviating World Knowledge Forgetting in Large
Language Models via MoE-Style Plugin", ACL. Sec. 3.1 (LoRA experts + router in the FFN),
Sec. 3.2 (localized balancing constraint).

The experts are a PEFT kind (`LoRAMoE`, registered in peft.KINDS); the balance loss and the
sample types are the method's hooks (`LoRAMoEHooks`). Usage:
    peft.inject(model, LoRAMoE())                     # wraps every layer's ffn_in and ffn_out
    hooks = LoRAMoEHooks(model, num_train, LoRAMoEConfig(moe_types="clean"))
    loss, extra = hooks.loss(model(ids, mask, with_features=True), batch)  # CE + {"balance": sum over wrapped linears}
"""

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

import methods
import peft
from mixture import looks_clean
from model import linear_shapes
from settings import SettingError, setting
from hooks import Hooks, fp32_region


class LoRAMoELinear(nn.Module):
    """Dou et al. 2024, Sec. 3.1: N LoRA experts on a frozen linear, mixed per token by a router.
        y = base(x) + gate * (alpha/r) * sum_i g_i(x) B_i A_i dropout(x),  g = softmax(W_r x)
    The mix is dense (every expert, every token). B_i = 0 at init, so the module is the
    identity whatever the router says. The routing weights of the last forward are kept
    in `last_route` (B, T, N) fp32, with their graph, for the balance loss that
    LoRAMoEHooks.extra_losses returns."""

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
        with fp32_region(x):
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
    """LoRAMoE experts (loramoe.py, Dou et al. 2024)"""
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
            raise SettingError(f"LoRAMoE needs --moe_experts >= 1 and --moe_r >= 1, got {self.moe_experts}, {self.moe_r}")

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


MOE_TYPES = ("none", "clean", "truth", "label")  # where sample types come from: nowhere, the loss mixture, the
# truth, the observed label (visible in the text where the class is)


@dataclass
class LoRAMoEConfig:
    """LoRAMoE balance (loramoe.py, Dou et al. 2024, Sec. 3.2)"""
    moe_delta: float = setting(0.1, "localized balancing coefficients 1 -/+ delta")
    moe_beta: float = setting(0.1, "weight of the balance loss")
    moe_types: str = setting("none", "sample types for the balance: none = plain balance; clean = after "
                                     "--warmup_epochs, loss-GMM clean samples to expert group 0, suspected noisy "
                                     "to group 1; truth = the same with the true noisy flags (an oracle); label = "
                                     "from the first step, the observed label's half of the class list (two classes: "
                                     "the class; on mr+r8: the source, which the text shows)",
                             choices=MOE_TYPES)

    def __post_init__(self):
        if self.moe_types not in MOE_TYPES:
            raise SettingError(f"--moe_types must be one of {MOE_TYPES}, got {self.moe_types!r}")
        if not 0 <= self.moe_delta < 1:
            raise SettingError(f"--moe_delta must be in [0, 1), got {self.moe_delta}")


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


def blind_share(p_noisy, delta):
    """Group 0's share of every sample's mass where a router that cannot see the types minimises the
    balance loss (balance_loss), with a share p_noisy of the samples typed noisy. Such a router gives every
    sample the same row Q = (a, 1 - a) per group; over the entries, the coefficients average u on group 0
    and v on group 1, their squares A and B, and Var/Mean^2 of C * Q is least at a = B u / (B u + A v)
    (the derivative's numerator factors as (A v a - B u (1 - a))). p_noisy = 0: (1 + delta) / 2, full
    specialisation; 1/2 at p_noisy = 1/2. The shift a - 1/2 is all the constraint can do when the type is
    not in the input; the typed-clean minus typed-noisy gap of group 0's share is what it does beyond it
    (at most delta)."""
    p, d = p_noisy, delta
    u, v = (1 - p) * (1 - d) + p * (1 + d), (1 - p) * (1 + d) + p * (1 - d)
    A, B = (1 - p) * (1 - d) ** 2 + p * (1 + d) ** 2, (1 - p) * (1 + d) ** 2 + p * (1 - d) ** 2
    return B * u / (B * u + A * v)


class LoRAMoEHooks(Hooks):
    """Returns the balance loss of every LoRAMoE module; with moe_types="clean" the sample
    types come from the loss mixture (mixture.py, as CleaR's) refitted after every epoch;
    logs how much routing mass each expert group gives truly clean vs truly noisy samples,
    and samples typed clean vs typed noisy (moe_g0_typed_*), accumulated per sample index
    during the epoch and split by truth only in epoch_metrics."""

    def __init__(self, model, num_train, cfg, warmup_epochs=3):
        self.cfg, self.warmup_epochs = cfg, warmup_epochs
        self.modules = [m for m in model.modules() if isinstance(m, LoRAMoELinear)]
        if not self.modules:
            raise SettingError("the model has no LoRAMoE layers; inject a loramoe.LoRAMoE kind first")
        if cfg.moe_types != "none" and any(m.n_experts < 2 for m in self.modules):
            raise SettingError(f"--moe_types {cfg.moe_types} needs --moe_experts >= 2 for two expert groups")
        self.truly_noisy = None  # --moe_types truth: the true noisy flags (read_truth)
        self.types = torch.zeros(num_train, dtype=torch.long)  # 1 = suspected noisy
        self.typed = cfg.moe_types == "label"  # False: plain balance (moe_types="none", or still warming up)
        self.num_classes = model.head.out_features if cfg.moe_types == "label" else None  # (a Classifier's head)
        self.share0 = torch.zeros(num_train, dtype=torch.float64)  # per sample: sum of group 0's shares
        self.visits = torch.zeros(num_train, dtype=torch.float64)  # and how many steps saw it
        self.loss_sum, self.steps = 0.0, 0
        self.last = None  # (share0, visits, balance, assigned types) of the last finished epoch, for the metrics

    def extra_losses(self, out, batch):
        if any(m.last_route is None for m in self.modules):
            raise RuntimeError("extra_losses needs a forward pass through the LoRAMoE model first")
        if self.cfg.moe_types == "label":  # types the router can see: the half of the classes the label is in
            types = (batch.label >= (self.num_classes + 1) // 2).long()
            self.types[batch.index.cpu()] = types.cpu()
        else:
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
        if self.cfg.moe_types in ("clean", "truth") and epoch + 1 >= self.warmup_epochs:  # from the next epoch on
            noisy = ~looks_clean(fit.clean_prob) if self.cfg.moe_types == "clean" else self.truly_noisy
            self.types, self.typed = torch.as_tensor(noisy).long(), True  # clean: the detector CleaR uses
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
        if assigned is not None and m["moe_g0_typed_clean"] is not None and m["moe_g0_typed_noisy"] is not None:
            # specialisation: the typed gap against its maximum, the common shift against a blind router's
            m["moe_typed_gap"] = m["moe_g0_typed_clean"] - m["moe_g0_typed_noisy"]
            m["moe_typed_gap_max"] = self.cfg.moe_delta
            m["moe_shift"] = float(share0.sum() / visits.sum()) - 0.5
            m["moe_blind_shift"] = blind_share(float(assigned.mean()), self.cfg.moe_delta) - 0.5
        m["moe_balance"] = balance
        if self.cfg.moe_types != "none":
            m["moe_typed_noisy"] = float(self.types.float().mean())
        return m

    def read_truth(self, observed, true):
        self.truly_noisy = observed != true  # (N,) bool: the oracle's types

    def state_dict(self):
        return {"types": self.types, "typed": self.typed}

    def load_state_dict(self, state):
        self.types, self.typed = state["types"], state["typed"]


# ----------------------------------------------------------------------------
# the registry entry (methods/__init__.py): --method loramoe

@methods.register
class LoRAMoEMethod(methods.Method):
    name, summary = "loramoe", "LoRAMoE: LoRA experts in the FFN, a router, localized balancing"
    settings = LoRAMoEConfig
    peft = "loramoe"
    reads_all_tokens = True  # the balance loss counts every real token of every layer, the top one too

    def finalize(self, args):
        if args.moe_types == "truth" and args.noise == "none" and not args.noisy_labels:
            raise SettingError("--moe_types truth reads the true noisy flags: it needs synthetic noise (--noise or "
                               "--noisy_labels)")

    def hooks(self, model, args, num_train):
        return LoRAMoEHooks(model, num_train, self.config(args), warmup_epochs=args.warmup_epochs)

    def label(self, cfg):
        return f"loramoe (types {cfg['moe_types']})"

    def reads_truth(self, cfg):
        return "true noisy flags as types" if cfg.get("moe_types") == "truth" else None
