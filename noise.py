"""Synthetic label noise for the training split.

A noise model gives each training sample a distribution over the label it is observed with.
A class-conditional model is one row-stochastic transition matrix T with
T[i, j] = P(observed label j | true label i); an instance-dependent one gives every sample its
own row. Each model is one entry of NOISE_MODELS (registry.py's shape), and --noise offers them
with the entries' own help lines. The built-in ones and where they come from:

* ``sym``      -- exclusive symmetric flip, as in Co-teaching (Han et al., 2018)
                  and SelfMix: with prob. r move to one of the other K-1 classes.
* ``sym-incl`` -- inclusive symmetric, as in DivideMix (Li et al., 2020) and the
                  CleaR code: with prob. r redraw from all K classes, so the
                  label actually changes with prob. r*(K-1)/K.
* ``asym``     -- pair flip i -> (i+1) mod K with prob. r (Co-teaching, SelfMix).
                  The CleaR code flips i -> i-1 instead; that is the same
                  model up to a renaming of the classes.
* ``idn``      -- instance-dependent noise of Xia et al., 2020 ("Part-dependent
                  label noise", NeurIPS 2020, Algorithm 1): flip rate q ~ N(r, 0.1^2)
                  truncated to [0, 1]; flip target softmax(x W_y) over the wrong classes,
                  x the sample's features standardised per dimension (their normalised
                  pixels; here the encoder's sentence embedding).
* ``none``     -- labels unchanged.

The caller applies noise to the training split only.  Everything is seeded
through ``numpy.random.default_rng(seed)`` so a run is reproducible.

Usage:
    >>> import numpy as np
    >>> true = np.repeat(np.arange(4), 500)
    >>> noisy = add_noise(true, "sym", 0.4, num_classes=4, seed=0)
    >>> bool(abs(np.mean(noisy != true) - 0.4) < 0.05)
    True
    >>> NOISE_MODELS["idn"].needs_features, NOISE_MODELS["asym"].transition(0.3, 3)[0].tolist()
    (True, [0.7, 0.3, 0.0])
"""
from dataclasses import dataclass
from typing import Callable

import numpy as np

from registry import Registry, summary_of

IDN_STD = 0.1  # std of the per-sample flip rate in Xia et al. (2020)


class NoiseError(ValueError):
    """An impossible or inconsistent noise setting."""


@dataclass(frozen=True)
class NoiseModel:
    """One --noise choice: how each sample's observed label is drawn."""
    name: str
    summary: str              # its --noise help line
    flip_probs: Callable      # (labels (N,), rate, K, rng, features) -> (N, K): row n = P(observed j | sample n)
    transition: Callable | None = None  # class-conditional models: (rate, K) -> (K, K) T[i, j]
    needs_features: bool = False  # instance-dependent on the pretrained encoder's embeddings of the samples
    check: Callable | None = None  # (rate, K) -> None, or raises NoiseError for a setting it cannot draw


NOISE_MODELS = Registry("noise kind")  # name -> NoiseModel, the --noise choices in registration order


def register_transition(name, check=None):
    """Decorator: fn(rate, K) -> (K, K) row-stochastic T[i, j] = P(observed j | true i) becomes
    class-conditional noise kind `name` (--noise name), drawn, reported and checked like the built-in
    ones; its --help line is the function's docstring."""
    def add(fn):
        rows = lambda labels, rate, k, rng, features: fn(rate, k)[labels]  # noqa: E731  (N, K)
        NOISE_MODELS.register(name)(NoiseModel(name, summary_of(fn), rows, transition=fn, check=check))
        return fn
    return add


def register_instance_dependent(name, needs_features=True, check=None):
    """Decorator: fn(labels, rate, K, rng, features) -> (N, K) per-sample rows P(observed j) becomes
    noise kind `name`; with needs_features the run passes the pretrained encoder's (N, d) embeddings."""
    def add(fn):
        NOISE_MODELS.register(name)(NoiseModel(name, summary_of(fn), fn, needs_features=needs_features, check=check))
        return fn
    return add


def _check_setting(kind, rate, num_classes):
    if kind not in NOISE_MODELS:
        raise NoiseError(f"unknown noise kind {kind!r}; valid kinds are {', '.join(NOISE_MODELS)}")
    model = NOISE_MODELS[kind]
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise NoiseError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if kind == "none":
        return model  # rate is meaningless without noise, so it is not checked
    if not 0.0 <= rate < 1.0:  # written this way so that NaN fails too
        raise NoiseError(f"noise rate must be in [0, 1), got {rate}")
    if model.check:
        model.check(rate, int(num_classes))
    return model


