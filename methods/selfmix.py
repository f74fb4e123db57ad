"""
SelfMix: split the training set into labelled and unlabelled parts by a loss mixture, then
train one model on both with mixup of sentence features and pseudo-labels.

Reference: Qiao, Dou, Qiu, Wang, Zhang, Gui 2022, "SelfMix: Robust Learning Against Textual
Label Noise with Self-Mixup Training", COLING, Sec. 3 (3.1 sample selection, 3.2 textual
mixup, 3.3 pseudo-labels and normalisation, 3.4 consistency regularisation); settings from its
official code (noise-learning/SelfMix: p_threshold 0.5, temperature 0.5, alpha 0.75, lambda_p
0.2, lambda_r 0.3, warm-up 2 of 6 epochs - we use --warmup_epochs).

After warm-up (plain cross-entropy), every epoch:
1. the training-set pass (evaluation mode, train.py's per-epoch pass) gives each sample's
   cross-entropy on its observed label, z-scored within its observed class; a two-component
   mixture (mixture.py) makes P(clean); P > 0.5: labelled (keeps its label), else unlabelled.
2. each step, for the batch's unlabelled rows u, an evaluation-mode pass gives targets
   q_u = sharpen(softmax(z_u), T = 0.5) (no gradient); in training mode the batch's [CLS]
   features h (labelled and unlabelled, one pass) and a second dropout view h'_u of the
   unlabelled rows are computed; targets y = one-hot labels for x, q_u for u;
   lambda ~ Beta(0.75, 0.75), lambda = max(lambda, 1 - lambda); a random permutation pi:
       h~ = lambda h + (1 - lambda) h[pi],  y~ = lambda y + (1 - lambda) y[pi]
   L = CE(head(h~), y~) + lambda_p L_p + lambda_r KL_sym(head(h_u), head(h'_u)),
   L_p = -mean(min_k log p_k) over both views of u (the official code's "pse_loss", which keeps
   every class's probability off zero) and KL_sym the symmetric KL of the two dropout views.
Departures from the official code, on purpose: its sample-selection loss is computed on the
softmax output (softmax applied twice inside cross-entropy) - ours on the logits; its hidden
size is hard-coded (768/1024) - ours is the model's; it draws labelled and unlabelled batches
from two loaders (16 unlabelled rows a step) - ours splits each batch, so both parts keep their
share of the data (about as many unlabelled rows a step at 40-50% flagged); its KL is summed over
the step's unlabelled rows, and so is ours, so lambda_r weighs it alike. With no unlabelled row
in a batch the step is mixup of the labelled rows alone.

Usage:
    python train.py --method selfmix --peft lora
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

import methods
from methods.filter_retrain import SCORES, class_normalised
from mixture import clean_probability, looks_clean, per_sample_loss
from settings import SettingError, setting
from hooks import Hooks


@dataclass
class SelfMixConfig:
    """SelfMix (methods/selfmix.py, Qiao et al. 2022)"""
    selfmix_temp: float = setting(0.5, "sharpening temperature of the unlabelled rows' targets")
    selfmix_alpha: float = setting(0.75, "mixup's Beta(alpha, alpha)")
    selfmix_lambda_p: float = setting(0.2, "weight of the pseudo-label term L_p")
    selfmix_lambda_r: float = setting(0.3, "weight of the two dropout views' symmetric KL")
    selfmix_score: str = setting("class-norm", "the mixture's input: the loss, or the loss z-scored within each "
                                               "observed class", choices=SCORES)

    def __post_init__(self):
        if not self.selfmix_temp > 0 or not self.selfmix_alpha > 0:
            raise SettingError("--selfmix_temp and --selfmix_alpha must be > 0")


def symmetric_kl(a, b):
    """(KL(p_b || p_a) + KL(p_a || p_b)) / 2, summed over rows (as the official code): logits (U, K) twice."""
    la, lb = F.log_softmax(a, dim=-1), F.log_softmax(b, dim=-1)
    return 0.5 * ((lb.exp() * (lb - la)).sum(-1) + (la.exp() * (la - lb)).sum(-1)).sum()


class SelfMixHooks(Hooks):
    """The labelled / unlabelled split (per sample, refitted every epoch) and SelfMix's step."""
    summary_keys = ("selfmix_labelled",)

    def __init__(self, model, num_train, cfg, warmup_epochs):
        self.model, self.cfg, self.warmup_epochs = model, cfg, warmup_epochs
        self.labelled = None  # (N,) bool after warm-up; None: plain cross-entropy
        self.beta = torch.distributions.Beta(torch.tensor(cfg.selfmix_alpha), torch.tensor(cfg.selfmix_alpha))

    def end_epoch(self, epoch, train_logits, observed, fit):
        if epoch + 1 >= self.warmup_epochs:
            loss = per_sample_loss(train_logits, observed)  # on the logits (the official code: on softmax)
            if self.cfg.selfmix_score == "class-norm":
                loss = class_normalised(loss, observed)
            self.labelled = torch.as_tensor(looks_clean(clean_probability(loss)[0]))

    def step_loss(self, step_model, batch, autocast):
        if self.labelled is None:
            return super().step_loss(step_model, batch, autocast)
        cfg, K = self.cfg, self.model.head.out_features
        u = ~self.labelled[batch.index.cpu()].to(batch.index.device)          # (B,) unlabelled rows
        ids, mask = batch.input_ids, batch.attention_mask
        targets = F.one_hot(batch.label, K).float()                            # (B, K)
        if u.any():
            self.model.eval()
            with torch.no_grad(), autocast():
                p = torch.softmax(step_model(ids[u], mask[u]).float(), dim=-1)
            self.model.train()
            q = p ** (1 / cfg.selfmix_temp)
            targets[u] = q / q.sum(1, keepdim=True)
        with autocast():
            h = step_model(ids, mask, with_features=True).features                # (B, C), one dropout view
            h2 = step_model(ids[u], mask[u], with_features=True).features if u.any() else None
            lam = float(self.beta.sample())
            lam = max(lam, 1 - lam)
            perm = torch.randperm(len(h), device=h.device)
            mixed = self.model.classify(lam * h + (1 - lam) * h[perm]).float()  # (B, K)
            views = (self.model.classify(h[u]).float(), self.model.classify(h2).float()) if u.any() else None
        mixed_targets = lam * targets + (1 - lam) * targets[perm]
        loss_mix = -(mixed_targets * F.log_softmax(mixed, dim=-1)).sum(-1).mean()
        extra = {}
        if views is not None:
            extra["pseudo"] = cfg.selfmix_lambda_p * -0.5 * sum(F.log_softmax(v, -1).min(-1).values.mean()
                                                                for v in views)
            extra["consistency"] = cfg.selfmix_lambda_r * symmetric_kl(*views)
        return loss_mix + sum(extra.values()), extra

    def epoch_metrics(self, observed, true):
        if self.labelled is None:
            return {}
        lab, clean = self.labelled.numpy(), observed == true
        return {"selfmix_labelled": float(lab.mean()),
                "selfmix_labelled_precision": float(clean[lab].mean()) if lab.any() else None,
                "selfmix_labelled_recall": float(lab[clean].mean()) if clean.any() else None}

    def state_dict(self):
        return {"labelled": self.labelled}

    def load_state_dict(self, state):
        self.labelled = state["labelled"]


@methods.register
class SelfMix(methods.Method):
    name, summary = "selfmix", "SelfMix (Qiao et al. 2022): GMM split, mixup of [CLS] features, pseudo-labels"
    settings = SelfMixConfig

    def hooks(self, model, args, num_train):
        return SelfMixHooks(model, num_train, self.config(args), args.warmup_epochs)

    def label(self, cfg):
        return f"selfmix ({cfg['peft']})"
