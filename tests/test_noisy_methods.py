"""The noisy-label methods of methods/ and the oracle references: each loss against its
paper's formula, the stages of filter-and-retrain (a fresh model, the kept rows only, scores
out of sample), SelfMix's step, and resume through the stages."""

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import checkpoint
import engine
import methods
import train
from batching import Batch
from methods.elr import ELRConfig, ELRHooks
from methods.filter_retrain import FarHooks, class_normalised
from methods.gce import gce_loss
from methods.selfmix import SelfMixConfig, SelfMixHooks, symmetric_kl
from methods.small_loss import SmallLossConfig, SmallLossHooks
from mixture import DetectorFit, clean_probability, per_sample_loss
from model import Outputs
from conftest import tiny_classifier

TINY = ["--max_len", "64", "--batch_size", "16", "--warmup_ratio", "0", "--no_progress", "--lr", "1e-2"]


def base(model_dir, dataset, out, *extra):
    return ["--model", model_dir, "--dataset", dataset, "--out", str(out), "--noise", "sym", "--noise_rate", "0.3",
            "--epochs", "2", "--warmup_epochs", "1", *TINY, *extra]


def read_metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


# ---------------------------------------------------------------------------- losses against their formulas


def test_gce_is_its_formula_and_tends_to_cross_entropy():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    p_y = torch.softmax(logits, -1)[torch.arange(6), labels]
    assert torch.allclose(gce_loss(logits, labels, 0.7), ((1 - p_y ** 0.7) / 0.7).mean())
    assert torch.allclose(gce_loss(logits, labels, 1e-4), F.cross_entropy(logits, labels), atol=1e-3)  # q -> 0
    assert torch.allclose(gce_loss(logits, labels, 1.0), (1 - p_y).mean())  # q = 1: mean absolute error


def test_elr_targets_average_the_predictions_and_the_term_is_the_paper_s():
    hooks = ELRHooks(num_train=5, num_classes=3, cfg=ELRConfig(elr_lambda=3.0, elr_beta=0.7))
    torch.manual_seed(0)
    logits, index = torch.randn(2, 3), torch.tensor([4, 1])
    batch = Batch(None, None, index, torch.tensor([0, 2]))
    p = torch.softmax(logits, -1).clamp(1e-4, 1 - 1e-4)
    term = hooks.extra_losses(Outputs(logits, None), batch)["elr"]
    t = 0.3 * p / p.sum(1, keepdim=True)  # t started at 0: beta * 0 + (1 - beta) * p
    assert torch.allclose(hooks.target[index], t) and torch.equal(hooks.target[[0, 2, 3]], torch.zeros(3, 3))
    assert torch.allclose(term, 3.0 * torch.log(1 - (t * p).sum(1)).mean())
    loss, extra = hooks.loss(Outputs(logits, None), batch)
    assert torch.allclose(loss, F.cross_entropy(logits, batch.label) + extra["elr"])


