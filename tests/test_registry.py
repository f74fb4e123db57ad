"""The registries are the one place to change: a new PEFT kind and new routers, written in
this file alone, train through the normal command line; every method's closed-form
parameter count holds; and no per-batch hook can see a true label."""

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import checkpoint
import data
import methods
import noise
import peft
import settings
from hooks import Hooks
import build
import train
from conftest import TINY_CONFIG, make_text_dataset
from model import count_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--max_len", "64", "--batch_size", "16", "--warmup_ratio", "0", "--no_progress"]


# ---------------------------------------------------------------------------- a student's PEFT kind


class ScaleWrapper(nn.Module):
    """y = base(x) * (1 + gate * ia3_scale): a learned per-channel rescaling (Liu et al. 2022,
    "(IA)^3"), the identity at init."""

    def __init__(self, base):
        super().__init__()
        self.base = base
        self.ia3_scale = nn.Parameter(torch.zeros(base.out_features))

    def forward(self, x, gate=None):
        s = self.ia3_scale if gate is None else gate[:, None, None].to(x.dtype) * self.ia3_scale
        return self.base(x, gate) * (1 + s)


@dataclass
class IA3(peft.PeftKind):
    """IA3 scales (a test's own PEFT kind)"""
    name: ClassVar[str] = "ia3"
    default_lr: ClassVar[float] = 1e-2
    clear_base_rate: ClassVar[float] = 0.85
    param_prefixes: ClassVar[tuple] = ("ia3_",)
    ia3_targets: str = settings.setting("key,value,ffn_in", "projections whose outputs get a learned scale")

    def inject(self, model):
        for layer in model.encoder.layers:
            for name in self.ia3_targets.split(","):
                setattr(layer, name, ScaleWrapper(getattr(layer, name)))

    def trainable_params(self, bert, num_classes):
        outs = {"key": bert.hidden_size, "value": bert.hidden_size, "ffn_in": bert.intermediate_size}
        per_layer = sum(outs[t] for t in self.ia3_targets.split(","))
        return bert.num_hidden_layers * per_layer + peft.head_params(bert, num_classes)


# ---------------------------------------------------------------------------- a student's routers


@dataclass
class CoinConfig:
    """Coin-flip routing (a test's own router)"""
    coin_p: float = settings.setting(0.5, "probability that a sample's PEFT modules are on in a layer")


class CoinHooks(Hooks):
    """Each sample's PEFT modules of each layer are on with probability p, whatever the sample."""
    draws = []  # (B, L) gates of every step, for the test to inspect

    def __init__(self, p, num_layers):
        self.p, self.num_layers = p, num_layers

    def gates(self, batch):
        g = torch.bernoulli(torch.full((len(batch.index), self.num_layers), self.p))
        CoinHooks.draws.append(g)
        return g


class Coin(methods.Method):
    name, summary = "coin", "coin-flip routing of the PEFT modules (a test's own router)"
    settings = CoinConfig

    def can_sit_on(self, kind_class):
        return kind_class.standalone and not kind_class.trains_base

    def hooks(self, model, args, num_train):
        return CoinHooks(args.coin_p, model.encoder.config.num_hidden_layers)


class SmallLossHooks(Hooks):
    """Small-loss selection (Han et al. 2018, Co-teaching Sec. 3): train on the 70% of each batch
    with the smallest loss - written as the loss hook alone."""
    kept = []

    def loss(self, out, batch):
        per_sample = F.cross_entropy(out.logits.float(), batch.label, reduction="none")  # (B,)
        keep = per_sample.argsort()[: max(1, int(0.7 * len(per_sample)))]
        SmallLossHooks.kept.append((len(keep), len(per_sample)))
        return per_sample[keep].mean(), {}


class SmallLoss(methods.Method):
    name, summary = "keep70", "small-loss selection on a PEFT kind (a test's own method)"

    def hooks(self, model, args, num_train):
        return SmallLossHooks()


@pytest.fixture
def registered():
    """The student's three entries, registered as in their own file, removed after the test."""
    peft.register(IA3)
    methods.register(Coin)
    methods.register(SmallLoss)
    yield
    del peft.KINDS["ia3"], methods.METHODS["coin"], methods.METHODS["keep70"]


