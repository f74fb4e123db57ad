"""
Parameter-efficient fine-tuning (PEFT) modules for the encoder in model.py.

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

Conventions shared by every method:
- A PEFT module wraps the frozen base layer by composition (attribute `base`) and only
  adds a *delta*; the pretrained weights are never modified (LoRA's explicit merge()
  is the one, reversible, exception).
- Every delta starts at zero, so the injected model computes exactly the pretrained
  model's function - except prefix tuning, see PrefixTuning.
- Every base layer is called as `module(x, gate)`; `gate` (B,) multiplies the delta per
  sample, which is how CleaR (routing.py) switches PEFT modules on and off.
- Parameter names carry the method prefix (lora_, adapter_, prefix_, bitfit_, and
  router_ / match_ used by routing.py), so freezing and saving are one name filter.

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
    inject(model, PeftConfig(method="lora"))        # wraps, freezes, records the config
    print(param_summary(model))
    save_peft(model, "runs/x")                      # PEFT tensors + head, plus a JSON config
    load_peft(inject(fresh_model, cfg), "runs/x")
"""

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import Dropout  # F.dropout on CUDA, a cheaper sampler on the CPU

METHODS = ("full", "lora", "adapter", "prefix", "bitfit")
LORA_TARGETS = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")  # Linear sub-modules of model.Layer
ADAPTER_SITES = {"houlsby": ("attn_out", "ffn_out"), "pfeiffer": ("ffn_out",)}
BITFIT_SITES = ("query", "key", "value", "attn_out", "attn_norm", "ffn_in", "ffn_out", "ffn_norm")
PEFT_PREFIXES = ("lora_", "adapter_", "prefix_", "bitfit_", "router_", "match_")
WEIGHTS_NAME, CONFIG_NAME = "peft.safetensors", "peft_config.json"


class PeftError(ValueError):
    """An invalid PEFT setting, or a PEFT file that does not fit the model."""