def test_small_loss_forgets_nothing_first_then_the_estimated_rate_ramped():
    hooks = SmallLossHooks(SmallLossConfig(), warmup_epochs=2)
    logits, labels = torch.tensor([[5.0, 0.0], [0.0, 5.0], [1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0, 0, 0])
    batch = Batch(None, None, torch.arange(4), labels)
    per = F.cross_entropy(logits, labels, reduction="none")
    assert torch.allclose(hooks.loss(Outputs(logits, None), batch)[0], per.mean())  # epoch 1: everything
    fit = DetectorFit(None, None, np.array([1.0, 1.0, 0.0, 0.0]), None)  # mean P(noisy) = 0.5
    hooks.end_epoch(0, None, None, fit)
    assert hooks.noise_rate == 0.5 and hooks.forget_rate == 0.25  # ramp: 1 of 2 warm-up epochs
    assert torch.allclose(hooks.loss(Outputs(logits, None), batch)[0], per.sort().values[:3].mean())
    hooks.end_epoch(1, None, None, fit)
    assert hooks.forget_rate == 0.5
    assert torch.allclose(hooks.loss(Outputs(logits, None), batch)[0], per.sort().values[:2].mean())


# ---------------------------------------------------------------------------- filter and retrain


def test_class_normalised_scores_are_z_scores_within_each_observed_class():
    loss, observed = np.array([1.0, 3.0, 10.0, 20.0, 30.0]), np.array([0, 0, 1, 1, 1])
    z = class_normalised(loss, observed)
    for c in (0, 1):
        assert abs(z[observed == c].mean()) < 1e-9 and abs(z[observed == c].std() - 1) < 1e-6


def test_far_plans_stages_and_cross_fits_its_scores():
    cfg = methods.get("far").settings(far_rows="relabel", far_folds=2, far_confidence=0.6)
    hooks = FarHooks(num_train=8, cfg=cfg, detect_epochs=2, seed=0)
    assert hooks.stage_starts() == (2, 4)
    observed = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    fold0 = hooks.epoch_data(0, observed)[1]
    assert fold0.sum() == 4 and np.array_equal(hooks.epoch_data(2, observed)[1], ~fold0)  # 1a, then 1b
    logits_a, logits_b = np.random.default_rng(0).normal(size=(2, 8, 2)).astype(np.float32)
    hooks.end_epoch(0, logits_a, observed, None)  # mid-stage: nothing kept
    assert hooks.oos_logits is None
    hooks.end_epoch(1, logits_a, observed, None)  # model A (trained on fold 0) scores fold 1
    hooks.end_epoch(3, logits_b, observed, None)  # model B scores fold 0, then the retrain is planned
    expect = np.where(fold0[:, None], logits_b, logits_a)
    assert np.array_equal(hooks.oos_logits, expect)
    labels, keep = hooks.epoch_data(4, observed)
    probs = torch.softmax(torch.as_tensor(expect), -1).numpy()
    sure = hooks.flagged & (probs.max(1) >= 0.6)
    assert np.array_equal(keep, ~hooks.flagged | sure)
    assert np.array_equal(labels[sure], probs.argmax(1)[sure]) and np.array_equal(labels[~hooks.flagged],
                                                                                  observed[~hooks.flagged])


def test_far_unlabelled_rows_learn_the_stage_one_soft_targets():
    cfg = methods.get("far").settings(far_rows="unlabelled", far_unlabelled_weight=0.5)
    hooks = FarHooks(num_train=6, cfg=cfg, detect_epochs=1, seed=0)
    observed = np.array([0, 0, 0, 1, 1, 1])
    logits = np.array([[3, 0], [3, 0], [-3, 3], [0, 3], [0, 3], [3, -3]], dtype=np.float32)  # rows 2, 5 disagree
    hooks.end_epoch(0, logits, observed, None)
    labels, keep = hooks.epoch_data(1, observed)
    assert keep.all() and set(np.flatnonzero(labels == -1)) == {2, 5}
    out = torch.randn(6, 2)
    batch = Batch(None, None, torch.arange(6), torch.as_tensor(labels))
    loss, extra = hooks.loss(Outputs(out, None), batch)
    lab = labels != -1
    ce = F.cross_entropy(out[lab], torch.as_tensor(labels[lab]), reduction="sum") / 6
    soft = -(hooks.soft[[2, 5]] * F.log_softmax(out[[2, 5]], -1)).sum() * 0.5 / 6
    assert torch.allclose(loss, ce + soft) and torch.allclose(extra["unlabelled"], soft)


def test_far_retrains_a_fresh_model_on_the_kept_rows_only(tiny_pretrained_dir, tiny_dataset, tmp_path, monkeypatch):
    """Through the command line: at the retrain stage the weights are the initial ones again and
    no dropped row reaches a batch."""
    seen, starts = [], []
    real_loss, real_enter = FarHooks.loss, engine.Stages.enter

    def recording_loss(self, out, batch):
        seen.append((self.keep is not None, batch.index.tolist()))
        return real_loss(self, out, batch)

    def recording_enter(self, epoch, fresh):
        entered = real_enter(self, epoch, fresh)
        if entered and epoch > 0:
            now = checkpoint.peft_state_dict(self.model)
            starts.append(all(torch.equal(now[k], v) for k, v in self.initial.items()))
        return entered
    monkeypatch.setattr(FarHooks, "loss", recording_loss)
    monkeypatch.setattr(engine.Stages, "enter", recording_enter)
    summary = train.main(base(tiny_pretrained_dir, tiny_dataset, tmp_path / "far", "--method", "far",
                              "--peft", "lora", "--far_rows", "drop"))
    assert starts == [True] and len(read_metrics(tmp_path / "far")) == 1 + 2  # W + far_epochs
    assert summary["selected_epoch"] > 1  # chosen among the retrained model's epochs
    assert 0 <= summary["far_score_auroc"] <= 1
    retrain_rows = {i for stage2, rows in seen if stage2 for i in rows}
    warmup_rows = {i for stage2, rows in seen if not stage2 for i in rows}
    assert len(warmup_rows) == summary["num_train"] and 0 < summary["far_kept"] < 1
    assert len(retrain_rows) == round(summary["far_kept"] * summary["num_train"]) < summary["num_train"]


@pytest.mark.parametrize("argv,cut", [(["--method", "far", "--far_rows", "relabel"], 1),
                                      (["--method", "far", "--far_folds", "2"], 3),
                                      (["--method", "selfmix"], 2), (["--method", "elr"], 1)],
                         ids=["far-at-stage-start", "far-crossfit-mid-retrain", "selfmix", "elr"])
def test_resume_equals_uninterrupted_run(argv, cut, tiny_pretrained_dir, tiny_dataset, tmp_path, monkeypatch):
    args = lambda out, *a: base(tiny_pretrained_dir, tiny_dataset, out, *argv, "--epochs", "3", *a)
    train.main(args(tmp_path / "full"))
    saves, real_save = [], checkpoint.save_training_state

    def save_then_die(out, *state):
        real_save(out, *state)
        saves.append(out)
        if len(saves) == cut:
            raise KeyboardInterrupt
    monkeypatch.setattr(checkpoint, "save_training_state", save_then_die)
    with pytest.raises(SystemExit):
        train.main(args(tmp_path / "cut"))
    monkeypatch.setattr(checkpoint, "save_training_state", real_save)
    train.main(args(tmp_path / "cut", "--resume"))
    strip = lambda ms: [{k: v for k, v in m.items() if not k.endswith("_s")} for m in ms]
    assert strip(read_metrics(tmp_path / "cut")) == strip(read_metrics(tmp_path / "full"))


# ---------------------------------------------------------------------------- SelfMix


def test_selfmix_splits_on_class_normalised_losses_of_the_logits():
    model = tiny_classifier(2)
    hooks = SelfMixHooks(model, 6, SelfMixConfig(), warmup_epochs=1)
    logits = np.array([[4, 0], [3, 0], [-2, 2], [0, 5], [0, 4], [3, -3]], dtype=np.float32)
    observed = np.array([0, 0, 0, 1, 1, 1])
    hooks.end_epoch(0, logits, observed, None)
    expect = clean_probability(class_normalised(per_sample_loss(logits, observed), observed))[0] > 0.5
    assert np.array_equal(hooks.labelled.numpy(), expect) and not expect[[2, 5]].any()


@pytest.mark.parametrize("labelled", [[True] * 4, [True, False, True, False]], ids=["no-unlabelled", "mixed"])
def test_selfmix_step_trains_with_or_without_an_unlabelled_part(labelled):
    from contextlib import nullcontext
    model = tiny_classifier(2).train()
    hooks = SelfMixHooks(model, 4, SelfMixConfig(), warmup_epochs=1)
    hooks.labelled = torch.tensor(labelled)
    ids = torch.randint(1000, 2000, (4, 7))
    batch = Batch(ids, torch.ones(4, 7, dtype=torch.long), torch.arange(4), torch.tensor([0, 1, 0, 1]))
    loss, extra = hooks.step_loss(model, batch, nullcontext)
    loss.backward()
    assert torch.isfinite(loss) and model.training and model.head.weight.grad is not None
    assert set(extra) == (set() if all(labelled) else {"pseudo", "consistency"})


def test_symmetric_kl_is_zero_for_equal_views_symmetric_and_summed_over_rows():
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    assert symmetric_kl(a, a).abs() < 1e-6 and torch.allclose(symmetric_kl(a, b), symmetric_kl(b, a))
    kl = lambda p, q: F.kl_div(F.log_softmax(q, -1), F.softmax(p, -1), reduction="sum")  # KL(p || q)
    assert torch.allclose(symmetric_kl(a, b), 0.5 * (kl(a, b) + kl(b, a)), atol=1e-6)  # the official reduction


# ---------------------------------------------------------------------------- oracles


def test_oracles_train_on_the_true_labels_and_keep_the_noisy_validation(tiny_model_dir, tiny_dataset, tmp_path,
                                                                        capsys):
    noisy = train.main(base(tiny_model_dir, tiny_dataset, tmp_path / "noisy", "--method", "lora", "--epochs", "1"))
    clean = train.main(base(tiny_model_dir, tiny_dataset, tmp_path / "clean", "--method", "lora", "--epochs", "1",
                            "--oracle", "clean-subset"))
    free = train.main(base(tiny_model_dir, tiny_dataset, tmp_path / "free", "--method", "lora", "--epochs", "1",
                           "--oracle", "noise-free"))
    n_noisy = round(noisy["realized_noise_rate"] * noisy["num_train"])
    assert clean["num_train"] == noisy["num_train"] - n_noisy and free["num_train"] == noisy["num_train"]
    assert clean["realized_noise_rate"] == free["realized_noise_rate"] == 0.0
    assert clean["source_noise_rate"] == free["source_noise_rate"] == noisy["realized_noise_rate"]
    assert read_metrics(tmp_path / "noisy")[0]["val_acc"] is not None
    vals = [json.load(open(tmp_path / d / "summary.json"))["selected_val_acc"] is not None for d in ("clean", "free")]
    assert all(vals)
    assert methods.label(clean["config"]) == "lora [oracle: clean-subset]"
    with pytest.raises(SystemExit):
        train.main(base(tiny_model_dir, tiny_dataset, tmp_path / "x", "--noise", "none", "--oracle", "noise-free"))
    assert "needs synthetic noise" in capsys.readouterr().err


# ---------------------------------------------------------------------------- the practitioner's baseline


def test_logistic_regression_reaches_its_optimum():
    """At the L-BFGS solution the gradient of sum CE + ||W||^2 / (2C) vanishes (the optimality
    condition of the convex objective), for W and for the unpenalised intercept."""
    from methods.practitioner import fit_logreg
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(120, 5)), rng.integers(0, 3, 120)
    W, b = fit_logreg(X, y, 3, C=0.5)
    P = torch.softmax(torch.as_tensor(X @ W + b), -1).numpy()
    Y = np.eye(3)[y]
    assert np.abs(X.T @ (P - Y) + W / 0.5).max() < 1e-4 and np.abs((P - Y).sum(0)).max() < 1e-4


