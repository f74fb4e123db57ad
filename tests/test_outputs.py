"""What a run leaves its user: calibration, label issues, noise files, the confident joint."""

import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import label_issues
import noise
from calibration import calibration_metrics, ece, nll, reliability_bins, softmax
from mixture import LossDetector, per_sample_loss


# ---------------------------------------------------------------- calibration

def test_nll_equals_torch_cross_entropy():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(scale=3, size=(50, 7)), rng.integers(0, 7, 50)
    ref = F.cross_entropy(torch.tensor(logits), torch.tensor(labels)).item()
    assert nll(logits, labels) == pytest.approx(ref, abs=1e-12)


def two_class_logits(conf):
    """Logits whose softmax puts probability `conf` on class 0."""
    return np.stack([np.log(conf), np.log(1 - conf)], axis=1)


def test_ece_zero_when_calibrated_and_large_when_overconfident():
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.55, 0.95, 200_000)
    logits = two_class_logits(conf)
    labels = np.where(rng.uniform(size=conf.size) < conf, 0, 1)  # right exactly as often as claimed
    assert ece(logits, labels) < 0.01
    sure = two_class_logits(np.full(1000, 0.99))
    coin = np.arange(1000) % 2  # half right at 99% confidence
    assert ece(sure, coin) == pytest.approx(0.49, abs=1e-9)


def test_reliability_bins_edges_and_counts():
    logits = two_class_logits(np.array([0.5, 0.51, 0.999999, 1 - 1e-12]))
    bins = reliability_bins(logits, np.zeros(4, dtype=int), num_bins=10)
    assert sum(bins["count"]) == 4
    assert bins["count"][4] == 1 and bins["count"][5] == 1 and bins["count"][9] == 2  # 0.5 -> (0.4, 0.5]
    assert bins["confidence"][0] is None and bins["accuracy"][9] == 1.0
    assert set(calibration_metrics(logits, np.zeros(4, dtype=int))) == {"test_nll", "test_ece"}


# ---------------------------------------------------------------- label-issue scores

def loss_history(epochs=4, n=300, k=5, seed=0):
    rng = np.random.default_rng(seed)
    logits = [rng.normal(size=(n, k)).astype(np.float32) for _ in range(epochs)]
    observed = rng.integers(0, k, n)
    return logits, observed


def test_ema_score_replays_the_detector():
    logits, observed = loss_history()
    detector = LossDetector(0.9)
    for lg in logits:
        fit = detector.update(lg, observed)
    history = np.stack([per_sample_loss(lg, observed) for lg in logits])
    # the detector multiplies the float32 loss before widening it; the replay widens first
    np.testing.assert_allclose(label_issues.suspicion(history, "ema_loss", 0.9), fit.smoothed, rtol=1e-6)
    np.testing.assert_array_equal(label_issues.suspicion(history, "last_loss", 0.9), history[-1])
    np.testing.assert_allclose(label_issues.suspicion(history, "mean_loss", 0.9), history.astype(np.float64).mean(0))
    mixture = label_issues.suspicion(history, "mixture", 0.9)
    np.testing.assert_allclose(mixture, 1 - fit.clean_prob, atol=1e-5)
    with pytest.raises(ValueError, match="unknown label-issue score"):
        label_issues.suspicion(history, "margin", 0.9)


def test_scores_find_samples_with_persistently_high_loss():
    rng = np.random.default_rng(2)
    noisy = rng.uniform(size=400) < 0.3
    history = np.stack([rng.gamma(2, 0.2, 400) + 2.0 * noisy * (1 - e / 10) for e in range(5)])
    observed, true = np.where(noisy, 1, 0), np.zeros(400, dtype=int)
    aucs = label_issues.score_auroc(history, observed, true, 0.9)
    assert set(aucs) == set(label_issues.SCORES) and min(aucs.values()) > 0.95
    assert label_issues.DEFAULT_SCORE in label_issues.SCORES


def test_flag_metrics():
    flagged = np.array([1, 1, 0, 0, 1], dtype=bool)
    observed, true = np.array([1, 0, 0, 1, 1]), np.array([0, 0, 0, 0, 0])  # noisy: 0, 3, 4
    m = label_issues.flag_metrics(flagged, observed, true)
    assert m == {"issues_flagged": 0.6, "issues_precision": pytest.approx(2 / 3), "issues_recall": pytest.approx(2 / 3)}


