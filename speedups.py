"""
Speed paths, fenced off from the textbook model: each computes what the plain path in
model.py computes (tests/test_speedups.py checks every one against it), only faster.
`enable(model)` switches them all on, once, after the PEFT modules are injected; train.py
calls it unless --no_speedups. Each path is one entry of PATHS (registry.py's shape);
tools/bench.py measures what each one pays (`--paths_ab`), and docs/speed.md holds the
profiles and timings behind them.

1) Cheaper dropout on the CPU. PyTorch's CPU generator is serial, one draw per element.
   Here one draw from torch's generator seeds numpy's PCG64, whose 64-bit outputs give four
   16-bit uniforms each; an element is dropped when its uniform falls in the lowest
   round(p * 65536) of the 65536 values, so p is rounded to a multiple of 1/65536
   (0.1 -> 0.100006), and kept elements are scaled by 1 / (1 - that rounded p). The mask is
   a float tensor, so forward and backward are one multiply each (fp32: the scale folded into
   the mask; bf16: an exact 0/1 mask, then the scale, as a bf16 mask value would round it by
   0.2%). torch.manual_seed still decides every mask.
2) Attention with dropout by hand on the CPU. SDPA's CPU kernels cannot drop attention
   weights (its fallback is these lines with F.dropout), so training writes the softmax
   out to use sampler 1). Evaluation and CUDA keep SDPA.
3) The top layer computes [CLS] alone. Only the top layer's [CLS] state reaches the head,
   so that layer's query side (query, attention output, FFN) runs for one position: the
   same logits and gradients, ~1/L less work. A method that reads every top-layer token
   (LoRAMoE's balance loss) keeps the full layer (methods.Method.reads_all_tokens).
4) Frozen weights cast once under autocast. Autocast casts every weight to bf16 at every
   call, though frozen weights never change. A frozen model.Linear keeps its bf16 copy
   until the weight changes (its version counter, as an in-place update, merge or load bumps
   it, or its storage, as .to() moves it): the same bf16 values, so the same outputs.
5) Evaluation on the folded model: the evaluation passes run on a copy of the model with the
   PEFT modules merged into plain weights (can_fold, evaluation_model; export.fold_model) - the same
   logits up to float rounding. train.py folds unless --no_speedups; it changes no module of
   the trained model, so it is not one of the switchable PATHS.

Dropout masks differ from nn.Dropout's draws (another sampler, same distribution), so a
run with speed paths and one without are equally valid but not bit-identical.

Usage:
    speedups.enable(model)                   # after peft.inject(...)
    speedups.enable(model, cls_only=False)   # every top-layer token computed
    speedups.switch(model, "dropout", on=False)   # one path off again (tools/bench.py --paths_ab)
"""

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from model import Attention, Linear
from registry import Registry

PATHS = Registry("speed path")  # name -> fn(model, on): switch that path on or off in place (enable: all)


BF16_ONE = np.uint16(0x3F80)  # the bit pattern of 1.0 in bfloat16


def keep_mask(n, p):
    """(n,) numpy bool, True = keep: 16-bit uniforms from a PCG64 stream seeded by torch's generator."""
    seed = int(torch.randint(0, 2 ** 62, (1,)))
    uniforms = np.random.PCG64(seed).random_raw((n + 3) // 4).view(np.int16)[:n]  # uniform on [-32768, 32767]
    return uniforms >= round(p * 65536) - 32768


def cheap_dropout(x, p):
    """Inverted dropout on a CPU tensor with sampler 1); float32 and bfloat16 (else F.dropout)."""
    if x.dtype not in (torch.float32, torch.bfloat16):
        return F.dropout(x, p, True)
    keep, scale = keep_mask(x.numel(), p), 65536 / (65536 - round(p * 65536))
    if x.dtype == torch.float32:
        return x * torch.from_numpy(np.multiply(keep, np.float32(scale), dtype=np.float32)).view(x.shape)
    return x * torch.from_numpy(keep.view(np.uint8) * BF16_ONE).view(torch.bfloat16).view(x.shape) * scale


class CheapDropout(nn.Dropout):
    """nn.Dropout with sampler 1) on the CPU; F.dropout on CUDA; the identity in eval."""

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        return F.dropout(x, self.p, True) if x.is_cuda else cheap_dropout(x, self.p)


class HandAttention(Attention):
    """model.Attention, with the softmax written out in CPU training so that the attention
    weights go through sampler 1) (path 2)."""

    def forward(self, q, k, v, bias):
        if not self.training or self.p == 0 or q.is_cuda:
            return super().forward(q, k, v, bias)
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, nh, T, T_kv)
        if bias is not None:
            scores = scores + bias
        return cheap_dropout(scores.softmax(-1), self.p) @ v        # (B, nh, T, hs)