def test_confident_learning_flags_the_confidently_contradicted_rows():
    from methods.practitioner import find_label_issues
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.85, 0.15], [0.2, 0.8],     # observed 0: the last looks like a 1
                      [0.1, 0.9], [0.2, 0.8], [0.15, 0.85], [0.9, 0.1]])    # observed 1: the last looks like a 0
    observed = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    assert np.flatnonzero(find_label_issues(probs, observed, 2)).tolist() == [3, 7]
    assert not find_label_issues(np.eye(2)[observed] * 0.9 + 0.05, observed, 2).any()  # all agree: no flags


def test_practitioner_runs_as_a_method_and_refuses_what_it_cannot_do(tiny_pretrained_dir, tiny_dataset, tmp_path,
                                                                     capsys):
    out = tmp_path / "prac"
    summary = train.main(base(tiny_pretrained_dir, tiny_dataset, out, "--method", "practitioner", "--cl_folds", "3"))
    assert summary["selected_test_acc"] == summary["best_test_acc"] == summary["last_test_acc"]
    assert summary["cl_c"] in [float(c) for c in train.parse_args(["--method", "practitioner"]).cl_c_grid.split(",")]
    assert 0 < summary["cl_flagged"] < 1 and summary["det_auroc"] is not None
    assert os.path.isfile(out / "label_issues.csv") and len(read_metrics(out)) == 1
    with pytest.raises(SystemExit):
        train.main(["--eval_only", "--load", str(out)])
    assert "keeps no fine-tuned model" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["gce", "elr", "smallloss", "far", "selfmix"])