@dataclass
class PeftConfig:
    method: str = "lora"            # one of METHODS; "full" = plain fine-tuning of everything
    lora_r: int = 8                 # rank r of the update B A
    lora_alpha: float = 16          # the update is scaled by alpha / r (so r can change without retuning lr)
    lora_dropout: float = 0.1       # dropout on the input of the low-rank branch only
    lora_targets: str = "query,value"  # comma list from LORA_TARGETS, or "all-linear"
    adapter_kind: str = "houlsby"   # "houlsby" (attn_out + ffn_out) or "pfeiffer" (ffn_out only)
    adapter_size: int = 16          # bottleneck width m of each adapter
    prefix_len: int = 20            # P, learned key/value positions per layer
    prefix_mlp: bool = False        # train the prefix through an MLP reparameterisation (Li & Liang Sec. 4.3)
    prefix_mlp_hidden: int = 512    # hidden width of that MLP

    def __post_init__(self):
        if self.method not in METHODS:
            raise PeftError(f"unknown PEFT method {self.method!r}; valid methods are {', '.join(METHODS)}")
        for name in ("lora_r", "adapter_size", "prefix_len", "prefix_mlp_hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PeftError(f"{name} must be an integer >= 1, got {value!r}")
        if not self.lora_alpha > 0:
            raise PeftError(f"lora_alpha must be > 0, got {self.lora_alpha!r}")
        if not 0 <= self.lora_dropout < 1:
            raise PeftError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if self.adapter_kind not in ADAPTER_SITES:
            raise PeftError(f"unknown adapter_kind {self.adapter_kind!r}; valid kinds are {', '.join(ADAPTER_SITES)}")
        lora_target_names(self.lora_targets)  # raises on unknown names

    @classmethod
    def from_dict(cls, d):
        """A config from a dict such as read_peft_config() returns; extra keys are ignored."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


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


def _per_sample(gate, like):
    """gate (B,) -> (B, 1, ..., 1) in the dtype of `like`, ready to broadcast over a delta."""
    return gate.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


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
        self.lora_dropout = Dropout(dropout)
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


# ----------------------------------------------------------------------------
# Injection, freezing, accounting

def is_peft_param(name):
    """True for the classifier head and any tensor with a PEFT-prefixed name component."""
    parts = name.split(".")
    return parts[0] == "head" or any(p.startswith(PEFT_PREFIXES) for p in parts)


def mark_trainable(model, full=False):
    """requires_grad = is_peft_param(name) (or True everywhere for full fine-tuning)."""
    for name, p in model.named_parameters():
        p.requires_grad_(full or is_peft_param(name))
    return model


def inject(model, cfg):
    """Add the PEFT modules of `cfg` to a Classifier in place (after its pretrained weights
    were loaded), freeze everything else, and record the config as model.peft_config."""
    if getattr(model, "peft_config", None) is not None:
        raise PeftError(f"the model already has {model.peft_config.method!r} injected")
    cfg = replace(cfg)  # a private copy, validated again (__post_init__) in case it was edited
    layers = model.encoder.layers
    if cfg.method == "lora":
        for layer in layers:
            for name in lora_target_names(cfg.lora_targets):
                setattr(layer, name, LoRALinear(getattr(layer, name), cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout))
    elif cfg.method == "adapter":
        for layer in layers:
            for name in ADAPTER_SITES[cfg.adapter_kind]:
                setattr(layer, name, AdapterWrapper(getattr(layer, name), cfg.adapter_size))
    elif cfg.method == "prefix":
        if model.prefix is not None:
            raise PeftError("the model already has a prefix module")
        bc = model.encoder.config
        model.prefix = PrefixTuning(bc.num_hidden_layers, bc.hidden_size, cfg.prefix_len,
                                    cfg.prefix_mlp, cfg.prefix_mlp_hidden).to(model.head.weight.device)
    elif cfg.method == "bitfit":
        for layer in layers:
            for name in BITFIT_SITES:
                setattr(layer, name, BitFitWrapper(getattr(layer, name)))
    model.peft_config = cfg
    return mark_trainable(model, full=cfg.method == "full")


def param_summary(model):
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return (f"trainable params: {trainable:,} || all params: {total:,} || "
            f"trainable: {100 * trainable / max(total, 1):.2f}%")


def expected_trainable_params(cfg, bert_config, num_classes):
    """The trainable parameter count implied by the method definitions (closed form)."""
    C, I, L = bert_config.hidden_size, bert_config.intermediate_size, bert_config.num_hidden_layers
    head = C * num_classes + num_classes
    if cfg.method == "full":
        emb = (bert_config.vocab_size + bert_config.max_position_embeddings + bert_config.type_vocab_size) * C + 2 * C
        layer = 4 * (C * C + C) + (C * I + I) + (I * C + C) + 2 * (2 * C)  # q,k,v,o; FFN in/out; 2 LayerNorms
        return emb + L * layer + head
    if cfg.method == "lora":  # r * (in + out) per target: A is (r, in), B is (out, r)
        in_out = {"query": (C, C), "key": (C, C), "value": (C, C), "attn_out": (C, C),
                  "ffn_in": (C, I), "ffn_out": (I, C)}
        return L * sum(cfg.lora_r * sum(in_out[t]) for t in lora_target_names(cfg.lora_targets)) + head
    if cfg.method == "adapter":  # down (m, C) + m, up (C, m) + C
        m = cfg.adapter_size
        return L * len(ADAPTER_SITES[cfg.adapter_kind]) * (2 * C * m + m + C) + head
    if cfg.method == "prefix":
        P, H, width = cfg.prefix_len, cfg.prefix_mlp_hidden, L * 2 * C
        if cfg.prefix_mlp:
            return P * C + (C * H + H) + (H * width + width) + head
        return P * width + head
    return L * (5 * C + I + 2 * C) + head  # bitfit: q,k,v,o,ffn_out (C each), ffn_in (I), two LN shifts


# ----------------------------------------------------------------------------
# Saving and loading

def _config_of(model):
    cfg = getattr(model, "peft_config", None)
    if cfg is None:
        raise PeftError("the model has no PEFT method injected; call inject(model, cfg) first")
    return cfg


def peft_state_dict(model):
    """The tensors a PEFT checkpoint holds: PEFT parameters + head (everything for "full")."""
    state = model.state_dict()
    if _config_of(model).method == "full":
        return state
    return {k: v for k, v in state.items() if is_peft_param(k)}


def _atomic_write(path, write):
    """write(tmp_path), then rename over `path`, so a crash never leaves a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_peft(model, out_dir, extra=None):
    """Write out_dir/peft.safetensors and out_dir/peft_config.json (config, num_classes, extra)."""
    from safetensors.torch import save_file
    cfg = _config_of(model)
    meta = {**asdict(cfg), "num_classes": model.head.out_features}
    clash = sorted(set(extra or {}) & set(meta))
    if clash:
        raise PeftError(f"extra keys {clash} would overwrite PEFT config fields")
    meta.update(extra or {})
    try:
        text = json.dumps(meta, indent=2, sort_keys=True)
    except TypeError as e:
        raise PeftError(f"extra is not JSON-serialisable ({e})") from None
    state = {k: v.detach().cpu().contiguous() for k, v in peft_state_dict(model).items()}
    os.makedirs(out_dir, exist_ok=True)
    _atomic_write(os.path.join(out_dir, WEIGHTS_NAME), lambda tmp: save_file(state, tmp, metadata={"method": cfg.method}))

    def write_json(tmp):
        with open(tmp, "w") as f:
            f.write(text + "\n")
    _atomic_write(os.path.join(out_dir, CONFIG_NAME), write_json)
    return out_dir


def read_peft_config(out_dir):
    """The dict saved in out_dir/peft_config.json (PeftConfig fields, num_classes, extras)."""
    path = os.path.join(out_dir, CONFIG_NAME)
    try:
        with open(path) as f:
            d = json.load(f)
    except FileNotFoundError:
        raise PeftError(f"{path}: not found (not a PEFT checkpoint directory?)") from None
    except json.JSONDecodeError as e:
        raise PeftError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict) or d.get("method") not in METHODS + ("loramoe",):  # loramoe: routing.py
        raise PeftError(f"{path}: no valid 'method' entry")
    return d


