"""
Match-Tuning: each [CLS] representation is mixed with the batch's before the classifier.

Reference: Tong et al. 2022, "Robust Fine-tuning via Perturbation and Interpolation from
In-batch Instances" (Match-Tuning), IJCAI, Sec. 3.

As published (the official code, tongshoujie/MATCH-TUNING): a freshly initialised dense layer
before the in-batch matching, the whole model fine-tuned. `--match_init identity` (the dense
layer starting as the identity) and `--match_mix none` (the same layer, no matching) are the
ablation and the control.

Usage:
    replace_head_with_match(model, MatchConfig(match_tau=3.0))   # model.head becomes a MatchHead
    hooks = MatchHooks(model)                 # no extra loss; logs where the mixing mass goes
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

import methods
from settings import SettingError, setting
from hooks import Hooks, fp32_region


BERT_INIT_STD = 0.02  # the standard deviation BERT initialises a new linear layer's weights with (Devlin et al.)


@dataclass
class MatchConfig:
    """Match-Tuning (match_tuning.py, Tong et al. 2022)"""
    match_tau: float = setting(3.0, "temperature of the in-batch similarity z z^T / tau (unpublished; choose it "
                                    "on noisy validation)")
    match_eval: str = setting("plain", "evaluation: plain z (batch-independent) or the in-batch mix",
                              choices=("plain", "mix"))
    match_lr: float = setting(None, "peak learning rate of the new dense layer match_dense (default: --lr)")
    match_init: str = setting("normal", "match_dense's initial weights: normal = N(0, 0.02), zero bias, as BERT "
                              "initialises a new linear layer (the official code's fresh dense layer); identity = "
                              "the pretrained [CLS] states unchanged at step 0 (an ablation)",
                              choices=("normal", "identity"))
    match_mix: str = setting("batch", "batch: mix each representation with the batch's (Match-Tuning); none: the "
                             "same dense layer without mixing (the control)", choices=("batch", "none"))

    def __post_init__(self):
        if not self.match_tau > 0:
            raise SettingError(f"--match_tau must be > 0, got {self.match_tau}")


class MatchHead(nn.Module):
    """Tong et al. 2022, Sec. 3: each [CLS] representation is replaced by a softmax-weighted
    mix of the batch's representations before the classifier.
        z = match_dense(h) (B, C);  S = z z^T / tau (B, B);  M = row-softmax(S);  z~ = M z
    S uses the raw dot product and includes the example itself. Early in training the
    mix perturbs each example with others; later same-label examples dominate (Sec. 3.2).
    tau -> 0 gives z~ = z when each example is its own nearest neighbour in dot product
    (e.g. equal norms, as after a LayerNorm); a much longer z_j can still attract row i.
    Evaluation uses the plain z, so a prediction never depends on the rest of the batch;
    match_eval "mix" keeps the mix. match_dense starts as a new BERT linear layer
    (N(0, 0.02), zero bias): z is small and nearly isotropic at step 0, so each row's mix
    spreads over the batch - the perturbation of Sec. 3.1. With match_init "identity" the
    first similarities are those of the pretrained [CLS] states (long, similar vectors: the
    mix stays mostly on the example itself) and the plain path equals the old head.
    match_mix "none" keeps the layer and skips the mix: the control."""

    def __init__(self, hidden, num_classes, cfg, dropout=0.1):
        super().__init__()
        if not cfg.match_tau > 0:
            raise SettingError(f"--match_tau must be > 0, got {cfg.match_tau}")
        self.tau, self.eval_mix, self.mixes = cfg.match_tau, cfg.match_eval == "mix", cfg.match_mix == "batch"
        self.match_dense = nn.Linear(hidden, hidden)
        with torch.no_grad():
            if cfg.match_init == "identity":
                self.match_dense.weight.copy_(torch.eye(hidden))
            else:
                self.match_dense.weight.normal_(0.0, BERT_INIT_STD)
            self.match_dense.bias.zero_()
        self.dropout = nn.Dropout(dropout)  # on z~, where BERT puts it: the similarities see no dropout noise
        self.classifier = nn.Linear(hidden, num_classes)
        self.last_mix = None  # (B, B) M of the last mixed forward, detached, for MatchHooks

    @property
    def out_features(self):  # checkpoint.save_peft / load_peft read model.head.out_features
        return self.classifier.out_features

    @torch.no_grad()
    def as_linear(self):
        """The evaluation path classifier(match_dense(h)) as one nn.Linear (export.py); None when
        evaluation mixes the batch (eval_mix), which no per-example classifier can express."""
        if self.eval_mix and self.mixes:
            return None
        d, c = self.match_dense, self.classifier
        out = nn.Linear(d.in_features, c.out_features).to(c.weight.device)
        out.weight.copy_(c.weight @ d.weight)
        out.bias.copy_(c.weight @ d.bias + c.bias)
        return out

    def mix(self, z):
        """z (B, C) -> (z~ (B, C), M (B, B)); similarities and softmax in fp32."""
        with fp32_region(z):
            zf = z.float()
            M = torch.softmax(zf @ zf.T / self.tau, dim=-1)  # (B, B), rows sum to 1
            return (M @ zf).to(z.dtype), M

    def forward(self, h):
        z = self.match_dense(h)  # (B, C)
        self.last_mix = None
        if self.mixes and (self.training or self.eval_mix):
            z, M = self.mix(z)
            self.last_mix = M.detach()
        return self.classifier(self.dropout(z))  # (B, K)


def replace_head_with_match(model, cfg):
    """Swap model.head for a MatchHead (cfg: MatchConfig) whose classifier starts as the old head.
    The Classifier's dropout moves into the head (after the mix), so h is not dropped twice."""
    old = model.head
    head = MatchHead(old.in_features, old.out_features, cfg, model.head_dropout.p).train(model.training)
    with torch.no_grad():
        head.classifier.weight.copy_(old.weight)
        head.classifier.bias.copy_(old.bias)
    model.head, model.head_dropout = head.to(old.weight.device, old.weight.dtype), nn.Identity()
    return model


