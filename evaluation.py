"""
Passes over a split without gradients - logits in example order (gathered over ranks under
torchrun), the pretrained encoder's sentence embeddings (the features of instance-dependent
noise) - and the per-epoch metrics, the one place that sees the true training labels.

Memorisation follows Arpit et al. 2017 / the CleaR paper (Kim et al. 2024, Sec. 3): for
each truly noisy training sample, is the prediction the noisy label (memorised), the true
label (corrected) or something else?
"""

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

import batching
import dist
from calibration import calibration_metrics
from mixture import detector_metrics
from model import mean_pool


@dataclass
class Evaluator:
    """How evaluation passes run: batch size, device, autocast, the method's evaluation gates
    (hooks.eval_gates), padding (None: to the batch's longest), and this rank of `world`."""
    batch_size: int
    device: torch.device
    autocast: object = nullcontext
    hooks: object = None  # a hooks.Hooks; None: no gates
    pad_to: int | None = None
    rank: int = 0
    world: int = 1

    @torch.no_grad()
    def logits(self, model, token_ids):
        """Logits (N, K) as a float32 numpy array, in example order; model in eval mode. Under torchrun
        each rank predicts every world-th batch and the rows are gathered (dist.py)."""
        model.eval()
        generator = torch.Generator().manual_seed(self.rank)  # evaluation gates repeat exactly
        out, filled = None, np.zeros(len(token_ids), dtype=bool)
        by_length = np.argsort([len(t) for t in token_ids], kind="stable")[self.rank::self.world]  # this rank's
        for start in range(0, len(by_length), self.batch_size):
            idx = by_length[start:start + self.batch_size]
            filled[idx] = True
            ids, mask = batching.collate(token_ids, idx, pad_to=self.pad_to)
            gates = None if self.hooks is None else self.hooks.eval_gates(len(idx), self.device, generator)
            with self.autocast():
                logits = model(ids.to(self.device), mask.to(self.device), gates=gates).float().cpu().numpy()
            if out is None:
                out = np.zeros((len(token_ids), logits.shape[1]), dtype=np.float32)
            out[idx] = logits
        return dist.gather_rows(out, filled, self.device) if self.world > 1 else out  # world 1: this rank alone


@dataclass
class EpochPasses:
    """One epoch's evaluation passes: logits of the test split and of the training rows, and the
    predicted labels of the noisy validation rows (None without a validation split)."""
    test_logits: np.ndarray   # (N_test, K)
    train_logits: np.ndarray  # (N_train, K)
    val_pred: np.ndarray | None = None  # (N_val,)


def run_passes(evaluator, model, split):
    """The passes an epoch needs (EpochPasses) - one over each split, serving every metric."""
    test, train = evaluator.logits(model, split.test_ids), evaluator.logits(model, split.train.ids)
    return EpochPasses(test, train, evaluator.logits(model, split.val.ids).argmax(1) if len(split.val.ids) else None)


def epoch_metrics(passes, split, test_labels, hooks, fit):
    """Test accuracy, NLL and calibration error (calibration.py); accuracy on the noisy validation split
    against its observed labels (val_acc, the figure a user can select with) and against its true ones;
    memorisation on the training set; the clean-sample detector's separation (fit: this epoch's
    mixture.DetectorFit) and the method's own metrics (hooks.epoch_metrics): everything scored against
    true labels. split: noisy_split.NoisySplit."""
    observed, true, val = split.train.observed, split.train.true, split.val
    has_val = passes.val_pred is not None
    return {"test_acc": float((passes.test_logits.argmax(1) == test_labels).mean()),
            **calibration_metrics(passes.test_logits, test_labels),
            "val_acc": float((passes.val_pred == val.observed).mean()) if has_val else None,
            "val_true_acc": float((passes.val_pred == val.true).mean()) if has_val else None,
            **memorisation(passes.train_logits.argmax(1), observed, true), **detector_metrics(fit, observed, true),
            **hooks.epoch_metrics(observed, true)}


def memorisation(pred, observed, true):
    """Training-set metrics: accuracy on truly clean samples; memorised/corrected/other on noisy ones."""
    clean, noisy = observed == true, observed != true
    m = {"train_clean_acc": float((pred[clean] == true[clean]).mean()) if clean.any() else None}
    if noisy.any():
        m["noisy_memorized"] = float((pred[noisy] == observed[noisy]).mean())
        m["noisy_corrected"] = float((pred[noisy] == true[noisy]).mean())
        m["noisy_other"] = 1.0 - m["noisy_memorized"] - m["noisy_corrected"]
    else:
        m["noisy_memorized"] = m["noisy_corrected"] = m["noisy_other"] = None
    return m


@torch.no_grad()
def sentence_embeddings(encoder, token_ids, batch_size, device):
    """Mean-pooled pretrained embeddings (N, C), the features of instance-dependent noise."""
    encoder.eval()
    out = np.zeros((len(token_ids), encoder.config.hidden_size), dtype=np.float32)
    for idx in batching.length_bucketed_batches([len(t) for t in token_ids], batch_size, seed=0, epoch=0, shuffle=False):
        ids, mask = batching.collate(token_ids, idx)
        ids, mask = ids.to(device), mask.to(device)
        out[idx] = mean_pool(encoder(ids, mask), mask).float().cpu().numpy()
    return out
