"""
Parameter-efficient fine-tuning (PEFT) modules for the encoder in model.py, and the
registry of PEFT kinds.

References:
1) Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", Sec. 4.1
   (h = W0 x + B A x, B zero at init, update scaled by alpha / r, mergeable into W0).
2) Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP", Sec. 2.1
   (bottleneck adapter with an inner skip connection, two per layer: after the
   attention output projection and after the FFN, before the residual + LayerNorm).
3) Pfeiffer et al. 2021, "AdapterFusion: Non-Destructive Task Composition for Transfer
   Learning", Sec. 3 (the cheaper placement: one adapter per layer, after the FFN).
4) Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation",
   Sec. 4.2 (P learned key/value vectors in every layer) and Sec. 4.3 (training them
   through an MLP reparameterisation for stability).
5) Ben Zaken et al. 2022, "BitFit: Simple Parameter-efficient Fine-tuning for
   Transformer-based Masked Language-models", Sec. 2 (train only the bias terms).

The registry: every PEFT kind is one dataclass registered with @register. Its fields are
its settings (each one a train.py flag, with the help text given to `setting`); its
class attributes and methods declare everything else the project needs to know of it:
the default learning rate, CleaR's base rate, how it is injected, its closed-form
trainable-parameter count and the FLOPs bench.py counts for its branches. A new kind is
one such class (see tests/test_registry.py); train.py, methods/, bench.py read KINDS.

Conventions shared by every kind:
- A PEFT module wraps the frozen base layer by composition (attribute `base`) and only
  adds a *delta*; the pretrained weights are never modified (LoRA's explicit merge()
  is the one, reversible, exception).
- Every delta starts at zero, so the injected model computes exactly the pretrained
  model's function - except prefix tuning, see PrefixTuning.
- Every base layer is called as `module(x, gate)`; `gate` (B,) multiplies the delta per
  sample, which is how CleaR (clear.py) switches PEFT modules on and off.
- Parameter names carry the kind's prefixes (param_prefixes: lora_, adapter_, prefix_,
  bitfit_; LoRAMoE's lora_ and router_), so freezing and saving are one name filter.

LoRA on one projection (shapes for x of shape (B, T, in)):

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

Usage:
    model = Classifier(encoder, num_classes)        # pretrained weights already loaded
    inject(model, LoRA(lora_r=8))                   # wraps, freezes, records the config
    print(param_summary(model))
    checkpoint.save_peft(model, "runs/x")           # PEFT tensors + head, plus a JSON config (checkpoint.py)
"""

import math
from dataclasses import dataclass, fields, replace
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import BertConfig, count_params, linear_shapes
from settings import setting

LORA_TARGETS = tuple(linear_shapes(BertConfig()))  # the Linear sub-modules of model.Layer: query ... ffn_out
ADAPTER_SITES = {"houlsby": ("attn_out", "ffn_out"), "pfeiffer": ("ffn_out",)}
BITFIT_SITES = ("query", "key", "value", "attn_out", "attn_norm", "ffn_in", "ffn_out", "ffn_norm")


class PeftError(ValueError):
    """An invalid PEFT setting, or a PEFT file that does not fit the model."""


# ----------------------------------------------------------------------------
# The registry