# settings that change what the saved tensors mean, checked before any tensor is copied
_MUST_MATCH = {"lora": ("lora_r", "lora_alpha", "lora_targets"), "adapter": ("adapter_kind", "adapter_size"),
               "prefix": ("prefix_len", "prefix_mlp"), "bitfit": (), "full": (),
               "loramoe": ("n_experts", "r", "alpha")}


def _same_setting(key, saved, ours):
    if key == "lora_targets" and isinstance(saved, str):  # "value, query" is "query,value"
        try:
            return set(lora_target_names(saved)) == set(lora_target_names(ours))
        except PeftError:
            return False
    return saved == ours


def load_peft(model, out_dir):
    """Copy a save_peft() checkpoint into a model that has the same PEFT method injected."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    cfg = _config_of(model)
    saved = read_peft_config(out_dir)
    cpath, wpath = os.path.join(out_dir, CONFIG_NAME), os.path.join(out_dir, WEIGHTS_NAME)
    if saved["method"] != cfg.method:
        raise PeftError(f"{cpath}: saved with method {saved['method']!r}, but the model has {cfg.method!r} "
                        f"injected; inject the saved config (PeftConfig.from_dict(read_peft_config(dir))) first")
    diffs = [f"{k}={saved.get(k)!r} in the file but {getattr(cfg, k)!r} in the model"
             for k in _MUST_MATCH[cfg.method] if not _same_setting(k, saved.get(k), getattr(cfg, k))]
    if saved.get("num_classes", model.head.out_features) != model.head.out_features:
        diffs.append(f"num_classes={saved['num_classes']} in the file but {model.head.out_features} in the model")
    if diffs:
        raise PeftError(f"{cpath}: settings differ: " + "; ".join(diffs))
    if any(m.merged for m in model.modules() if isinstance(m, LoRALinear)):
        raise PeftError("cannot load into a model whose LoRA is merged; call unmerge_lora(model) first")
    if not os.path.isfile(wpath):
        raise PeftError(f"{wpath}: not found")
    try:
        state = load_file(wpath)
    except (SafetensorError, OSError, ValueError) as e:
        raise PeftError(f"{wpath}: cannot read safetensors ({e})") from None
    ours = peft_state_dict(model)  # tensors sharing storage with the model's parameters
    for name, t in state.items():
        if name not in ours:
            raise PeftError(f"{wpath}: tensor {name} {tuple(t.shape)} is not a PEFT tensor of the model")
        if t.shape != ours[name].shape:
            raise PeftError(f"{wpath}: tensor {name} has shape {tuple(t.shape)} in the file "
                            f"but {tuple(ours[name].shape)} in the model")
    missing = [k for k in ours if k not in state]
    if missing:
        raise PeftError(f"{wpath}: {len(missing)} PEFT tensors of the model are missing, e.g. {missing[:3]}")
    with torch.no_grad():
        for name, t in state.items():
            ours[name].copy_(t)
    return model
