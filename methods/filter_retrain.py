"""
Filter and retrain: a warm-up model's detector flags the wrong-looking labels, then a fresh
model trains on what is kept.

The simplest way to turn a clean-sample detector into accuracy, and the baseline every
sample-selection method is measured against (Northcutt et al. 2021, "Confident Learning", Sec.
3.2: rank and prune, then train on what is left; Arazo et al. 2019 and DivideMix, Li et al.
2020, Sec. 3.1: the two-component loss mixture as the detector). Two stages in one run:

1. Detect (--warmup_epochs W epochs): plain training; after its last epoch each training
   sample's loss on its observed label is scored by the loss mixture (mixture.py), optionally
   z-scored within each observed class first (--far_score class-norm: classes learnt at
   different speeds otherwise look noisy as a whole, SelfMix's normalisation). With
   --far_folds 2 the detector is cross-fitted: two stage-1 models, each trained W epochs on one
   half and scoring the other, so no sample is scored by a model that fitted its label.
2. Retrain (--far_epochs, default --epochs): the weights go back to their initial values and
   train on the kept rows. Flagged rows (P(clean) <= 0.5, mixture.looks_clean) are dropped, relabelled with the
   stage-1 prediction where it is confident (p >= --far_confidence; else dropped), or kept as
   unlabelled: trained towards the stage-1 model's sharpened prediction (temperature 0.5)
   with weight --far_unlabelled_weight.

The run has W * folds + far_epochs epochs (summary config "epochs"); every epoch is evaluated,
and the stage-1 epochs count for validation selection like the others.

Usage:
    python train.py --method far --peft lora --far_rows unlabelled
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

import methods
from calibration import softmax
from mixture import auroc, clean_probability, looks_clean, per_sample_loss
from settings import SettingError, setting
from hooks import Hooks

ROWS = ("drop", "relabel", "unlabelled")
SCORES = ("loss", "class-norm")
UNLABELLED = -1  # the label epoch_data gives an unlabelled row


@dataclass
class FarConfig:
    """Filter and retrain (methods/filter_retrain.py)"""
    far_rows: str = setting("unlabelled", "what happens to a flagged row in the retrain stage (default: the "
                                          "variant chosen on noisy validation, RESULTS.md)", choices=ROWS)
    far_score: str = setting("class-norm", "the detector's input: the loss, or the loss z-scored within each "
                                           "observed class", choices=SCORES)
    far_folds: int = setting(1, "1: the stage-1 model scores its own training rows; 2: cross-fitted, two "
                                "stage-1 models on two halves, each scoring the other half", choices=(1, 2))
    far_epochs: int = setting(None, "epochs of the retrain stage (default: --epochs); the run has --warmup_epochs x "
                                    "--far_folds detecting epochs in front, and its --epochs becomes the sum")
    far_confidence: float = setting(0.5, "--far_rows relabel: the stage-1 probability a new label needs")
    far_unlabelled_weight: float = setting(1.0, "--far_rows unlabelled: weight of the soft-target loss")

    def __post_init__(self):
        if self.far_epochs is not None and self.far_epochs < 1:
            raise SettingError(f"--far_epochs must be >= 1, got {self.far_epochs}")


def class_normalised(loss, observed):
    """Each loss z-scored among the samples with the same observed label (N,) -> (N,)."""
    out = np.asarray(loss, dtype=np.float64).copy()
    for c in np.unique(observed):
        rows = observed == c
        out[rows] = (out[rows] - out[rows].mean()) / (out[rows].std() + 1e-8)
    return out


def sharpen(probs, temperature):
    """p^(1/T), renormalised: (N, K) -> (N, K)."""
    p = probs ** (1 / temperature)
    return p / p.sum(1, keepdims=True)


class FarHooks(Hooks):
    """The stage plan (stage_starts), the detector's flags after stage 1, and the retrain data."""
    summary_keys = ("far_flagged", "far_kept", "far_score_auroc", "far_flag_precision", "far_flag_recall",
                    "far_relabelled", "far_relabel_acc")

    def __init__(self, num_train, cfg, detect_epochs, seed):
        self.cfg, self.W, self.n = cfg, detect_epochs, num_train
        rng = np.random.default_rng([seed, 7])
        self.fold = rng.permutation(num_train) % 2 if cfg.far_folds == 2 else np.zeros(num_train, dtype=int)
        self.oos_logits = None  # (N, K) each row's logits from the model that did not train on it (or its own)
        self.labels = None      # (N,) retrain labels (UNLABELLED for unlabelled rows), None before stage 2
        self.keep = None        # (N,) bool, retrain rows
        self.soft = None        # (N, K) sharpened stage-1 predictions (the unlabelled rows' targets)

    @property
    def retrain_start(self):
        return self.W * self.cfg.far_folds

    def stage_starts(self):
        return tuple(self.W * f for f in range(1, self.cfg.far_folds)) + (self.retrain_start,)

    def epoch_data(self, epoch, observed):
        if epoch >= self.retrain_start:
            return self.labels, self.keep
        if self.cfg.far_folds == 2:  # stage 1a trains on fold 0 (and scores fold 1), stage 1b the reverse
            return observed, self.fold == epoch // self.W
        return observed, None

    def end_epoch(self, epoch, train_logits, observed, fit):
        if epoch >= self.retrain_start or (epoch + 1) % self.W:
            return
        f = epoch // self.W  # the stage-1 model that just finished
        if self.oos_logits is None:
            self.oos_logits = np.zeros_like(train_logits)
        scored = self.fold != f if self.cfg.far_folds == 2 else np.ones(self.n, dtype=bool)
        self.oos_logits[scored] = train_logits[scored]
        if epoch + 1 == self.retrain_start:
            self.plan_retrain(np.asarray(observed))

    def plan_retrain(self, observed):
        """Flags from the out-of-sample losses, then the retrain rows and labels."""
        loss = per_sample_loss(self.oos_logits, observed)
        if self.cfg.far_score == "class-norm":
            loss = class_normalised(loss, observed)
        if self.cfg.far_folds == 2:  # two models: put their scores on one scale
            for f in (0, 1):
                rows = self.fold == f
                loss[rows] = (loss[rows] - loss[rows].mean()) / (loss[rows].std() + 1e-8)
        self.score = loss  # (N,) the detector's input: higher = more suspect
        self.flagged = ~looks_clean(clean_probability(loss)[0])
        probs = softmax(self.oos_logits)
        self.labels, self.keep = observed.copy(), ~self.flagged
        self.soft = torch.as_tensor(sharpen(probs, 0.5), dtype=torch.float32)
        if self.cfg.far_rows == "relabel":
            sure = self.flagged & (probs.max(1) >= self.cfg.far_confidence)
            self.labels[sure], self.keep = probs.argmax(1)[sure], self.keep | sure
        elif self.cfg.far_rows == "unlabelled":
            self.labels[self.flagged], self.keep = UNLABELLED, np.ones(self.n, dtype=bool)

    def loss(self, out, batch):
        unlabelled = batch.label == UNLABELLED
        if not unlabelled.any():
            return F.cross_entropy(out.logits.float(), batch.label), {}
        logits = out.logits.float()
        labelled = ~unlabelled
        ce = F.cross_entropy(logits[labelled], batch.label[labelled], reduction="sum") if labelled.any() else 0.0
        target = self.soft[batch.index[unlabelled].cpu()].to(logits.device)                   # (U, K)
        soft = -(target * F.log_softmax(logits[unlabelled], dim=-1)).sum()
        soft = self.cfg.far_unlabelled_weight * soft / len(logits)
        return ce / len(logits) + soft, {"unlabelled": soft.detach()}

    def epoch_metrics(self, observed, true):
        if self.keep is None:
            return {}
        noisy = observed != true
        m = {"far_flagged": float(self.flagged.mean()), "far_kept": float(self.keep.mean()),
             "far_score_auroc": auroc(-self.score, ~noisy),  # how well the (out-of-sample) score ranks them
             "far_flag_precision": float(noisy[self.flagged].mean()) if self.flagged.any() else None,
             "far_flag_recall": float(self.flagged[noisy].mean()) if noisy.any() else None}
        changed = self.keep & (self.labels != observed) & (self.labels != UNLABELLED)
        m["far_relabelled"] = float(changed.mean())
        m["far_relabel_acc"] = float((self.labels[changed] == true[changed]).mean()) if changed.any() else None
        return m

    def state_dict(self):
        t = lambda a: None if a is None else torch.as_tensor(a)
        return {"oos_logits": t(self.oos_logits), "labels": t(self.labels), "keep": t(self.keep),
                "flagged": t(getattr(self, "flagged", None)), "score": t(getattr(self, "score", None)),
                "soft": self.soft}

    def load_state_dict(self, state):
        n = lambda a: None if a is None else a.numpy()
        self.oos_logits, self.labels, self.keep = n(state["oos_logits"]), n(state["labels"]), n(state["keep"])
        self.flagged, self.score, self.soft = n(state["flagged"]), n(state["score"]), state["soft"]


@methods.register
class FilterRetrain(methods.Method):
    name, summary = "far", "filter and retrain: a warm-up detector's flags, then a fresh model on the kept rows"
    settings = FarConfig

    def finalize(self, args):
        if args.far_epochs is None:
            args.far_epochs = args.epochs
        args.epochs = args.warmup_epochs * args.far_folds + args.far_epochs  # the whole run, both stages
        if args.warmup_epochs < 1:
            raise SettingError("--method far needs --warmup_epochs >= 1 (the detecting stage)")

    def hooks(self, model, args, num_train):
        return FarHooks(num_train, self.config(args), args.warmup_epochs, args.seed)

    def label(self, cfg):
        extra = "" if cfg.get("far_folds", 1) == 1 else ", cross-fitted"
        return f"far ({cfg['peft']}, {cfg['far_rows']}, {cfg['far_score']}{extra})"
