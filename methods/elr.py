"""
Early-learning regularisation: keep the model near what it predicted before it memorised.

Reference: Liu, Niles-Weed, Razavian, Fernandez-Granda 2020, "Early-Learning Regularization
Prevents Memorization of Noisy Labels", NeurIPS, Sec. 4 (Eq. 5-6). Networks fit clean labels
first and wrong ones later (early learning, then memorisation). ELR keeps a per-sample target
t_i, a running average of the model's own (detached) predictions,
    t_i <- beta t_i + (1 - beta) p_i / sum(p_i)            (p clipped to [1e-4, 1 - 1e-4])
and adds lambda * mean_i log(1 - <p_i, t_i>) to cross-entropy: the term falls as p_i agrees
with the target, whose gradient pushes against the noisy label once the targets have learnt
the right class. The paper's CIFAR-10 settings: lambda 3, beta 0.7. A baseline that ignores
the clean-sample detector.

Usage:
    python train.py --method elr --peft lora --elr_lambda 3 --elr_beta 0.7
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

import methods
from settings import SettingError, setting
from hooks import Hooks


@dataclass
class ELRConfig:
    """Early-learning regularisation (methods/elr.py, Liu et al. 2020)"""
    elr_lambda: float = setting(3.0, "weight of the regulariser log(1 - <p, t>)")
    elr_beta: float = setting(0.7, "momentum of each sample's target t (the running average of its predictions)")

    def __post_init__(self):
        if not 0 <= self.elr_beta < 1:
            raise SettingError(f"--elr_beta must be in [0, 1), got {self.elr_beta}")
        if self.elr_lambda < 0:
            raise SettingError(f"--elr_lambda must be >= 0, got {self.elr_lambda}")


class ELRHooks(Hooks):
    """Per-sample targets t (N, K), updated at every step that sees the sample."""

    def __init__(self, num_train, num_classes, cfg):
        self.cfg = cfg
        self.target = torch.zeros(num_train, num_classes)  # t_i = 0 at the start, as the paper's code

    def extra_losses(self, out, batch):
        p = torch.softmax(out.logits.float(), dim=-1).clamp(1e-4, 1 - 1e-4)  # (B, K)
        index = batch.index.cpu()
        with torch.no_grad():
            q = p.detach().cpu()
            self.target[index] = self.cfg.elr_beta * self.target[index] + \
                (1 - self.cfg.elr_beta) * q / q.sum(1, keepdim=True)
        t = self.target[index].to(p.device)
        return {"elr": self.cfg.elr_lambda * torch.log(1 - (t * p).sum(1)).mean()}

    def loss(self, out, batch):
        extra = self.extra_losses(out, batch)
        return F.cross_entropy(out.logits.float(), batch.label) + extra["elr"], extra

    def state_dict(self):
        return {"target": self.target}

    def load_state_dict(self, state):
        self.target = state["target"]


@methods.register
class ELR(methods.Method):
    name, summary = "elr", "early-learning regularisation (Liu et al. 2020): stay near the early predictions"
    settings = ELRConfig

    def hooks(self, model, args, num_train):
        return ELRHooks(num_train, model.head.out_features, self.config(args))

    def label(self, cfg):
        return f"elr ({cfg['peft']})"
