"""
Speed paths, fenced off from the textbook model: each computes what the plain path in
model.py computes (tests/test_speedups.py checks every one against it), only faster.
`enable(model)` switches them all on, once, after the PEFT modules are injected; train.py
calls it unless --no_speedups. bench.py measures what each one pays (`--speedups`).

1) Cheaper dropout on the CPU. PyTorch's CPU generator is serial, one draw per element,
   so dropout was ~18% of a LoRA training step (torch.profiler). One 32-bit draw here
   yields two 16-bit uniforms: an element is dropped when its uniform falls in the lowest
   round(p * 65536) of the 65536 values, so p is rounded to a multiple of 1/65536
   (0.1 -> 0.100006), and kept elements are scaled by 1 / (1 - that rounded p).
2) Attention with dropout by hand on the CPU. SDPA's CPU kernels cannot drop attention
   weights (its fallback is these lines with F.dropout), so training writes the softmax
   out to use sampler 1). Evaluation and CUDA keep SDPA.
3) The top layer computes [CLS] alone. Only the top layer's [CLS] state reaches the head,
   so that layer's query side (query, attention output, FFN) runs for one position: the
   same logits and gradients, ~1/L less work. A method that reads every top-layer token
   (LoRAMoE's balance loss) keeps the full layer (methods.Method.reads_all_tokens).

Measured and dropped in the renovation: no attention mask for a batch without padding
(within +-4% of the masked step and evaluation forward in every alternating measurement,
README "Speed").

Dropout masks differ from nn.Dropout's draws (another sampler, same distribution), so a
run with speed paths and one without are equally valid but not bit-identical.

Usage:
    speedups.enable(model)                   # after peft.inject(...)
    speedups.enable(model, cls_only=False)   # every top-layer token computed
    speedups.switch(model, "dropout", on=False)   # one path off again (tools/bench.py --paths_ab)
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import Attention

PATHS = ("dropout", "attention", "cls_only")  # what enable() switches on


def cheap_dropout(x, p):
    """Inverted dropout drawing half the random numbers F.dropout draws (path 1)."""
    n = x.numel()
    bits = torch.empty((n + 1) // 2, dtype=torch.int32, device=x.device).random_(-2 ** 31, 2 ** 31)
    u = bits.view(torch.int16)[:n].view(x.shape)  # uniform on [-32768, 32767]
    n_drop = round(p * 65536)
    return torch.where(u >= n_drop - 32768, x * (65536 / (65536 - n_drop)), 0.0)


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


def switch(model, path, on=True):
    """Turn one speed path of a model.Classifier on or off, in place; returns the model."""
    if path not in PATHS:
        raise ValueError(f"unknown speed path {path!r}; choose from {', '.join(PATHS)}")
    if path == "cls_only":
        model.cls_only = on
        return model
    plain, fast = {"dropout": (nn.Dropout, CheapDropout), "attention": (Attention, HandAttention)}[path]
    old, new = (plain, fast) if on else (fast, plain)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is old:  # exact type: CheapDropout is an nn.Dropout too
                setattr(parent, name, new(child.p).train(child.training))
    return model


def enable(model, cls_only=True, paths=PATHS):
    """Switch the speed paths in `paths` on (cls_only=False: all but the [CLS]-only top layer)."""
    for path in paths:
        if path != "cls_only" or cls_only:
            switch(model, path)
    return model