def test_label_issues_csv_ranks_each_split_and_flags_the_estimated_share(tmp_path):
    logits, observed = loss_history(n=30, k=3)
    scores, p_clean = np.random.default_rng(3).uniform(size=30), np.linspace(0, 1, 30)
    val_scores = np.random.default_rng(4).uniform(size=10)
    parts = [label_issues.IssueRows("train", np.arange(30) + 2, [f"text {i}" for i in range(30)], observed, logits[0],
                                    scores, p_clean),
             label_issues.IssueRows("validation", np.arange(10) + 40, [f"val {i}" for i in range(10)], observed[:10],
                                    logits[0][:10], val_scores)]
    path = tmp_path / "issues.csv"
    rate = label_issues.estimated_noise_rate(p_clean)
    assert rate == pytest.approx(0.5)
    flags = label_issues.write_label_issues(path, parts, ["a", "b", "c"], 0.3)
    rows = list(csv.DictReader(open(path)))
    train, val = [r for r in rows if r["split"] == "train"], [r for r in rows if r["split"] == "validation"]
    assert [r["split"] for r in rows] == ["train"] * 30 + ["validation"] * 10  # split by split
    assert sorted(int(r["row"]) for r in train) == list(range(2, 32)) and [int(r["rank"]) for r in val] == list(range(1, 11))
    for part, got in ((scores, train), (val_scores, val)):
        values = [float(r["suspicion"]) for r in got]
        assert values == sorted(values, reverse=True)
        assert [int(r["flagged_noisy"]) for r in got] == [1] * round(0.3 * len(got)) + [0] * (len(got) - round(0.3 * len(got)))
    assert flags["train"].sum() == 9 and flags["validation"].sum() == 3 and flags["train"][np.argmax(scores)]
    for r in train:
        i = int(r["row"]) - 2
        assert r["text"] == f"text {i}" and r["observed_label"] == "abc"[observed[i]]
        assert r["predicted_label"] == "abc"[logits[0][i].argmax()]
        assert float(r["p_clean"]) == pytest.approx(p_clean[i], abs=1e-4)
        assert float(r["p_observed"]) == pytest.approx(softmax(logits[0])[i, observed[i]], abs=1e-4)
    assert all(r["p_clean"] == "" for r in val)  # the detector fits the training rows only


def test_confident_joint_of_a_perfect_model_is_the_realised_noise():
    rng = np.random.default_rng(4)
    k, n = 4, 2000
    true = rng.integers(0, k, n)
    observed = noise.add_noise(true, "asym", 0.3, k, seed=0)
    logits = 8.0 * np.eye(k)[true] + rng.normal(scale=0.1, size=(n, k))  # confidently right about the truth
    joint = label_issues.confident_joint(logits, observed, k)
    assert joint.tolist() == noise.noise_report(true, observed, k)["transition_counts"]


# ---------------------------------------------------------------- noise files

NAMES = ["neg", "pos", "mixed"]


def test_noise_file_round_trip(tmp_path):
    true = np.array([0, 1, 2, 1, 0, 2])
    observed = np.array([0, 2, 2, 0, 0, 1])
    path = tmp_path / "noisy_labels.csv"
    noise.write_noisy_labels(path, np.arange(6) + 10, true, observed, NAMES)
    rows = list(csv.DictReader(open(path)))
    assert [int(r["flipped"]) for r in rows] == [0, 1, 0, 1, 0, 1]
    np.testing.assert_array_equal(noise.read_noisy_labels(path, true, NAMES), observed)


@pytest.mark.parametrize("edit, fragment", [
    (lambda lines: lines[:-1], "5 labels for a training split of 6"),
    (lambda lines: lines[:2] + [lines[2].replace("pos,mixed", "pos,happy")] + lines[3:], "'happy' is not a class"),
    (lambda lines: lines[:3] + [lines[2]] + lines[4:], "out of range 0..5 or repeated"),
    (lambda lines: lines[:1] + [lines[1].replace("neg,neg", "pos,neg")] + lines[2:], "the file was drawn for other data"),
    (lambda lines: ["idx,label"] + lines[1:], "need columns 'index' and 'observed_label'"),
])
def test_noise_file_that_does_not_match_is_one_clear_error(tmp_path, edit, fragment):
    true = np.array([0, 1, 2, 1, 0, 2])
    path = tmp_path / "noisy_labels.csv"
    noise.write_noisy_labels(path, np.arange(6), true, np.array([0, 2, 2, 0, 0, 1]), NAMES)
    lines = open(path).read().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")
    with pytest.raises(noise.NoiseError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        noise.read_noisy_labels(path, true, NAMES)


def test_missing_noise_file(tmp_path):
    with pytest.raises(noise.NoiseError, match="noise file not found"):
        noise.read_noisy_labels(tmp_path / "none.csv", np.array([0, 1]), NAMES)