@dataclass
class PeftKind:
    """Base of every registry entry. Subclasses are dataclasses of the kind's settings."""
    name: ClassVar[str]                       # --method NAME / --peft NAME
    default_lr: ClassVar[float]               # peak learning rate, chosen on noisy validation data (RESULTS.md, the fair test)
    clear_base_rate: ClassVar[float | None] = None  # CleaR's gate rate r (official code); None: not routable
    trains_base: ClassVar[bool] = False       # True: every pretrained weight trains (full fine-tuning)
    standalone: ClassVar[bool] = True         # offered as --method NAME and --peft NAME
    param_prefixes: ClassVar[tuple] = ()      # its parameters' name prefixes: what trains and is saved
    must_match: ClassVar[tuple] = ()          # settings that change what saved tensors mean

    def __post_init__(self):
        self.validate()

    def validate(self):
        """Raise PeftError for an impossible setting."""

    def inject(self, model):
        """Wrap the layers of a model.Classifier in place (peft.inject freezes and records)."""
        raise NotImplementedError

    def trainable_params(self, bert, num_classes):
        """The trainable parameter count the definition implies (closed form), head included."""
        raise NotImplementedError

    def branch_flops(self, bert):
        """Forward FLOPs per token of the kind's own matmuls, all layers (2 per multiply-add)."""
        return 0

    def extra_keys(self):
        """Attention positions the kind adds in front of every sequence (prefix tuning)."""
        return 0

    def fold(self, layer, gate):
        """Replace this kind's modules in one encoder layer (model.Layer) by plain BERT modules
        computing the same function, the branch scaled by the constant `gate` (1, or CleaR's
        expected gate r): what export.py and predict.py use. Raise PeftError when no plain BERT
        layer computes it; `fold_note` says why."""
        raise PeftError(f"{self.name} cannot be folded into plain BERT weights: {self.fold_note}")

    fold_note: ClassVar[str] = "it has no fold()"


KINDS = {}  # name -> PeftKind subclass, in registration order


def register(cls):
    """Class decorator: add a PeftKind dataclass to KINDS."""
    if cls.name in KINDS and KINDS[cls.name] is not cls:
        raise PeftError(f"a PEFT kind named {cls.name!r} is already registered")
    KINDS[cls.name] = cls
    return cls


def kind_config(name, values):
    """The settings of kind `name` taken from a mapping (vars(args), a saved JSON dict); others ignored."""
    if name not in KINDS:
        raise PeftError(f"unknown PEFT kind {name!r}; registered kinds are {', '.join(KINDS)}")
    cls = KINDS[name]
    return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


def head_params(bert, num_classes):
    return bert.hidden_size * num_classes + num_classes


def _positive_ints(cfg, *names):
    for name in names:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PeftError(f"{name} must be an integer >= 1, got {value!r}")


def _per_sample(gate, like):
    """gate (B,) -> (B, 1, ..., 1) in the dtype of `like`, ready to broadcast over a delta."""
    return gate.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


# ----------------------------------------------------------------------------
# Full fine-tuning: no PEFT module, every weight trains

@register
@dataclass
class Full(PeftKind):
    """Full fine-tuning: every weight trains."""
    name: ClassVar[str] = "full"
    default_lr: ClassVar[float] = 1e-4
    trains_base: ClassVar[bool] = True

    def inject(self, model):
        pass

    def fold(self, layer, gate):
        pass  # already plain BERT weights

    def trainable_params(self, bert, num_classes):
        C, I, L = bert.hidden_size, bert.intermediate_size, bert.num_hidden_layers
        emb = (bert.vocab_size + bert.max_position_embeddings + bert.type_vocab_size) * C + 2 * C
        layer = sum(i * o + o for i, o in linear_shapes(bert).values()) + 2 * (2 * C)  # six Linears, 2 LayerNorms
        return emb + L * layer + head_params(bert, num_classes)


# ----------------------------------------------------------------------------
# Linear probe: the head alone, on fixed features of the frozen encoder

@register
@dataclass
class Probe(PeftKind):
    """Linear probe (peft.py): only the classifier head trains, on the [CLS] features of the frozen
    pretrained encoder, which stays in eval mode (no dropout) so the features are fixed - the
    baseline a practitioner tries first (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained
    Features and Underperform Out-of-Distribution", compare it with full fine-tuning)."""
    name: ClassVar[str] = "probe"
    default_lr: ClassVar[float] = 1e-2

    def inject(self, model):
        model.encoder_always_eval = True

    def fold(self, layer, gate):
        pass  # the encoder is plain BERT

    def trainable_params(self, bert, num_classes):
        return head_params(bert, num_classes)


# ----------------------------------------------------------------------------
# LoRA (Hu et al. 2021, Sec. 4.1)

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
        scale = self.scaling if gate is None else _per_sample(gate, h) * self.scaling
        return y + h * scale

    def extra_repr(self):
        return f"r={self.r}, scaling={self.scaling:g}, merged={self.merged}"