def test_new_kind_and_routers_train_through_the_command_line(registered, tiny_pretrained_dir, tiny_dataset, tmp_path):
    base = ["--model", tiny_pretrained_dir, "--dataset", tiny_dataset, "--epochs", "1", "--noise", "sym", "--noise_rate", "0.2",
            "--val_fraction", "0", *TINY]
    assert "ia3" in methods.names() and "coin" in methods.names()
    assert train.parse_args(["--method", "ia3", "--ia3_targets", "key"]).ia3_targets == "key"  # its own flag

    summary = train.main([*base, "--method", "ia3", "--out", str(tmp_path / "ia3")])
    assert summary["trainable_params"] == IA3().trainable_params(TINY_CONFIG, 2)  # the closed form holds
    assert summary["config"]["lr"] == IA3.default_lr
    assert train.main(["--eval_only", "--load", str(tmp_path / "ia3"), "--no_progress"])["test_acc"] == \
        summary["kept_test_acc"]  # saved and reloaded through the same registry entry

    clear = train.main([*base, "--method", "clear", "--peft", "ia3", "--warmup_epochs", "1",
                        "--out", str(tmp_path / "clear")])  # CleaR routes the new kind at its base rate
    assert clear["config"]["base_rate"] == IA3.clear_base_rate and clear["det_auroc"] is not None

    CoinHooks.draws.clear()
    train.main([*base, "--method", "coin", "--peft", "ia3", "--coin_p", "0.25", "--out", str(tmp_path / "coin")])
    draws = torch.cat(CoinHooks.draws)
    assert draws.shape == (192, TINY_CONFIG.num_hidden_layers) and 0.1 < draws.mean() < 0.4

    SmallLossHooks.kept.clear()
    train.main([*base, "--method", "keep70", "--peft", "lora", "--out", str(tmp_path / "small")])
    assert SmallLossHooks.kept and all(k < n or n == 1 for k, n in SmallLossHooks.kept)


def test_a_router_cannot_sit_on_a_kind_it_does_not_allow(registered, capsys):
    with pytest.raises(SystemExit):
        train.main(["--method", "coin", "--peft", "none"])
    assert "cannot sit on --peft none" in capsys.readouterr().err
    with pytest.raises(ValueError, match="already exists"):
        methods.register(Coin)


# ---------------------------------------------------------------------------- a student's method file


# A student's own method file, outside methods/: a training step with two forward passes (R-Drop, Liang et al.
# 2021, Sec. 2: cross-entropy on two dropout views + their symmetric KL). The test writes it to a folder on the
# import path, as a user would keep it beside their scripts.
TWO_VIEWS_FILE = '''
import torch.nn.functional as F

import methods
from hooks import Hooks


class TwoViewsHooks(Hooks):
    forwards = 0  # forward passes made, for the test

    def step_loss(self, step_model, batch, autocast):
        with autocast():
            a = step_model(batch.input_ids, batch.attention_mask, with_features=True)
            b = step_model(batch.input_ids, batch.attention_mask, with_features=True)
        TwoViewsHooks.forwards += 2
        la, lb = F.log_softmax(a.logits.float(), -1), F.log_softmax(b.logits.float(), -1)
        kl = 0.5 * ((la.exp() * (la - lb)).sum(-1) + (lb.exp() * (lb - la)).sum(-1)).mean()
        ce = 0.5 * (F.cross_entropy(a.logits.float(), batch.label) + F.cross_entropy(b.logits.float(), batch.label))
        return ce + kl, {"kl": kl}


@methods.register
class TwoViews(methods.Method):
    name, summary = "twoviews", "R-Drop: two dropout views, CE on both + their symmetric KL (a student's file)"

    def hooks(self, model, args, num_train):
        return TwoViewsHooks()
'''


