"""
The hooks through which a training method changes plain training (`Routing`), used by
engine.py; methods.py says which method builds which router. Three routing ideas for
learning with noisy labels implement them, one file each:
- clear.py: CleaR routes *samples* to PEFT modules - each sample passes through them only
  as often as it looks clean (Kim, Kim, Lee 2024);
- loramoe.py: LoRAMoE routes *tokens* to LoRA experts, with a balancing constraint that can
  make two expert groups serve two kinds of samples - here suspected clean vs suspected
  noisy (Dou et al. 2024);
- match_tuning.py: Match-Tuning routes *instances* to each other - each representation is
  mixed with the batch's before the classifier (Tong et al. 2022).

Usage (train.build_hooks makes the router, engine.py's step calls it):
    router = methods.get(args.method).hooks(model, args, num_train)   # e.g. clear.ClearRouting
    logits = model(batch.input_ids, batch.attention_mask, gates=router.gates(batch))
    loss, extra = router.loss(logits, batch)   # CE on the observed label + extra (returned, not hidden)
"""

from typing import ClassVar

import torch
import torch.nn.functional as F


class RoutingError(ValueError):
    """An impossible routing setting (base rate, temperature, expert count, ...)."""


class Routing:
    """The hooks of a training method; this base class is plain training.

        gates(batch)                    -> (B, L) per-sample, per-layer PEFT gates, or None (all on)
        eval_gates(B, device, generator) -> the same for evaluation passes
        extra_losses(logits, batch)     -> {name: scalar tensor}, added to the loss, logged as train_<name>
        loss(logits, batch)             -> (loss, extra_losses): cross-entropy on the observed label
                                           plus the extras; override to select or reweight samples
        end_epoch(epoch, train_logits, observed, fit) -> refit per-sample state after the training-set
                                           pass; fit: that epoch's mixture.DetectorFit (clean_prob w)
        epoch_metrics(observed, true)   -> {name: value}: the one hook that sees the true labels

    A batch (data.Batch) holds input_ids, attention_mask, index and the observed label: no
    per-batch hook can see a true label, only the per-epoch metrics do."""

    summary_keys: ClassVar[tuple] = ()  # last-epoch metrics repeated in summary.json

    def gates(self, batch):
        return None

    def eval_gates(self, batch_size, device, generator):
        return None

    def constant_eval_gate(self):
        """The gate every evaluation forward applies to every layer's PEFT branch, if it is one
        constant (1.0: no gating), else None (sampled gates): export.fold_model scales by it."""
        return 1.0

    def extra_losses(self, logits, batch):
        return {}

    def loss(self, logits, batch):
        extra = self.extra_losses(logits, batch)
        return F.cross_entropy(logits.float(), batch.label) + sum(extra.values()), extra

    def end_epoch(self, epoch, train_logits, observed, fit):
        pass

    def epoch_metrics(self, observed, true):
        return {}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def fp32_region(t):
    """A context where autocast is off, so router/similarity softmaxes stay in fp32 (bf16 rounds the logits)."""
    return torch.autocast(t.device.type, enabled=False)
