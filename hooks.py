"""
The hooks through which a training method changes plain training (`Hooks`), used by
engine.py and train.py; each method's registry entry (methods/) builds its own. Three
routing ideas for learning with noisy labels implement them, one file each:
- clear.py: CleaR routes *samples* to PEFT modules - each sample passes through them only
  as often as it looks clean (Kim, Kim, Lee 2024);
- loramoe.py: LoRAMoE routes *tokens* to LoRA experts, with a balancing constraint that can
  make two expert groups serve two kinds of samples - here suspected clean vs suspected
  noisy (Dou et al. 2024);
- match_tuning.py: Match-Tuning routes *instances* to each other - each representation is
  mixed with the batch's before the classifier (Tong et al. 2022).
The noisy-label methods of methods/ use the same hooks: a loss on the model outputs (gce.py,
elr.py, small_loss.py), a training step of their own (selfmix.py: an evaluation-mode pass,
two dropout views, mixup of [CLS] features), stages and per-epoch training data
(filter_retrain.py: a warm-up detector, then a fresh model on the kept rows).

Usage (train.py makes the hooks, engine.train_step calls them):
    hooks = methods.get(args.method).hooks(model, args, num_train)   # e.g. clear.ClearHooks
    loss, extra = hooks.step_loss(model, batch, autocast)            # what one optimizer step minimises
    # which by default is:
    out = model(batch.input_ids, batch.attention_mask, gates=hooks.gates(batch), with_features=True)
    loss, extra = hooks.loss(out, batch)   # CE on out.logits + extra terms (returned, not hidden)
"""

from typing import ClassVar

import torch
import torch.nn.functional as F


class Hooks:
    """The hooks of a training method; this base class is plain training.

        gates(batch)                    -> (B, L) per-sample, per-layer PEFT gates, or None (all on)
        eval_gates(B, device, generator) -> the same for evaluation passes
        step_loss(step_model, batch, autocast) -> (loss, extra_losses) of one optimizer step; step_model is the
                                           model (DDP-wrapped under torchrun). Override for several
                                           forwards (two dropout views, an evaluation-mode pass, mixup)
        loss(out, batch)                -> (loss, extra_losses): cross-entropy of out.logits on the observed
                                           label plus the extras; out: model.Outputs (logits (B, K) and the
                                           [CLS] features (B, C)); override to select or reweight samples
        extra_losses(out, batch)        -> {name: scalar tensor}, added to the loss, logged as train_<name>
        stage_starts()                  -> epochs at which a fresh model starts: the run (engine.Stages) resets
                                           the trainable weights, the optimizer and its schedule there
        epoch_data(epoch, observed)     -> (labels (N,), keep (N,) bool or None): the labels this epoch trains
                                           on (-1: unlabelled, for a method whose loss handles it) and
                                           the rows it trains on (None: all)
        end_epoch(epoch, train_logits, observed, fit) -> refit per-sample state after the training-set
                                           pass; fit: that epoch's mixture.DetectorFit (clean_prob w)
        epoch_metrics(observed, true)   -> {name: value}: the one hook that sees the true labels
        read_truth(observed, true)      -> called once before training, only for a configuration that is an
                                           oracle by construction (Method.reads_truth names it)

    A batch (batching.Batch) holds input_ids, attention_mask, index and the observed label: no
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

    def step_loss(self, step_model, batch, autocast):
        with autocast():
            out = step_model(batch.input_ids, batch.attention_mask, gates=self.gates(batch), with_features=True)
        return self.loss(out, batch)

    def extra_losses(self, out, batch):
        return {}

    def loss(self, out, batch):
        extra = self.extra_losses(out, batch)
        return F.cross_entropy(out.logits.float(), batch.label) + sum(extra.values()), extra

    def stage_starts(self):
        return ()

    def epoch_data(self, epoch, observed):
        return observed, None

    def end_epoch(self, epoch, train_logits, observed, fit):
        pass

    def epoch_metrics(self, observed, true):
        return {}

    def read_truth(self, observed, true):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def fp32_region(t):
    """A context where autocast is off, so router/similarity softmaxes stay in fp32 (bf16 rounds the logits)."""
    return torch.autocast(t.device.type, enabled=False)
