"""
Bottleneck adapters: a small residual MLP after a sublayer of every encoder layer.

- Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP", Sec. 2.1: a bottleneck
  (down-projection d -> m, nonlinearity, up-projection m -> d) with an inner skip connection,
  two per layer - after the attention output projection and after the FFN, each before the
  layer's residual + LayerNorm - initialised near the identity.
- Pfeiffer et al. 2021, "AdapterFusion: Non-Destructive Task Composition for Transfer
  Learning", Fig. 2 (the adapter architecture it found best): the cheaper placement, one
  adapter per layer, after the FFN only.

ADAPTER_SITES names the wrapped Linears of model.Layer for each placement (--adapter_kind).
"""

from dataclasses import dataclass
from typing import ClassVar

import torch.nn as nn
import torch.nn.functional as F

from peft import PeftError, PeftKind, check_positive_ints, head_params, per_sample, register
from settings import setting

ADAPTER_SITES = {"houlsby": ("attn_out", "ffn_out"), "pfeiffer": ("ffn_out",)}


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
        return y + (h if gate is None else h * per_sample(gate, h))


@register
@dataclass
class Adapter(PeftKind):
    """Bottleneck adapters (peft/adapter.py, Houlsby et al. 2019; Pfeiffer et al. 2021)"""
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
        check_positive_ints(self, "adapter_size")
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