def _check_labels(labels, num_classes, name="labels"):
    arr = np.asarray(labels)
    if arr.ndim != 1 or not (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
        raise NoiseError(f"{name} must be a 1-D integer array, got shape {arr.shape} dtype {arr.dtype}")
    bad = (arr < 0) | (arr >= num_classes)
    if bad.any():
        raise NoiseError(f"{name} must lie in [0, {num_classes}), found {arr[bad][0]}")
    return arr.astype(np.int64)


# ---------------------------------------------------------------- the built-in models
@register_transition("none")
def _none(rate, k):
    """labels unchanged"""
    return np.eye(k)


@register_transition("sym")
def _sym(rate, k):
    """flips exactly a share r of the labels to one of the other classes"""
    t = np.full((k, k), rate / (k - 1))
    np.fill_diagonal(t, 1.0 - rate)
    return t


@register_transition("sym-incl")
def _sym_incl(rate, k):
    """the CleaR code's: redraws r of them from all K classes, so only r(K-1)/K change - r/2 on two classes"""
    t = np.full((k, k), rate / k)
    np.fill_diagonal(t, 1.0 - rate + rate / k)
    return t


def _asym_recoverable(rate, k):
    if k == 2 and rate >= 0.5:
        raise NoiseError(
            f"asym noise with num_classes=2 needs rate < 0.5, got {rate}: the flipped "
            "label would become the majority in every class, so the true labels "
            "are unrecoverable")


@register_transition("asym", check=_asym_recoverable)
def _asym(rate, k):
    """class i -> i+1 with probability r"""
    t = (1.0 - rate) * np.eye(k)
    t[np.arange(k), (np.arange(k) + 1) % k] += rate
    return t


def transition_matrix(kind, rate, num_classes):
    """(K, K) float64 matrix T[i, j] = P(observed j | true i) for a class-conditional kind."""
    model = _check_setting(kind, rate, num_classes)
    if model.transition is None:
        raise NoiseError(f"noise kind {kind!r} has no transition matrix: it is instance-dependent, "
                         "each sample gets its own flip distribution from its features")
    return model.transition(rate, int(num_classes))


def _sample_rows(probs, rng):
    """Draw one class index per row of ``probs`` (N, K), each row a distribution."""
    cdf = np.cumsum(probs, axis=1)
    cdf[:, -1] = 1.0  # rounding may leave the last sum a hair below 1; u must never exceed it
    u = rng.random((probs.shape[0], 1))
    # The chosen class is the number of cdf steps already passed by u.  A
    # zero-probability class adds no step of its own, so it can never be picked.
    return (u >= cdf).sum(axis=1).astype(np.int64)


def _truncated_normal(mean, std, size, rng, low=0.0, high=1.0):
    """Normal(mean, std) restricted to [low, high], by rejection.

    scipy.stats.truncnorm would take the standardised bounds
    a = (low - mean) / std and b = (high - mean) / std.  For mean in [0, 1) at
    least half the mass lies inside [0, 1], so a few redraws suffice.
    """
    out = rng.normal(mean, std, size)
    bad = (out < low) | (out > high)
    while bad.any():
        out[bad] = rng.normal(mean, std, int(bad.sum()))
        bad = (out < low) | (out > high)
    return out


@register_instance_dependent("idn")
def _idn(labels, rate, num_classes, rng, features):
    """per-sample rates (Xia et al. 2020); on two classes the flip target cannot depend on the text"""
    # Xia et al. (2020), Algorithm 1: each sample's flip rate q_n ~ N(r, 0.1^2) on [0, 1], its flip
    # target softmax(x_n W_y) over the wrong classes.
    if features is None:
        raise NoiseError("noise kind 'idn' needs features, an (N, d) array such as the "
                         "encoder's mean-pooled embeddings of the training samples")
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != labels.shape[0]:
        raise NoiseError(f"idn features must have shape (N, d) with N = {labels.shape[0]} labels, "
                         f"got shape {x.shape}")
    n = labels.shape[0]
    q = _truncated_normal(rate, IDN_STD, n, rng)  # each sample's own flip rate
    w = rng.standard_normal((num_classes, x.shape[1], num_classes))
    # Xia et al. feed the normalised input itself (each image channel standardised), so a logit x.W
    # has std ~ sqrt(d) and the softmax over wrong classes is nearly one-hot: each sample has *its*
    # likely wrong class. Standardising every feature dimension over the training set does the same
    # for embeddings of any scale. (Unit-length rows would give logits ~ N(0, 1/d) and a flip target
    # close to uniform, i.e. nearly symmetric noise.)
    x = (x - x.mean(axis=0)) / np.maximum(x.std(axis=0), 1e-12)
    logits = np.empty((n, num_classes))
    for c in range(num_classes):  # one matmul per class avoids building W[labels] (N, d, K)
        rows = labels == c
        logits[rows] = x[rows] @ w[c]
    rows = np.arange(n)
    logits[rows, labels] = -np.inf  # the softmax spreads the flip mass over wrong classes only
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = q[:, None] * e / e.sum(axis=1, keepdims=True)
    probs[rows, labels] = 1.0 - q
    return probs


def add_noise(labels, kind, rate, num_classes, seed=0, features=None):
    """Return observed (noisy) int64 labels for the true ``labels`` in [0, num_classes).

    A kind that needs features (``idn``) takes them as an (N, d) float array.  Rate 0 returns the
    labels unchanged; ``idn``'s realised rate is otherwise the mean of the truncated normal, which is
    above ``rate`` when ``rate`` is near 0.
    """
    model = _check_setting(kind, rate, num_classes)
    labels = _check_labels(labels, num_classes)
    if kind == "none" or rate == 0:
        return labels.copy()
    rng = np.random.default_rng(seed)
    return _sample_rows(model.flip_probs(labels, rate, int(num_classes), rng, features), rng)


def noise_report(true_labels, observed_labels, num_classes):
    """Summary of the noise actually applied: rate, per-class flips, empirical T.

    A class with no samples gets an all-zero row in the empirical matrix.
    """
    true = _check_labels(true_labels, num_classes, "true_labels")
    obs = _check_labels(observed_labels, num_classes, "observed_labels")
    if true.shape != obs.shape:
        raise NoiseError(f"true_labels and observed_labels differ in length: {true.size} vs {obs.size}")
    k = int(num_classes)
    counts = np.bincount(true * k + obs, minlength=k * k).reshape(k, k)
    per_class = counts.sum(axis=1)
    empirical = counts / np.maximum(per_class, 1)[:, None]
    return {
        "num_samples": int(true.size),
        "realized_rate": float(np.mean(true != obs)) if true.size else 0.0,
        "class_counts": per_class.tolist(),
        "flips_per_class": (per_class - np.diag(counts)).tolist(),
        "transition_counts": counts.tolist(),  # [true, observed]
        "empirical_transition": empirical.tolist(),
    }


# ---------------------------------------------------------------- noise files
# noisy_labels.csv: one line per training example (in the order of the training split), so a
# noise draw can be handed on and trained on again with `train.py --noisy_labels FILE`.
NOISE_FILE_COLUMNS = ("index", "row", "true_label", "observed_label", "flipped")


def write_noisy_labels(path, rows, true, observed, class_names):
    """Write the noise a run drew: index, source row, true and observed label names, flipped (0/1)."""
    import csv
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(NOISE_FILE_COLUMNS)
        for i, (row, t, o) in enumerate(zip(rows, true, observed)):
            out.writerow([i, int(row), class_names[t], class_names[o], int(t != o)])


def read_noisy_labels(path, true, class_names):
    """(N,) observed labels from a noise file for a training split whose true labels are `true`.
    The file must list each index 0..N-1 once with a known label name; a `true_label` column, if
    present, must agree with the dataset (else the file belongs to another dataset or subsample)."""
    import csv
    index = {c: k for k, c in enumerate(class_names)}
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"index", "observed_label"} <= set(reader.fieldnames):
                raise NoiseError(f"{path}: need columns 'index' and 'observed_label', found {reader.fieldnames}")
            records = list(reader)
    except FileNotFoundError:
        raise NoiseError(f"{path}: noise file not found") from None
    except UnicodeDecodeError:
        raise NoiseError(f"{path}: not UTF-8 text") from None
    n = len(true)
    if len(records) != n:
        raise NoiseError(f"{path}: {len(records)} labels for a training split of {n} examples "
                         "(same dataset, --max_train and --seed as the run that wrote it?)")
    observed = np.full(n, -1, dtype=np.int64)
    for line, rec in enumerate(records, 2):
        try:
            i = int(rec["index"])
        except (TypeError, ValueError):
            raise NoiseError(f"{path}: line {line}: index {rec['index']!r} is not an integer") from None
        if not 0 <= i < n or observed[i] >= 0:
            raise NoiseError(f"{path}: line {line}: index {i} is out of range 0..{n - 1} or repeated")
        for col in ("observed_label", "true_label"):
            if rec.get(col) is not None and rec[col] not in index:
                raise NoiseError(f"{path}: line {line}: {col} {rec[col]!r} is not a class of this dataset "
                                 f"({', '.join(class_names[:5])}{', ...' if len(class_names) > 5 else ''})")
        if rec.get("true_label") is not None and index[rec["true_label"]] != true[i]:
            raise NoiseError(f"{path}: line {line}: true_label {rec['true_label']!r} of example {i} differs from "
                             f"the dataset's {class_names[true[i]]!r}: the file was drawn for other data")
        observed[i] = index[rec["observed_label"]]
    return observed
