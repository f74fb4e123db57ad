"""
The two kinds without a PEFT module, the baselines every PEFT kind is compared with:

- Full fine-tuning: every pretrained weight trains, with the head (Devlin et al. 2019, "BERT:
  Pre-training of Deep Bidirectional Transformers for Language Understanding", Sec. 3.2).
- Linear probe: only the head trains, on the fixed [CLS] features of the frozen encoder
  (Kumar et al. 2022, see Probe).

Neither adds a tensor, so fold() has nothing to do: the encoder is plain BERT already.
"""

from dataclasses import dataclass
from typing import ClassVar

from model import linear_shapes
from peft import PeftKind, head_params, register


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
        C, L = bert.hidden_size, bert.num_hidden_layers
        emb = (bert.vocab_size + bert.max_position_embeddings + bert.type_vocab_size) * C + 2 * C  # 3 tables, LayerNorm
        layer = sum(i * o + o for i, o in linear_shapes(bert).values()) + 2 * (2 * C)  # six Linears, 2 LayerNorms
        return emb + L * layer + head_params(bert, num_classes)


@register
@dataclass
class Probe(PeftKind):
    """Linear probe (peft/full.py): only the classifier head trains, on the [CLS] features of the
    frozen pretrained encoder, which stays in eval mode (no dropout) so the features are fixed -
    the baseline a practitioner tries first (Kumar et al. 2022, "Fine-Tuning can Distort
    Pretrained Features and Underperform Out-of-Distribution", compare it with full fine-tuning)."""
    name: ClassVar[str] = "probe"
    default_lr: ClassVar[float] = 1e-2

    def inject(self, model):
        model.encoder_always_eval = True

    def fold(self, layer, gate):
        pass  # the encoder is plain BERT

    def trainable_params(self, bert, num_classes):
        return head_params(bert, num_classes)
