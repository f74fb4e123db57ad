"""
LoRA: a trainable low-rank update B A beside a frozen projection W0 (Hu et al. 2021, "LoRA:
Low-Rank Adaptation of Large Language Models", Sec. 4.1): h = W0 x + B A x, B zero at init so
B A = 0, the update scaled by alpha / r, and mergeable into W0 for inference without extra
matmuls (merge_lora / unmerge_lora; fold() for export.py).

One wrapped projection (shapes for x of shape (B, T, in)):

        x ------------------------------.
        |                               | dropout
        v                               v
   [ W0, b0 ]  frozen (out, in)     [ A ]  (r, in)   kaiming-uniform
        |                               v
        |                           [ B ]  (out, r)  zeros
        |                               | * alpha/r * gate[b]
        '-------------> (+) <-----------'
                         |
                         y  (B, T, out)

Which projections: --lora_targets, any of LORA_TARGETS (the six Linears of model.Layer), by
default query,value as in the paper (Sec. 7.1).
"""

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import BertConfig, linear_shapes
from peft import PeftError, PeftKind, check_positive_ints, head_params, per_sample, register
from settings import setting

LORA_TARGETS = tuple(linear_shapes(BertConfig()))  # the Linear sub-modules of model.Layer: query ... ffn_out


class LoRALinear(nn.Module):
    """y = base(x) + gate * (alpha/r) * dropout(x) A^T B^T. B is zero, so B A = 0 at init;
    A is random (kaiming-uniform, as in the reference implementation; the paper says
    random Gaussian), so B gets a non-zero gradient from the first step."""

    def __init__(self, base, r, alpha, dropout):
        super().__init__()
        self.base = base
        self.r, self.scaling = r, alpha / r
        w = base.weight  # (out, in), frozen
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout)
        self.merged = False  # True while W0 holds W0 + scaling * B A

    def delta_weight(self):
        return self.scaling * (self.lora_B @ self.lora_A)  # (out, r) @ (r, in) -> (out, in)

    @torch.no_grad()
    def merge(self):
        """W0 += scaling * B A, for inference without the extra matmuls (Sec. 4.1). Idempotent."""
        if not self.merged:
            self.base.weight += self.delta_weight().to(self.base.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self):
        """Undo merge(): W0 -= scaling * B A (exact up to float rounding). Idempotent."""
        if self.merged:
            self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
            self.merged = False

    def forward(self, x, gate=None):
        if self.merged:
            # a merged delta is applied to every sample and receives no gradient
            if gate is not None:
                raise RuntimeError("LoRA is merged into the base weight, so it cannot be gated per "
                                   "sample; call unmerge_lora(model) before a gated forward")
            if self.training:
                raise RuntimeError("LoRA is merged into the base weight, so it would not learn; "
                                   "call unmerge_lora(model) before training")
            return self.base(x, gate)
        y = self.base(x, gate)                                                   # (B, T, out)
        h = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)  # (B, T, r) -> (B, T, out)
        scale = self.scaling if gate is None else per_sample(gate, h) * self.scaling
        return y + h * scale

    def extra_repr(self):
        return f"r={self.r}, scaling={self.scaling:g}, merged={self.merged}"


@register
@dataclass
class LoRA(PeftKind):
    """LoRA (peft/lora.py, Hu et al. 2021)"""
    name: ClassVar[str] = "lora"
    param_prefixes: ClassVar[tuple] = ("lora_",)
    default_lr: ClassVar[float] = 2e-3
    clear_base_rate: ClassVar[float] = 0.85
    must_match: ClassVar[tuple] = ("lora_r", "lora_alpha", "lora_targets")
    lora_r: int = setting(8, "LoRA rank r")
    lora_alpha: float = setting(16, "LoRA alpha; the update is scaled by alpha/r (so r can change without retuning lr)")
    lora_dropout: float = setting(0.1, "dropout on the input of the low-rank branch only")
    lora_targets: str = setting("query,value", "comma list of query,key,value,attn_out,ffn_in,ffn_out, or all-linear")

    def validate(self):
        check_positive_ints(self, "lora_r")
        if not self.lora_alpha > 0:
            raise PeftError(f"lora_alpha must be > 0, got {self.lora_alpha!r}")
        if not 0 <= self.lora_dropout < 1:
            raise PeftError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        # raises on unknown names; one spelling per target list, so saved settings compare with ==
        self.lora_targets = ",".join(t for t in LORA_TARGETS if t in lora_target_names(self.lora_targets))

    def inject(self, model):
        for layer in model.encoder.layers:
            for name in self.lora_targets.split(","):
                setattr(layer, name, LoRALinear(getattr(layer, name), self.lora_r, self.lora_alpha, self.lora_dropout))

    def trainable_params(self, bert, num_classes):  # r * (in + out) per target: A is (r, in), B is (out, r)
        shapes = linear_shapes(bert)
        per_layer = sum(self.lora_r * sum(shapes[t]) for t in self.lora_targets.split(","))
        return bert.num_hidden_layers * per_layer + head_params(bert, num_classes)

    def branch_flops(self, bert):  # x A^T then (.) B^T: 2 * r * (in + out) per target
        shapes = linear_shapes(bert)
        return bert.num_hidden_layers * sum(2 * self.lora_r * sum(shapes[t]) for t in self.lora_targets.split(","))

    @torch.no_grad()
    def fold(self, layer, gate):  # W0 + gate * (alpha/r) B A; a merged W0 already holds it once
        for name in self.lora_targets.split(","):
            m = getattr(layer, name)
            m.base.weight += (gate - m.merged) * m.delta_weight().to(m.base.weight.dtype)
            setattr(layer, name, m.base)


def lora_target_names(spec):
    """ "query,value" -> ["query", "value"]; "all-linear" -> every Linear of a layer."""
    if spec.strip() == "all-linear":
        return list(LORA_TARGETS)
    names = list(dict.fromkeys(s.strip() for s in spec.split(",") if s.strip()))  # dedupe, keep order
    unknown = [n for n in names if n not in LORA_TARGETS]
    if unknown or not names:
        raise PeftError(f"unknown LoRA target(s) {unknown or [spec]}; valid names are "
                        f"{', '.join(LORA_TARGETS)} (comma-separated), or all-linear")
    return names


def lora_layers(model):
    """Every LoRALinear of the model; PeftError when there is none."""
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    if not layers:
        raise PeftError("the model has no LoRA layers to merge or unmerge")
    return layers


def merge_lora(model):
    """Fold every LoRA update into its base weight (explicit; train()/eval() never do this)."""
    for m in lora_layers(model):
        m.merge()
    return model


def unmerge_lora(model):
    """Undo merge_lora: subtract every LoRA update from its base weight again."""
    for m in lora_layers(model):
        m.unmerge()
    return model