@register
@dataclass
class LoRA(PeftKind):
    """LoRA (peft.py, Hu et al. 2021)"""
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
        _positive_ints(self, "lora_r")
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
    def fold(self, layer, gate):  # W0 + gate * (alpha/r) B A
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


def _lora_layers(model):
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    if not layers:
        raise PeftError("the model has no LoRA layers to merge or unmerge")
    return layers


def merge_lora(model):
    """Fold every LoRA update into its base weight (explicit; train()/eval() never do this)."""
    for m in _lora_layers(model):
        m.merge()
    return model


def unmerge_lora(model):
    for m in _lora_layers(model):
        m.unmerge()
    return model


# ----------------------------------------------------------------------------
# Bottleneck adapters (Houlsby et al. 2019, Sec. 2.1; Pfeiffer et al. 2021, Sec. 3)

class AdapterWrapper(nn.Module):
    """y = base(x); y + gate * up(act(down(y))). Wrapping the output projection puts the
    adapter after it and before model.Layer's dropout + residual + LayerNorm. (Some
    implementations apply that dropout before the adapter; in eval mode both agree.)
    up is zero-initialised, so the adapter is the identity at init; down gets a small
    normal init ("near-identity", Houlsby Sec. 2.1) so gradients reach up from step one.
    Houlsby et al. also train the LayerNorm parameters; we keep them frozen so that the
    method is exactly "adapter_* + head"."""

    def __init__(self, base, size):
        super().__init__()
        self.base = base
        d, w = base.out_features, base.weight
        self.adapter_down = nn.Linear(d, size, dtype=w.dtype, device=w.device)  # (m, d)
        self.adapter_up = nn.Linear(size, d, dtype=w.dtype, device=w.device)    # (d, m)
        nn.init.normal_(self.adapter_down.weight, std=1e-2)
        nn.init.zeros_(self.adapter_down.bias)
        nn.init.zeros_(self.adapter_up.weight)
        nn.init.zeros_(self.adapter_up.bias)

    def forward(self, x, gate=None):
        y = self.base(x, gate)                                     # (B, T, d)
        h = self.adapter_up(F.gelu(self.adapter_down(y)))          # (B, T, m) -> (B, T, d)
        return y + (h if gate is None else h * _per_sample(gate, h))


@register
@dataclass
class Adapter(PeftKind):
    """Bottleneck adapters (peft.py, Houlsby et al. 2019; Pfeiffer et al. 2021)"""
    name: ClassVar[str] = "adapter"
    param_prefixes: ClassVar[tuple] = ("adapter_",)
    default_lr: ClassVar[float] = 2e-3
    clear_base_rate: ClassVar[float] = 0.7
    must_match: ClassVar[tuple] = ("adapter_kind", "adapter_size")
    fold_note: ClassVar[str] = "a bottleneck adds a GELU block after the sublayer, which no BERT weight expresses"
    adapter_kind: str = setting("houlsby", "houlsby: after attention and FFN; pfeiffer: after the FFN only",
                                choices=tuple(ADAPTER_SITES))
    adapter_size: int = setting(16, "adapter bottleneck width m")

    def validate(self):
        _positive_ints(self, "adapter_size")
        if self.adapter_kind not in ADAPTER_SITES:
            raise PeftError(f"unknown adapter_kind {self.adapter_kind!r}; valid kinds are {', '.join(ADAPTER_SITES)}")

    def inject(self, model):
        for layer in model.encoder.layers:
            for name in ADAPTER_SITES[self.adapter_kind]:
                setattr(layer, name, AdapterWrapper(getattr(layer, name), self.adapter_size))

    def trainable_params(self, bert, num_classes):  # down (m, C) + m, up (C, m) + C per site
        C, m = bert.hidden_size, self.adapter_size
        sites = len(ADAPTER_SITES[self.adapter_kind])
        return bert.num_hidden_layers * sites * (2 * C * m + m + C) + head_params(bert, num_classes)

    def branch_flops(self, bert):  # down and up: 2 * 2 * C * m per site
        return bert.num_hidden_layers * len(ADAPTER_SITES[self.adapter_kind]) * 4 * bert.hidden_size * self.adapter_size