def test_a_method_file_outside_methods_trains_resumes_and_predicts(tiny_pretrained_dir, tiny_dataset, tmp_path,
                                                                   monkeypatch):
    """One file registers a method whose step makes two forward passes; train.py trains and resumes
    it, and a fresh predict.py process finds it again through the module name the run recorded."""
    (tmp_path / "student_two_views.py").write_text(TWO_VIEWS_FILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import student_two_views
    try:
        out = tmp_path / "run"
        argv = ["--model", tiny_pretrained_dir, "--dataset", tiny_dataset, "--method", "twoviews", "--epochs", "2",
                "--out", str(out), *TINY]
        saves, real_save = [], checkpoint.save_training_state

        def save_then_die(run_dir, *state):
            real_save(run_dir, *state)
            saves.append(run_dir)
            raise KeyboardInterrupt
        monkeypatch.setattr(checkpoint, "save_training_state", save_then_die)
        with pytest.raises(SystemExit):
            train.main(argv)
        monkeypatch.setattr(checkpoint, "save_training_state", real_save)
        summary = train.main([*argv, "--resume"])
        metrics = [json.loads(line) for line in open(out / "metrics.jsonl")]
        assert [m["epoch"] for m in metrics] == [1, 2] and all(m["train_kl"] >= 0 for m in metrics)
        assert student_two_views.TwoViewsHooks.forwards == 2 * 2 * 11  # 2 epochs x 11 batches x 2 passes
        assert summary["config"]["method_module"] == "student_two_views"
        env = {**os.environ, "PYTHONPATH": str(tmp_path)}
        done = subprocess.run([sys.executable, os.path.join(ROOT, "predict.py"), str(out), "a great film"],
                              capture_output=True, text=True, env=env, cwd=ROOT)
        assert done.returncode == 0, done.stderr
        assert "pos" in done.stdout or "neg" in done.stdout
    finally:
        methods.METHODS.pop("twoviews", None)


# ---------------------------------------------------------------------------- every method's accounting


CASES = [["--method", m] for m in methods.names()] + [["--method", "clear", "--peft", "adapter"],
                                                     ["--method", "match", "--peft", "none"]]


@pytest.mark.parametrize("argv", CASES, ids=[" ".join(a[1::2]) for a in CASES])
def test_every_method_builds_with_its_closed_form_parameter_count(argv, tiny_model_dir):
    args = train.parse_args([*argv, "--model", tiny_model_dir, "--max_len", "64"])
    model, _ = build.build_model(args, 3)
    method = methods.get(args.method)
    kind = peft.kind_config(method.kind_name(args), vars(args))
    assert count_params(model)[0] == kind.trainable_params(TINY_CONFIG, 3) + method.extra_params(TINY_CONFIG)
    assert isinstance(method.label(vars(args)), str)
    hooks = build.build_hooks(args, model, 10)
    assert isinstance(hooks, Hooks)


# ---------------------------------------------------------------------------- no peeking at true labels


@pytest.mark.parametrize("argv", [["--method", "lora"], ["--method", "clear", "--warmup_epochs", "1"],
                                  ["--method", "loramoe", "--moe_types", "clean", "--warmup_epochs", "1"],
                                  ["--method", "match"]], ids=["lora", "clear", "loramoe", "match"])
def test_training_is_blind_to_the_true_labels(argv, tiny_pretrained_dir, tmp_path):
    """Two runs see the same texts and the same observed labels, but different truths: labels
    drawn with noise from the true ones, or the observed labels given as clean data. If any
    per-batch hook read a true label, the training losses would differ; only the metrics may."""
    data_csv, test_csv = tmp_path / "train.csv", tmp_path / "test.csv"
    make_text_dataset(data_csv, n=96, seed=3)
    make_text_dataset(test_csv, n=40, seed=4)
    rows = data_csv.read_text().splitlines()
    true = torch.tensor([int(r.endswith(",pos")) for r in rows[1:]]).numpy()
    observed = noise.add_noise(true, "sym", 0.3, 2, seed=0)  # what train.py draws for --seed 0
    relabelled = tmp_path / "observed.csv"
    relabelled.write_text("\n".join([rows[0]] + [r.rsplit(",", 1)[0] + ("," + ("pos" if o else "neg"))
                                                 for r, o in zip(rows[1:], observed)]) + "\n")
    runs = []
    for dataset, noise_args in ((data_csv, ["--noise", "sym", "--noise_rate", "0.3"]), (relabelled, ["--noise", "none"])):
        out = tmp_path / dataset.stem
        train.main([*argv, "--model", tiny_pretrained_dir, "--dataset", str(dataset), "--test_file", str(test_csv),
                    "--epochs", "2", "--lr", "1e-2", "--out", str(out), *noise_args, *TINY])
        runs.append([json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))])
    training = lambda ms: [{k: v for k, v in m.items() if k.startswith("train_") and not k.endswith("_s")
                            and k != "train_clean_acc"} | {"test_acc": m["test_acc"]} for m in ms]
    assert training(runs[0]) == training(runs[1])
    assert runs[0][-1]["noisy_memorized"] is not None and runs[1][-1]["noisy_memorized"] is None  # truths differ


def test_a_registered_dataset_trains_by_name(tiny_model_dir, tmp_path, monkeypatch):
    """README "Make it yours": one decorated loader in data.py (or the user's file) is a new
    --dataset name, subsampled, noised and reported like the packaged ones."""
    monkeypatch.setattr(data, "DATASETS", data.DATASETS.copy())
    make_text_dataset(tmp_path / "toy.csv", n=80, seed=3)

    @data.register_dataset("toy")
    def toy(test_fraction):
        """a toy csv, its last quarter the test split"""
        rows = data.read_columns(tmp_path / "toy.csv", ("text", "label"))
        texts, labels = [t for _, t, _ in rows], np.array([int(lab == "pos") for _, _, lab in rows])
        cut = len(rows) * 3 // 4
        return data.TextData("toy", ["neg", "pos"], data.Split(texts[:cut], labels[:cut]),
                             data.Split(texts[cut:], labels[cut:]), notes=["toy: the test file's last quarter"])

    summary = train.main(["--model", tiny_model_dir, "--dataset", "toy", "--method", "lora", "--epochs", "1",
                          "--max_train", "50", "--out", str(tmp_path / "run"), *TINY])
    assert summary["num_classes"] == 2 and summary["num_test"] == 20 and summary["num_train"] == 45
    with pytest.raises(data.DataError, match=r"use mr, 20ng, r8, mr\+r8, toy or"):
        data.load_data("nonesuch")