@pytest.mark.parametrize("kind", ["none", "adapter", "prefix"])
def test_every_noisy_label_method_trains_on_any_peft_kind_and_full_fine_tuning(method, kind, tiny_model_dir,
                                                                               tiny_dataset, tmp_path):
    out = tmp_path / f"{method}-{kind}"
    summary = train.main(base(tiny_model_dir, tiny_dataset, out, "--method", method, "--peft", kind))
    assert summary["config"]["peft"] == kind and len(read_metrics(out)) == summary["config"]["epochs"]
    assert os.path.isfile(out / "label_issues.csv") and os.path.isfile(out / "peft.safetensors")


def test_far_exports_to_hugging_face_where_lora_folds(tiny_pretrained_dir, tiny_dataset, tmp_path):
    import export
    out, hf = tmp_path / "far", tmp_path / "hf"
    train.main(base(tiny_pretrained_dir, tiny_dataset, out, "--method", "far", "--export_hf", str(hf)))
    model, _, names = export.load_exported(str(hf))
    assert names == ["neg", "pos"] and os.path.isfile(hf / "config.json")


def test_loramoe_truth_types_are_a_named_oracle(tiny_pretrained_dir, tiny_dataset, tmp_path):
    """--moe_types truth: after warm-up the types are exactly the true noisy flags, the run is labelled an
    oracle, and without synthetic noise it refuses in one line."""
    import methods
    summary = train.main(base(tiny_pretrained_dir, tiny_dataset, tmp_path / "run", "--method", "loramoe",
                              "--moe_types", "truth", "--warmup_epochs", "1", "--epochs", "2"))
    last = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")][-1]
    assert last["moe_typed_noisy"] == pytest.approx(summary["realized_noise_rate"])
    assert last["moe_typed_gap_max"] == 0.1 and last["moe_blind_shift"] is not None
    assert methods.label(summary["config"]) == "loramoe (types truth) [oracle: true noisy flags as types]"
    with pytest.raises(SystemExit):
        train.main(base(tiny_pretrained_dir, tiny_dataset, tmp_path / "none", "--method", "loramoe",
                        "--moe_types", "truth", "--noise", "none"))
