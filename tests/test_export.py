"""Folding PEFT modules into plain BERT weights, the Hugging Face export, and predict.py."""

import csv
import json
import os

import numpy as np
import pytest
import torch

import batching
import evaluation
import export
import peft
import speedups
import predict
import build
import saved_run
import train
from hooks import Hooks
from model import read_safetensors

TEXTS = ["great film", "awful boring plot and a dull cast", "the story was quite moving", "tedious"]


def built(tiny_model_dir, *flags, num_classes=3, seed=0):
    """A method's model and hooks as train.py builds them, its trainable tensors randomised (so every
    PEFT delta is non-zero), in eval mode."""
    args = train.parse_args(["--model", tiny_model_dir, "--max_len", "32", *flags])
    torch.manual_seed(seed)
    model, tokenizer = build.build_model(args, num_classes)
    hooks = build.build_hooks(args, model, 10)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model.eval(), tokenizer, hooks


def logits_of(model, tokenizer, hooks, texts=TEXTS):
    from contextlib import nullcontext
    ids = batching.encode(tokenizer, texts, 32)
    return torch.tensor(evaluation.Evaluator(8, torch.device("cpu"), nullcontext, hooks).logits(model, ids))


FOLDABLE = [("--method", "full"), ("--method", "probe"), ("--method", "lora"), ("--method", "lora", "--lora_targets", "all-linear"),
            ("--method", "bitfit"), ("--method", "clear", "--peft", "lora", "--clear_eval", "expected"),
            ("--method", "clear", "--peft", "bitfit", "--clear_eval", "all"), ("--method", "match", "--peft", "lora")]


@pytest.mark.parametrize("flags", FOLDABLE, ids=" ".join)
def test_fold_and_export_reproduce_the_logits(tiny_model_dir, tmp_path, flags):
    model, tokenizer, hooks = built(tiny_model_dir, *flags)
    before = logits_of(model, tokenizer, hooks)
    assert speedups.can_fold(model, hooks)  # train.py's evaluation passes run folded
    plain = export.fold_model(model, hooks)
    assert not any(peft.is_peft_param(n) and not n.startswith("head.") for n, _ in plain.named_parameters())
    folded = logits_of(plain, tokenizer, Hooks())
    torch.testing.assert_close(folded, before, atol=1e-5, rtol=1e-5)  # the same function, float rounding apart
    assert torch.equal(logits_of(model, tokenizer, hooks), before)  # folding left the trained model alone

    out = export.export_hf(model, hooks, ["a", "b", "c"], tiny_model_dir, str(tmp_path / "hf"))
    loaded, tok, names = export.load_exported(out)
    assert names == ["a", "b", "c"]
    # through our loader: every weight bit for bit; the logits to the last float bits (a CPU kernel may
    # round differently for equal tensors at another memory alignment, so equality is not asked of them)
    plain_state, loaded_state = plain.state_dict(), loaded.state_dict()
    assert plain_state.keys() == loaded_state.keys()
    assert all(torch.equal(plain_state[k], loaded_state[k]) for k in plain_state)
    torch.testing.assert_close(logits_of(loaded, tok, Hooks()), folded, atol=1e-6, rtol=0)

    # BertForSequenceClassification's head on the exported tensors: classifier(tanh(pooler(h_cls)))
    state = read_safetensors(os.path.join(out, "model.safetensors"))
    ids, mask = batching.collate(batching.encode(tok, TEXTS, 32), np.arange(len(TEXTS)))
    with torch.no_grad():
        h = loaded.encoder(ids, mask)[:, 0]
        pooled = torch.tanh(h @ state["bert.pooler.dense.weight"].T + state["bert.pooler.dense.bias"])
        hf = pooled @ state["classifier.weight"].T + state["classifier.bias"]
    torch.testing.assert_close(hf, before, atol=1e-4, rtol=1e-4)
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["id2label"] == {"0": "a", "1": "b", "2": "c"} and config["label2id"]["c"] == 2
    assert os.path.isfile(os.path.join(out, "tokenizer.json"))


