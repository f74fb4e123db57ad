"""
Passes over a split without gradients - logits in example order (gathered over ranks under
torchrun), the pretrained encoder's sentence embeddings (the features of instance-dependent
noise) - and the per-epoch metrics, the one place that sees the true training labels.

Memorisation follows Arpit et al. 2017 / the CleaR paper (Kim et al. 2024, Sec. 3): for
each truly noisy training sample, is the prediction the noisy label (memorised), the true
label (corrected) or something else?
"""

import numpy as np
import torch

import data
import dist
import export
from calibration import calibration_metrics
from mixture import detector_metrics
from model import mean_pool


def folds(model, hooks):
    """Can the evaluation passes run on the model folded into plain weights (export.fold_model:
    LoRA, BitFit; the same logits to ~1e-6 without the low-rank branches, a 1.2x (fp32) to 1.5x
    (bf16) cheaper pass, tools/bench.py)? Asked once, before training."""
    try:
        export.fold_model(model, hooks)
        return True
    except export.ExportError:
        return False


def evaluation_model(model, hooks, fold):
    """The model the evaluation passes run this epoch: folded afresh (fold = folds(...)), or itself."""
    return export.fold_model(model, hooks) if fold else model


@torch.no_grad()
def predict(model, token_ids, batch_size, device, autocast, hooks, pad_to=None, rank=0, world=1):
    """Logits (N, K) as a float32 numpy array, in example order; model in eval mode, gated by
    hooks.eval_gates (Hooks). Under torchrun each rank predicts every world-th batch and the rows are gathered (dist.py)."""
    model.eval()
    generator = torch.Generator().manual_seed(rank)  # evaluation gates repeat exactly
    out, filled = None, np.zeros(len(token_ids), dtype=bool)
    by_length = np.argsort([len(t) for t in token_ids], kind="stable")[rank::world]  # this rank's examples
    for start in range(0, len(by_length), batch_size):
        idx = by_length[start:start + batch_size]
        filled[idx] = True
        ids, mask = data.collate(token_ids, idx, pad_to=pad_to)
        gates = hooks.eval_gates(len(idx), device, generator)
        with autocast():
            logits = model(ids.to(device), mask.to(device), gates=gates).float().cpu().numpy()
        if out is None:
            out = np.zeros((len(token_ids), logits.shape[1]), dtype=np.float32)
        out[idx] = logits
    return dist.gather_rows(out, filled, device)


def epoch_metrics(test_logits, test_labels, train_logits, observed, true, hooks, fit,
                  val_pred=None, val_true=None, val_observed=None):
    """Test accuracy, NLL and calibration error (calibration.py); accuracy on the noisy validation split against its observed labels (val_acc,
    the figure a user can select with) and against its true ones; memorisation on the training
    set; the clean-sample detector's separation (fit: this epoch's mixture.DetectorFit) and the
    method's own metrics (hooks.epoch_metrics): everything that is scored against true labels."""
    has_val = val_pred is not None
    return {"test_acc": float((test_logits.argmax(1) == test_labels).mean()),
            **calibration_metrics(test_logits, test_labels),
            "val_acc": float((val_pred == val_observed).mean()) if has_val else None,
            "val_true_acc": float((val_pred == val_true).mean()) if has_val else None,
            **memorisation(train_logits.argmax(1), observed, true), **detector_metrics(fit, observed, true),
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
    for idx in data.length_bucketed_batches([len(t) for t in token_ids], batch_size, seed=0, epoch=0, shuffle=False):
        ids, mask = data.collate(token_ids, idx)
        ids, mask = ids.to(device), mask.to(device)
        out[idx] = mean_pool(encoder(ids, mask), mask).float().cpu().numpy()
    return out