class MatchHooks(Hooks):
    """No extra loss; logs where each example's mixing mass goes, per epoch: to itself
    (match_diag), to other examples with the same / a different observed label
    (match_same_label / match_diff_label), and the same split by true label (*_true).
    Each step keeps its batch's (index, M); the labels are looked up in epoch_metrics."""

    def __init__(self, model):
        if not isinstance(model.head, MatchHead):
            raise SettingError("MatchHooks needs replace_head_with_match(model, cfg) first")
        self.head, self.mixes, self.last = model.head, [], []

    def extra_losses(self, out, batch):
        if self.head.last_mix is not None:
            self.mixes.append((batch.index.cpu(), self.head.last_mix.cpu()))  # (B,), (B, B) detached
        return {}

    def end_epoch(self, epoch, train_logits, observed, fit):
        self.last, self.mixes = self.mixes, []

    def epoch_metrics(self, observed, true):
        sums, rows = dict.fromkeys(("match_diag", "match_same_label", "match_diff_label", "match_same_true",
                                    "match_diff_true"), 0.0), 0
        for index, M in self.last:
            off = 1 - torch.eye(len(M))  # (B, B) off-diagonal positions
            sums["match_diag"] += float(M.diagonal().sum())
            for suffix, labels in (("label", observed), ("true", true)):
                y = torch.as_tensor(np.asarray(labels)[index.numpy()])
                same = (y[:, None] == y[None, :]).to(M.dtype) * off
                sums[f"match_same_{suffix}"] += float((M * same).sum())
                sums[f"match_diff_{suffix}"] += float((M * (off - same)).sum())
            rows += len(M)
        return {k: (v / rows if rows else None) for k, v in sums.items()}


# ----------------------------------------------------------------------------
# the registry entry (methods/__init__.py): --method match

@methods.register
class MatchMethod(methods.Method):
    name, summary = "match", "Match-Tuning: each [CLS] state mixed with the batch's before the head"
    settings = MatchConfig

    def can_sit_on(self, kind_class):
        return kind_class.standalone  # any PEFT kind, or --peft none (full fine-tuning)

    def build(self, model, args):
        replace_head_with_match(model, self.config(args))

    def hooks(self, model, args, num_train):
        return MatchHooks(model)

    def lr_overrides(self, args):
        return {} if args.match_lr is None else {"head.match_dense.": args.match_lr}

    def extra_params(self, bert):  # match_dense, hidden -> hidden
        return bert.hidden_size ** 2 + bert.hidden_size

    def label(self, cfg):
        """'match (lora, tau 3)'; a run made before match_init existed had the identity init."""
        kind = "full" if cfg["peft"] == "none" else cfg["peft"]
        extra = [f"tau {cfg['match_tau']:g}"] if cfg.get("match_mix", "batch") == "batch" else ["no mixing"]
        extra += ["identity init"] if cfg.get("match_init", "identity") == "identity" else []
        extra += ["mixed evaluation"] if cfg.get("match_eval") == "mix" else []
        return f"match ({kind}, {', '.join(extra)})"