# ----------------------------------------------------------------------------
# Prefix tuning (Li & Liang 2021, Sec. 4.2-4.3)

class PrefixTuning(nn.Module):
    """P learned key and value vectors for each of the L layers, set as `model.prefix`;
    the encoder puts them in front of every sequence's keys/values and extends the
    attention mask by P (a per-sample gate of 0 masks them out for that sample).

    Identity at init is impossible here: the extra keys always take some attention mass
    from the real tokens, whatever their values. A small normal init (std 0.02) keeps
    keys and values near zero: each prefix position scores about 0 against every query
    and contributes a near-zero value, so the prefix starts close to neutral, not exact.

    mlp=False: `prefix_embedding` (P, L*2*C) is trained directly.
    mlp=True:  `prefix_tokens` (P, C) -> `prefix_mlp` (Linear C->H, tanh, Linear H->L*2*C),
    the reparameterisation Li & Liang found more stable (Sec. 4.3); after training only
    its output matters, so it could be computed once and stored as a prefix_embedding."""

    def __init__(self, n_layer, hidden, prefix_len, mlp=False, mlp_hidden=512):
        super().__init__()
        self.n_layer, self.hidden, self.prefix_len = n_layer, hidden, prefix_len
        width = n_layer * 2 * hidden  # a key and a value of width C per layer
        if mlp:
            self.prefix_tokens = nn.Parameter(torch.empty(prefix_len, hidden))
            self.prefix_mlp = nn.Sequential(nn.Linear(hidden, mlp_hidden), nn.Tanh(), nn.Linear(mlp_hidden, width))
            for lin in (self.prefix_mlp[0], self.prefix_mlp[2]):
                nn.init.normal_(lin.weight, std=0.02)
                nn.init.zeros_(lin.bias)
            nn.init.normal_(self.prefix_tokens, std=0.02)
        else:
            self.prefix_embedding = nn.Parameter(torch.empty(prefix_len, width))
            nn.init.normal_(self.prefix_embedding, std=0.02)

    def forward(self):
        """A list of L pairs (key (P, C), value (P, C))."""
        flat = self.prefix_mlp(self.prefix_tokens) if hasattr(self, "prefix_mlp") else self.prefix_embedding
        kv = flat.view(self.prefix_len, self.n_layer, 2, self.hidden)  # (P, L, 2, C)
        return [(kv[:, l, 0], kv[:, l, 1]) for l in range(self.n_layer)]


@register
@dataclass
class Prefix(PeftKind):
    """Prefix tuning (peft.py, Li & Liang 2021)"""
    name: ClassVar[str] = "prefix"
    param_prefixes: ClassVar[tuple] = ("prefix_",)
    default_lr: ClassVar[float] = 5e-3
    clear_base_rate: ClassVar[float] = 0.85
    fold_note: ClassVar[str] = "it adds trained key/value positions to every attention, which BERT has no slot for"
    must_match: ClassVar[tuple] = ("prefix_len", "prefix_mlp", "prefix_mlp_hidden")
    prefix_len: int = setting(20, "prefix length P (key/value vectors per layer)")
    prefix_mlp: bool = setting(False, "train the prefix through a reparameterisation MLP (Li & Liang Sec. 4.3)")
    prefix_mlp_hidden: int = setting(512, "hidden width of that MLP")

    def validate(self):
        _positive_ints(self, "prefix_len", "prefix_mlp_hidden")

    def inject(self, model):
        if model.prefix is not None:
            raise PeftError("the model already has a prefix module")
        bc = model.encoder.config
        model.prefix = PrefixTuning(bc.num_hidden_layers, bc.hidden_size, self.prefix_len, self.prefix_mlp,
                                    self.prefix_mlp_hidden).to(model.head.weight.device)

    def trainable_params(self, bert, num_classes):
        P, H, C = self.prefix_len, self.prefix_mlp_hidden, bert.hidden_size
        width = bert.num_hidden_layers * 2 * C
        prefix = P * C + (C * H + H) + (H * width + width) if self.prefix_mlp else P * width
        return prefix + head_params(bert, num_classes)

    def extra_keys(self):
        return self.prefix_len


