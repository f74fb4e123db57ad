"""
Prefix tuning (Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation",
Sec. 4): P trained key/value vectors in front of every layer's attention (Sec. 4.2), optionally
trained through an MLP reparameterisation for stability (Sec. 4.3). The pretrained weights and
the token representations are untouched; the real tokens attend to P extra positions.

Shapes: L layers, width C, prefix length P; each layer gets a key (P, C) and a value (P, C),
expanded over the batch by model.Encoder, which also extends the attention mask by P.
"""

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from peft import PeftError, PeftKind, check_positive_ints, head_params, register
from settings import setting


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
    """Prefix tuning (peft/prefix.py, Li & Liang 2021)"""
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
        check_positive_ints(self, "prefix_len", "prefix_mlp_hidden")

    def inject(self, model):
        if model.prefix is not None:
            raise PeftError("the model already has a prefix module")
        bc = model.encoder.config
        model.prefix = PrefixTuning(bc.num_hidden_layers, bc.hidden_size, self.prefix_len, self.prefix_mlp,
                                    self.prefix_mlp_hidden).to(model.head.weight.device)

    def trainable_params(self, bert, num_classes):  # P (L*2*C); or tokens (P, C) + the MLP's two Linears
        P, H, C = self.prefix_len, self.prefix_mlp_hidden, bert.hidden_size
        width = bert.num_hidden_layers * 2 * C
        prefix = P * C + (C * H + H) + (H * width + width) if self.prefix_mlp else P * width
        return prefix + head_params(bert, num_classes)

    def extra_keys(self):
        return self.prefix_len