@pytest.mark.parametrize("flags, fragment", [
    (("--method", "adapter"), "GELU"),
    (("--method", "prefix"), "key/value positions"),
    (("--method", "loramoe"), "router"),
    (("--method", "clear", "--peft", "lora", "--clear_eval", "sample"), "sampled per example"),
    (("--method", "match", "--peft", "lora", "--match_eval", "mix"), "mixes the examples"),
], ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_what_cannot_fold_says_why(tiny_model_dir, flags, fragment):
    model, _, hooks = built(tiny_model_dir, *flags)
    with pytest.raises(export.ExportError, match=fragment):
        export.fold_model(model, hooks)
    assert not speedups.can_fold(model, hooks) and speedups.evaluation_model(model, hooks, False) is model


def test_load_exported_rejects_other_folders(tiny_model_dir, tmp_path):
    with pytest.raises(export.ExportError, match="not a config written by --export_hf"):
        export.load_exported(tiny_model_dir)  # a plain pretrained BERT folder
    with pytest.raises(export.ExportError, match="not found"):
        export.load_exported(str(tmp_path))


# ---------------------------------------------------------------- a trained run, end to end

def run(tiny_model_dir, tiny_dataset, out, *extra):
    return train.main(["--model", tiny_model_dir, "--dataset", tiny_dataset, "--out", str(out), "--lr", "1e-2",
                       "--warmup_ratio", "0", "--batch_size", "16", "--epochs", "2", "--max_len", "64",
                       "--no_progress", "--noise", "sym", "--noise_rate", "0.3", *extra])


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora_run")
    summary = run(tiny_model_dir, tiny_dataset, out / "run", "--method", "lora", "--export_hf", str(out / "hf"))
    return out, summary


def test_run_writes_its_user_outputs(lora_run, tiny_dataset):
    """label_issues.csv ranks every row of the user's file - training, validation and test rows, each split
    most suspect first - and flags the detector's estimated share of each."""
    out, summary = lora_run
    issues = list(csv.DictReader(open(out / "run" / "label_issues.csv")))
    lines = sum(1 for _ in open(tiny_dataset)) - 1
    assert sorted(int(r["row"]) for r in issues) == sorted(set(int(r["row"]) for r in issues)) and len(issues) == lines
    by_split = {s: [r for r in issues if r["split"] == s] for s in ("train", "validation", "test")}
    assert len(by_split["train"]) == summary["num_train"] and len(by_split["test"]) == summary["num_test"]
    assert len(by_split["validation"]) == 19
    for rows in by_split.values():
        scores = [float(r["suspicion"]) for r in rows]
        assert scores == sorted(scores, reverse=True)
        flags = [int(r["flagged_noisy"]) for r in rows]
        assert sum(flags) == round(summary["issues_estimated_rate"] * len(rows)) and flags == sorted(flags, reverse=True)
    assert summary["issues_flagged"] == pytest.approx(np.mean([int(r["flagged_noisy"]) for r in by_split["train"]]))
    drawn = list(csv.DictReader(open(out / "run" / "noisy_labels.csv")))
    assert len(drawn) == summary["num_train"] + 19  # the validation share carries the same noise
    matrix = json.load(open(out / "run" / "noise_matrix.json"))
    realised = np.array(matrix["realised_true_x_observed"])
    assert realised.sum() == summary["num_train"]
    assert 1 - np.trace(realised) / realised.sum() == pytest.approx(summary["realized_noise_rate"])
    metrics = [json.loads(line) for line in open(out / "run" / "metrics.jsonl")]
    assert all(m["test_nll"] > 0 and 0 <= m["test_ece"] <= 1 for m in metrics)
    assert sum(json.load(open(out / "run" / "calibration.json"))["count"]) == summary["num_test"]


def test_a_noise_file_trains_the_same_run_again(lora_run, tiny_model_dir, tiny_dataset, tmp_path, capsys):
    out, summary = lora_run
    again = run(tiny_model_dir, tiny_dataset, tmp_path / "again", "--method", "lora", "--noise", "asym",
                "--noisy_labels", str(out / "run" / "noisy_labels.csv"))
    a = [json.loads(line) for line in open(out / "run" / "metrics.jsonl")]
    b = [json.loads(line) for line in open(tmp_path / "again" / "metrics.jsonl")]
    assert [m["train_loss"] for m in a] == [m["train_loss"] for m in b]
    assert again["realized_noise_rate"] == summary["realized_noise_rate"]
    short = tmp_path / "short.csv"
    short.write_text("".join(open(out / "run" / "noisy_labels.csv").readlines()[:-3]))
    with pytest.raises(SystemExit):
        run(tiny_model_dir, tiny_dataset, tmp_path / "bad", "--method", "lora", "--noisy_labels", str(short))
    assert "labels for a training split of" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()


def test_export_that_cannot_work_fails_before_training(tiny_model_dir, tiny_dataset, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run(tiny_model_dir, tiny_dataset, tmp_path / "run", "--method", "adapter", "--export_hf", str(tmp_path / "hf"))
    assert "cannot be folded" in capsys.readouterr().err
    assert not (tmp_path / "run" / "metrics.jsonl").exists() and not (tmp_path / "hf").exists()


def test_predict_cli(lora_run, tmp_path, capsys, monkeypatch):
    out, _ = lora_run
    model, tokenizer, hooks, cfg, names, _ = saved_run.load_run(str(out / "run"), "cpu")
    expected = torch.softmax(logits_of(model, tokenizer, hooks), 1).numpy()
    probs = predict.main([str(out / "run"), *TEXTS])  # LoRA folded for inference
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    table = capsys.readouterr().out.splitlines()
    assert len(table) == len(TEXTS) and table[1].split()[0] in names
    np.testing.assert_allclose(predict.main([str(out / "hf"), *TEXTS]), probs, atol=1e-6)  # the export
    txt, jsonl, csv_in = tmp_path / "t.txt", tmp_path / "t.jsonl", tmp_path / "t.csv"
    txt.write_text("\n".join(TEXTS) + "\n\n")
    jsonl.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(TEXTS)))
    csv_in.write_text("id,text\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(TEXTS)))
    for f in (txt, jsonl, csv_in):
        np.testing.assert_allclose(predict.main([str(out / "run"), "--file", str(f)]), probs, atol=1e-6)
    predict.main([str(out / "run"), "--file", str(txt), "--out", str(tmp_path / "p.csv")])
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert [r["text"] for r in rows] == TEXTS and rows[0]["label"] == names[int(probs[0].argmax())]


@pytest.mark.parametrize("argv, fragment", [
    (["{run}", ""], "empty text"),
    (["{tmp}/nothing", "text"], "neither a finished run"),
    (["{run}", "--file", "{tmp}/missing.txt"], "file not found"),
    (["{run}", "--file", "{tmp}/notext.csv"], "need columns 'text'"),
    (["{run}", "--file", "{tmp}/latin1.txt"], "not UTF-8"),
])
def test_predict_bad_input_is_one_line(lora_run, tmp_path, capsys, argv, fragment):
    (tmp_path / "notext.csv").write_text("id,label\n1,pos\n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    argv = [a.format(run=lora_run[0] / "run", tmp=tmp_path) for a in argv]
    with pytest.raises(SystemExit) as e:
        predict.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and fragment in err[0]


@pytest.mark.parametrize("flags", [("--method", "adapter"), ("--method", "clear", "--peft", "lora", "--clear_eval",
                                                              "sample", "--warmup_epochs", "0")], ids=" ".join)
def test_predict_runs_what_cannot_fold_with_its_own_gates(tiny_model_dir, tiny_dataset, tmp_path, flags):
    run(tiny_model_dir, tiny_dataset, tmp_path / "run", *flags, "--epochs", "1")
    model, tokenizer, hooks, _, _, _ = saved_run.load_run(str(tmp_path / "run"), "cpu")
    expected = torch.softmax(logits_of(model, tokenizer, hooks), 1).numpy()  # gates seeded per pass: repeatable
    np.testing.assert_allclose(predict.main([str(tmp_path / "run"), *TEXTS]), expected, atol=1e-6)