# ----------------------------------------------------------------------------
# BitFit (Ben Zaken et al. 2022, Sec. 2)

class BitFitWrapper(nn.Module):
    """y = base(x) + gate * bitfit_bias: the frozen bias b0 plus a learned delta, zero at
    init, so the effective bias b0 + delta trains while the delta alone can be gated.
    inject() covers, in every encoder layer, the biases of query, key, value, attn_out,
    ffn_in, ffn_out and the shifts (betas) of attn_norm and ffn_norm - the bias terms
    BitFit trains. The embedding LayerNorm stays frozen: it belongs to no layer, so no
    per-layer gate could switch it."""

    def __init__(self, base):
        super().__init__()
        self.base = base
        n = base.out_features if isinstance(base, nn.Linear) else base.normalized_shape[-1]
        self.bitfit_bias = nn.Parameter(torch.zeros(n, dtype=base.weight.dtype, device=base.weight.device))

    def forward(self, x, gate=None):
        y = self.base(x, gate)  # (B, T, n)
        return y + (self.bitfit_bias if gate is None else _per_sample(gate, y) * self.bitfit_bias)


@register
@dataclass
class BitFit(PeftKind):
    """BitFit (peft.py, Ben Zaken et al. 2022)"""
    name: ClassVar[str] = "bitfit"
    param_prefixes: ClassVar[tuple] = ("bitfit_",)
    default_lr: ClassVar[float] = 5e-3
    clear_base_rate: ClassVar[float] = 0.9

    def inject(self, model):
        for layer in model.encoder.layers:
            for name in BITFIT_SITES:
                setattr(layer, name, BitFitWrapper(getattr(layer, name)))

    @torch.no_grad()
    def fold(self, layer, gate):  # b0 + gate * delta
        for name in BITFIT_SITES:
            m = getattr(layer, name)
            m.base.bias += gate * m.bitfit_bias
            setattr(layer, name, m.base)

    def trainable_params(self, bert, num_classes):  # one bias per Linear output, one shift per LayerNorm
        C = bert.hidden_size
        per_layer = sum(o for _, o in linear_shapes(bert).values()) + 2 * C
        return bert.num_hidden_layers * per_layer + head_params(bert, num_classes)


# ----------------------------------------------------------------------------
# Injection, freezing, accounting

def is_peft_param(name):
    """True for the classifier head and any tensor whose name has a component starting with a
    registered kind's prefix (lora_, adapter_, ...): the one filter for freezing and saving."""
    parts, prefixes = name.split("."), tuple(p for kind in KINDS.values() for p in kind.param_prefixes)
    return parts[0] == "head" or any(p.startswith(prefixes) for p in parts)


def mark_trainable(model, full=False):
    """requires_grad = is_peft_param(name) (or True everywhere for full fine-tuning)."""
    for name, p in model.named_parameters():
        p.requires_grad_(full or is_peft_param(name))
    return model


def inject(model, cfg):
    """Add the PEFT modules of `cfg` (a registered PeftKind) to a Classifier in place, after its
    pretrained weights were loaded; freeze everything else; record the config as model.peft_config."""
    if getattr(model, "peft_config", None) is not None:
        raise PeftError(f"the model already has {model.peft_config.name!r} injected")
    cfg = replace(cfg)  # a private copy, validated again (__post_init__) in case it was edited
    cfg.inject(model)
    model.peft_config = cfg
    return mark_trainable(model, full=cfg.trains_base)


def param_summary(model):
    trainable, total = count_params(model)
    return (f"trainable params: {trainable:,} || all params: {total:,} || "
            f"trainable: {100 * trainable / max(total, 1):.2f}%")
