"""
Small-loss selection: each batch trains on its samples with the smallest losses.

Reference: Han et al. 2018, "Co-teaching: Robust Training of Deep Neural Networks with
Extremely Noisy Labels", NeurIPS, Sec. 3 (Algorithm 1, step 4): keep the R(T) share of each
mini-batch with the smallest loss, R(T) = 1 - min(T tau / T_k, tau), where tau is the noise
rate. Here with one network (Co-teaching's criterion without its second network's
cross-update), tau estimated rather than given: after each epoch the loss-mixture detector's
mean P(noisy) over the training set (mixture.py), and the ramp T_k = --warmup_epochs. A
baseline that uses the detector only for how many to drop, never for which.

Usage:
    python train.py --method smallloss --peft lora
"""

from dataclasses import dataclass

import torch.nn.functional as F

import methods
from settings import SettingError, setting
from hooks import Hooks


@dataclass
class SmallLossConfig:
    """Small-loss selection (methods/small_loss.py, Han et al. 2018)"""
    small_max_rate: float = setting(0.8, "the most of a batch the estimated noise rate may drop")

    def __post_init__(self):
        if not 0 <= self.small_max_rate < 1:
            raise SettingError(f"--small_max_rate must be in [0, 1), got {self.small_max_rate}")


class SmallLossHooks(Hooks):
    """Drops the forget_rate share of each batch with the largest loss (none in the first epoch)."""
    summary_keys = ("small_forget_rate",)

    def __init__(self, cfg, warmup_epochs):
        self.cfg, self.ramp = cfg, max(1, warmup_epochs)
        self.noise_rate, self.forget_rate = 0.0, 0.0  # tau-hat after the last epoch; R(T)'s complement now

    def loss(self, out, batch):
        per_sample = F.cross_entropy(out.logits.float(), batch.label, reduction="none")  # (B,)
        keep = max(1, round((1 - self.forget_rate) * len(per_sample)))
        return per_sample.sort().values[:keep].mean(), {}

    def end_epoch(self, epoch, train_logits, observed, fit):
        """tau-hat: the detector's mean P(noisy); the next epoch forgets min((epoch + 1) / T_k, 1) of it."""
        self.noise_rate = min(float(1 - fit.clean_prob.mean()), self.cfg.small_max_rate)
        self.forget_rate = self.noise_rate * min((epoch + 1) / self.ramp, 1.0)

    def epoch_metrics(self, observed, true):
        return {"small_forget_rate": self.forget_rate, "small_noise_rate": self.noise_rate}

    def state_dict(self):
        return {"noise_rate": self.noise_rate, "forget_rate": self.forget_rate}

    def load_state_dict(self, state):
        self.noise_rate, self.forget_rate = float(state["noise_rate"]), float(state["forget_rate"])


@methods.register
class SmallLoss(methods.Method):
    name, summary = "smallloss", "small-loss selection (Co-teaching's criterion, one network)"
    settings = SmallLossConfig

    def hooks(self, model, args, num_train):
        return SmallLossHooks(self.config(args), args.warmup_epochs)

    def label(self, cfg):
        return f"smallloss ({cfg['peft']})"