def autocast_dtype(device_type):
    """The dtype autocast casts to on this device type, or None when autocast is off."""
    try:  # torch >= 2.4
        return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    except TypeError:  # torch 2.1 - 2.3
        if device_type == "cpu":
            return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
        return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None


class CastCacheLinear(Linear):
    """model.Linear that, frozen and under autocast, reuses its weight cast until the weight
    changes (path 4). No state of its own besides the cache, so switch() re-classes in place."""

    def forward(self, x, gate=None):
        w = self.weight
        dtype = None if w.requires_grad else autocast_dtype(w.device.type)
        if dtype is None or dtype == w.dtype:
            return F.linear(x, w, self.bias)
        key = (w.data_ptr(), w._version, dtype)
        if getattr(self, "_cast_key", None) != key:
            with torch.no_grad():
                self._cast_weight, self._cast_key = w.to(dtype), key
        return F.linear(x, self._cast_weight, self.bias)  # autocast casts x and the bias, not this weight


def _swap_modules(model, plain, fast, on):
    """Replace every module of exactly type `plain` by `fast` (on) or back (off), keeping p and mode."""
    old, new = (plain, fast) if on else (fast, plain)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is old:  # exact type: CheapDropout is an nn.Dropout too
                setattr(parent, name, new(child.p).train(child.training))


@PATHS.register("dropout")
def _dropout(model, on):
    """1) dropout masks from a cheaper sampler on the CPU"""
    _swap_modules(model, nn.Dropout, CheapDropout, on)


@PATHS.register("attention")
def _attention(model, on):
    """2) attention dropout through that sampler in CPU training"""
    _swap_modules(model, Attention, HandAttention, on)


@PATHS.register("cls_only")
def _cls_only(model, on):
    """3) the top layer computes [CLS] alone"""
    model.cls_only = on


@PATHS.register("cast_cache")
def _cast_cache(model, on):
    """4) frozen weights cast to bf16 once under autocast"""
    old, new = (Linear, CastCacheLinear) if on else (CastCacheLinear, Linear)
    for m in model.modules():  # the same parameters: only the class changes
        if type(m) is old:
            m.__class__ = new
            m.__dict__.pop("_cast_weight", None), m.__dict__.pop("_cast_key", None)


def switch(model, path, on=True):
    """Turn one speed path of a model.Classifier on or off, in place; returns the model."""
    if path not in PATHS:
        raise ValueError(f"unknown speed path {path!r}; choose from {', '.join(PATHS)}")
    PATHS[path](model, on)
    return model


def enable(model, cls_only=True, paths=PATHS):
    """Switch the speed paths in `paths` on (cls_only=False: all but the [CLS]-only top layer)."""
    for path in paths:
        if path != "cls_only" or cls_only:
            switch(model, path)
    return model


# ---------------------------------------------------------------- 5) evaluation on the folded model
def can_fold(model, hooks):
    """Can the evaluation passes run on the model folded into plain weights (export.fold_model:
    LoRA, BitFit; the same logits to ~1e-6 without the low-rank branches, a cheaper pass: speed
    path 5)? Asked once, before training."""
    import export  # (export imports this module)
    try:
        export.fold_model(model, hooks)
        return True
    except export.ExportError:
        return False


def evaluation_model(model, hooks, fold):
    """The model the evaluation passes run this epoch: folded afresh (fold = can_fold(...)), or itself."""
    import export
    return export.fold_model(model, hooks) if fold else model
