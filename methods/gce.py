"""
Generalised cross-entropy: a loss that gives wrong labels less pull than cross-entropy does.

Reference: Zhang & Sabuncu 2018, "Generalized Cross Entropy Loss for Training Deep Neural
Networks with Noisy Labels", NeurIPS, Sec. 3 (Eq. 6): L_q(p, y) = (1 - p_y^q) / q. q -> 0
gives cross-entropy, q = 1 the mean absolute error (robust but slow to fit); its gradient is
p_y^q times cross-entropy's, so confidently contradicted samples (small p_y: likely wrong
labels) pull less. The paper's default q = 0.7. A baseline that ignores the clean-sample
detector (it uses no per-sample state): the table shows what the detector adds.

Usage:
    python train.py --method gce --peft lora --gce_q 0.7
"""

from dataclasses import dataclass

import torch

import methods
from settings import SettingError, setting
from hooks import Hooks


@dataclass
class GCEConfig:
    """Generalised cross-entropy (methods/gce.py, Zhang & Sabuncu 2018)"""
    gce_q: float = setting(0.7, "q of the loss (1 - p_y^q) / q: 0 = cross-entropy, 1 = mean absolute error")

    def __post_init__(self):
        if not 0 < self.gce_q <= 1:
            raise SettingError(f"--gce_q must be in (0, 1], got {self.gce_q}")


def gce_loss(logits, labels, q):
    """Mean of (1 - p_y^q) / q over the batch: logits (B, K), labels (B,), computed in fp32."""
    p_y = torch.softmax(logits.float(), dim=-1).gather(1, labels[:, None]).squeeze(1)  # (B,)
    return ((1 - p_y.clamp_min(1e-7) ** q) / q).mean()


class GCEHooks(Hooks):
    """The loss hook alone: GCE in place of cross-entropy."""

    def __init__(self, q):
        self.q = q

    def loss(self, out, batch):
        return gce_loss(out.logits, batch.label, self.q), {}


@methods.register
class GCE(methods.Method):
    name, summary = "gce", "generalised cross-entropy (Zhang & Sabuncu 2018): wrong labels pull less"
    settings = GCEConfig

    def hooks(self, model, args, num_train):
        return GCEHooks(args.gce_q)

    def label(self, cfg):
        return f"gce ({cfg['peft']})"
