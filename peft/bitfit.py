"""
BitFit (Ben Zaken et al. 2022, "BitFit: Simple Parameter-efficient Fine-tuning for
Transformer-based Masked Language-models", Sec. 3): train only the bias terms of the encoder
(and the head). Here each trained bias is a zero-initialised delta beside the frozen one, so
the kind starts as the identity and the delta can be gated per sample like every other kind.

BITFIT_SITES: the wrapped sub-modules of model.Layer - its six Linears (a bias of C entries
each, but I for ffn_in) and its two LayerNorms (the shift beta, C entries, is their bias term).
"""

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from model import linear_shapes
from peft import PeftKind, head_params, per_sample, register

BITFIT_SITES = ("query", "key", "value", "attn_out", "attn_norm", "ffn_in", "ffn_out", "ffn_norm")


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
        self.bitfit_bias = nn.Parameter(torch.zeros(n, dtype=base.weight.dtype, device=base.weight.device))  # (n,)

    def forward(self, x, gate=None):
        y = self.base(x, gate)  # (B, T, n)
        return y + (self.bitfit_bias if gate is None else per_sample(gate, y) * self.bitfit_bias)


@register
@dataclass
class BitFit(PeftKind):
    """BitFit (peft/bitfit.py, Ben Zaken et al. 2022)"""
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
