"""
How far a classifier's confidence can be trusted: negative log-likelihood, expected
calibration error and the reliability diagram's bins (Guo et al. 2017, "On Calibration of
Modern Neural Networks", Sec. 2: confidence = max softmax probability, M equal-width bins,
ECE = sum_m |B_m|/n * |acc(B_m) - conf(B_m)|).

Label noise pushes a model to fit wrong labels with high confidence; these numbers, logged
for the clean test split every epoch, show when that starts (train.py, evaluation.py).

Usage (both samples right at confidence sigmoid(2) = 0.881: NLL -log 0.881, ECE 1 - 0.881):
    >>> import numpy as np
    >>> m = calibration_metrics(np.array([[2.0, 0.0], [0.0, 2.0]]), np.array([0, 1]))
    >>> round(m["test_nll"], 4), round(m["test_ece"], 4)
    (0.1269, 0.1192)
    >>> sorted(reliability_bins(np.array([[2.0, 0.0]]), np.array([0])))  # per-bin counts, confidence, accuracy
    ['accuracy', 'confidence', 'count']
"""

import numpy as np

NUM_BINS = 15  # Guo et al. use 15 equal-width bins


def softmax(logits):
    """Row-wise softmax of (N, K) logits, in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits, labels):
    """Mean cross-entropy -log p(label | x) of (N, K) logits against (N,) int labels."""
    z = np.asarray(logits, dtype=np.float64)
    m = z.max(axis=1, keepdims=True)
    log_norm = (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]  # log sum_k exp z_k, stable
    return float(np.mean(log_norm - z[np.arange(len(z)), labels]))


def reliability_bins(logits, labels, num_bins=NUM_BINS):
    """{"count", "confidence", "accuracy"}: per equal-width confidence bin (lists of length num_bins;
    an empty bin has count 0 and None for the other two)."""
    p = softmax(logits)
    conf, correct = p.max(axis=1), p.argmax(axis=1) == np.asarray(labels)
    # bin m holds confidences in (m/M, (m+1)/M]; the top bin also takes 1.0
    which = np.clip(np.ceil(conf * num_bins).astype(int) - 1, 0, num_bins - 1)
    count = np.bincount(which, minlength=num_bins)
    conf_sum = np.bincount(which, weights=conf, minlength=num_bins)
    acc_sum = np.bincount(which, weights=correct.astype(np.float64), minlength=num_bins)
    mean = lambda s: [float(a / c) if c else None for a, c in zip(s, count)]
    return {"count": count.tolist(), "confidence": mean(conf_sum), "accuracy": mean(acc_sum)}


def ece(logits, labels, num_bins=NUM_BINS):
    """Expected calibration error: the count-weighted mean gap |accuracy - confidence| over the bins."""
    bins = reliability_bins(logits, labels, num_bins)
    n = sum(bins["count"])
    return float(sum(c * abs(a - f) for c, a, f in zip(bins["count"], bins["accuracy"], bins["confidence"]) if c) / n)


def calibration_metrics(test_logits, test_labels):
    """The per-epoch calibration figures of the clean test split."""
    return {"test_nll": nll(test_logits, test_labels), "test_ece": ece(test_logits, test_labels)}
