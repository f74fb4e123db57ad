"""
Parameter-efficient fine-tuning (PEFT) of the encoder in model.py: the registry of PEFT kinds,
and what every kind shares - injection, freezing and parameter accounting.

A PEFT kind is one dataclass registered with @register in KINDS (a registry.Registry, in
registration order). Its fields are its settings, each one a train.py flag made with
settings.setting; its class attributes and methods (PeftKind below) declare everything else
the project needs to know of it:
    name, default_lr        --method NAME / --peft NAME, and its peak learning rate
    clear_base_rate         CleaR's gate rate r (clear.py); None: CleaR does not route it
    trains_base, standalone is it full fine-tuning; is it offered as --method NAME
    param_prefixes          the name prefixes of its parameters: what trains and is saved
    must_match              the settings a saved file must share with the model it loads into
    validate()              PeftError for an impossible setting
    inject(model)           wrap the layers of a model.Classifier
    trainable_params(...)   its closed-form trainable-parameter count, head included
    branch_flops, extra_keys  its own matmul FLOPs and extra attention positions (tools/bench_report.py)
    fold(layer, gate)       its modules as plain BERT weights (export.py), or PeftError (fold_note)
The command line, methods/, checkpoint.py, clear.py and tools/bench_jobs.py read KINDS. A new kind
is one such class in any file (see tests/test_registry.py).

The kinds of this package, one file per family, registered in this order:
    full.py     full fine-tuning and the linear probe (no PEFT module)
    lora.py     LoRA (Hu et al. 2021)
    adapter.py  bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021)
    prefix.py   prefix tuning (Li & Liang 2021)
    bitfit.py   BitFit (Ben Zaken et al. 2022)
LoRAMoE (loramoe.py) registers itself when methods/ is imported.

Conventions shared by every kind:
- A PEFT module wraps the frozen base layer by composition (attribute `base`) and only adds a
  *delta*; training never changes a pretrained weight. Two explicit calls write into the base
  weights: LoRA's merge() (reversible, unmerge()) and fold(), on export.py's copy of the model.
- Every delta starts at zero, so the injected model computes exactly the pretrained model's
  function - except prefix tuning (prefix.py says why).
- Every base layer is called as `module(x, gate)`; `gate` (B,) multiplies the delta per sample,
  which is how CleaR (clear.py) switches PEFT modules on and off.
- Parameter names carry the kind's prefixes (param_prefixes: lora_, adapter_, prefix_,
  bitfit_; LoRAMoE's lora_ and router_), so freezing and saving are one name filter.

Usage:
    model = Classifier(encoder, num_classes)        # pretrained weights already loaded
    inject(model, LoRA(lora_r=8))                   # wraps, freezes, records the config
    print(param_summary(model))
    checkpoint.save_peft(model, "runs/x")           # PEFT tensors + head, plus a JSON config (checkpoint.py)
"""

from dataclasses import dataclass, fields, replace
from typing import ClassVar

from model import count_params
from registry import Registry


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


KINDS = Registry("PEFT kind")  # name -> PeftKind subclass, in registration order


def register(cls):
    """Class decorator: add a PeftKind dataclass to KINDS under its `name` (a taken name is a ValueError)."""
    return KINDS.register()(cls)


def kind_config(name, values):
    """The settings of kind `name` taken from a mapping (vars(args), a saved JSON dict); others ignored."""
    try:
        cls = KINDS.get(name)
    except KeyError as e:
        raise PeftError(e.args[0]) from None
    return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


# ----------------------------------------------------------------------------
# Helpers the kinds share

def head_params(bert, num_classes):
    """Parameters of the linear head: weight (K, C) and bias (K,)."""
    return bert.hidden_size * num_classes + num_classes


def check_positive_ints(cfg, *names):
    """PeftError unless every named setting of `cfg` is an integer >= 1 (a bool is not)."""
    for name in names:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PeftError(f"{name} must be an integer >= 1, got {value!r}")


def per_sample(gate, like):
    """gate (B,) -> (B, 1, ..., 1) in the dtype of `like`, ready to broadcast over a delta."""
    return gate.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


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
    """'trainable params: N || all params: M || trainable: P%', the line train.py logs."""
    trainable, total = count_params(model)
    return (f"trainable params: {trainable:,} || all params: {total:,} || "
            f"trainable: {100 * trainable / max(total, 1):.2f}%")


# The kinds register themselves when imported, in this order (the --method and --peft choices).
from peft.full import Full, Probe  # noqa: E402
from peft.lora import LORA_TARGETS, LoRA, LoRALinear, lora_target_names, merge_lora, unmerge_lora  # noqa: E402
from peft.adapter import ADAPTER_SITES, Adapter, AdapterWrapper  # noqa: E402
from peft.prefix import Prefix, PrefixTuning  # noqa: E402
from peft.bitfit import BITFIT_SITES, BitFit, BitFitWrapper  # noqa: E402
