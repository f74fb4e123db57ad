"""End-to-end runs of train.py on a tiny random model: learning, logs, resume, bad input."""

import json
import os
import subprocess
import sys

import pytest

import checkpoint
import hardware
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_args(model_dir, dataset, out, *extra):
    return ["--method", "full", "--model", model_dir, "--dataset", dataset, "--out", str(out), "--lr", "1e-2",
            "--warmup_ratio", "0", "--batch_size", "16", "--epochs", "3", "--max_len", "64", "--no_progress", *extra]


def read_metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_training_learns_and_logs(tiny_model_dir, tiny_dataset, tmp_path):
    summary = train.main(run_args(tiny_model_dir, tiny_dataset, tmp_path, "--noise", "none"))
    metrics = read_metrics(tmp_path)
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    assert summary["best_test_acc"] > 0.75  # chance is 0.5; one keyword decides the label
    for key in ("selected_test_acc", "selected_epoch", "best_test_acc", "last_test_acc", "noisy_memorized",
                "realized_noise_rate", "trainable_params", "wall_s", "samples_per_s", "peak_mem_mb", "config"):
        assert key in json.load(open(tmp_path / "summary.json"))
    val = [m["val_acc"] for m in metrics]  # the epoch chosen on noisy validation data, and its test accuracy
    assert summary["selected_epoch"] == val.index(max(val)) + 1
    assert summary["selected_test_acc"] == metrics[summary["selected_epoch"] - 1]["test_acc"]
    assert summary["num_train"] == 192 - 19  # 240 rows, 20% test, 10% of the rest held out for validation
    assert summary["realized_noise_rate"] == 0.0 and summary["noisy_memorized"] is None


def test_noisy_run_reports_memorisation(tiny_model_dir, tiny_dataset, tmp_path):
    summary = train.main(run_args(tiny_model_dir, tiny_dataset, tmp_path, "--noise", "sym", "--noise_rate", "0.3",
                                  "--epochs", "1"))
    m = read_metrics(tmp_path)[0]
    assert 0.15 < summary["realized_noise_rate"] < 0.45  # 192 train samples, r = 0.3
    assert abs(m["noisy_memorized"] + m["noisy_corrected"] + m["noisy_other"] - 1) < 1e-9
    assert m["noisy_other"] == pytest.approx(0.0)  # binary: every prediction is either label


def test_resume_equals_uninterrupted_run(tiny_model_dir, tiny_dataset, tmp_path, monkeypatch):
    full = tmp_path / "full"
    train.main(run_args(tiny_model_dir, tiny_dataset, full, "--noise", "sym", "--noise_rate", "0.2"))

    # a run that dies right after writing its second checkpoint
    cut = tmp_path / "cut"
    saves = []
    real_save = checkpoint.save_training_state

    def save_then_die(out, *state):
        real_save(out, *state)
        saves.append(out)
        if len(saves) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_training_state", save_then_die)
    with pytest.raises(SystemExit) as e:
        train.main(run_args(tiny_model_dir, tiny_dataset, cut, "--noise", "sym", "--noise_rate", "0.2"))
    assert e.value.code == 130
    assert len(read_metrics(cut)) == 2
    monkeypatch.setattr(checkpoint, "save_training_state", real_save)
    train.main(run_args(tiny_model_dir, tiny_dataset, cut, "--noise", "sym", "--noise_rate", "0.2", "--resume"))

    strip = lambda ms: [{k: v for k, v in m.items() if not k.endswith("_s")} for m in ms]  # timings differ
    assert strip(read_metrics(cut)) == strip(read_metrics(full))


def expect_error(capsys, argv, *fragments):
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_bad_inputs_give_one_clear_error(tiny_model_dir, tiny_dataset, tmp_path, capsys):
    base = lambda out, *a: run_args(tiny_model_dir, tiny_dataset, tmp_path / out, *a)
    expect_error(capsys, base("a", "--noise_rate", "1.5"), "1.5")
    expect_error(capsys, base("b", "--noise", "asym", "--noise_rate", "0.5"), "0.5")
    expect_error(capsys, run_args(str(tmp_path / "no_model"), tiny_dataset, tmp_path / "c"), "no_model")
    expect_error(capsys, run_args(tiny_model_dir, str(tmp_path / "missing.csv"), tmp_path / "d"), "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nfine text,pos\n ,neg\n")
    expect_error(capsys, run_args(tiny_model_dir, str(bad), tmp_path / "e"), "bad.csv")
    expect_error(capsys, base("f", "--resume"), "no checkpoint")
    expect_error(capsys, base("g", "--method", "match", "--match_tau", "0"), "match_tau")
    expect_error(capsys, base("h", "--method", "clear", "--base_rate", "1.5"), "1.5")
    expect_error(capsys, base("i", "--epochs", "0"), "--epochs must be >= 1")
    expect_error(capsys, base("j", "--batch_size", "0"), "--batch_size must be >= 1")
    expect_error(capsys, base("k", "--max_len", "100"), "--max_len 100", "64 positions")
    expect_error(capsys, base("l", "--lora_r", "0", "--method", "lora"), "lora_r")
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("text,label\ncaf\u00e9 au lait,pos\nfine,neg\n".encode("latin-1"))
    expect_error(capsys, run_args(tiny_model_dir, str(latin1), tmp_path / "m"), "latin1.csv", "not UTF-8", "0xe9")
    assert not any((tmp_path / d).exists() for d in "ijklm")  # nothing was created for a run that cannot start


def test_bad_checkpoints_end_resume_with_one_line_and_stay(tiny_model_dir, tiny_dataset, tmp_path, capsys):
    """A corrupt, truncated or foreign checkpoint, or an old pickle, is never executed or deleted."""
    good = tmp_path / "good"
    train.main(run_args(tiny_model_dir, tiny_dataset, good, "--epochs", "1"))
    data = (good / checkpoint.CHECKPOINT_NAME).read_bytes()
    cases = {"corrupt": b"\x00" * 64, "truncated": data[: len(data) // 2],
             "foreign": (good / "peft.safetensors").read_bytes()}
    for name, content in cases.items():
        d = tmp_path / name
        d.mkdir()
        (d / checkpoint.CHECKPOINT_NAME).write_bytes(content)
        err = expect_error(capsys, run_args(tiny_model_dir, tiny_dataset, d, "--epochs", "1", "--resume"),
                           checkpoint.CHECKPOINT_NAME)
        assert err.count("\n") == 1, err
        assert (d / checkpoint.CHECKPOINT_NAME).read_bytes() == content
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("mine")
    expect_error(capsys, run_args(tiny_model_dir, tiny_dataset, empty, "--epochs", "1", "--resume"), "no checkpoint")
    assert (empty / "notes.txt").read_text() == "mine"


def test_resume_accepts_a_checkpoint_without_settings_added_since(tiny_model_dir, tiny_dataset, tmp_path):
    """A checkpoint written before a setting existed resumes: the setting takes this command's value."""
    first = train.main(run_args(tiny_model_dir, tiny_dataset, tmp_path, "--epochs", "1"))
    path = tmp_path / checkpoint.CHECKPOINT_NAME
    state = checkpoint.load_state(str(path))
    del state["config"]["val_fraction"]  # as if the run predated --val_fraction
    checkpoint.save_state(str(path), state)
    again = train.main(run_args(tiny_model_dir, tiny_dataset, tmp_path, "--epochs", "1", "--resume"))
    assert again["last_test_acc"] == first["last_test_acc"]


def test_existing_run_is_not_overwritten(tiny_model_dir, tiny_dataset, tmp_path, capsys):
    train.main(run_args(tiny_model_dir, tiny_dataset, tmp_path, "--epochs", "1"))
    before = (tmp_path / "summary.json").read_text()
    expect_error(capsys, run_args(tiny_model_dir, tiny_dataset, tmp_path, "--epochs", "1"), "--resume", "--overwrite")
    assert (tmp_path / "summary.json").read_text() == before
    expect_error(capsys, run_args(tiny_model_dir, tiny_dataset, tmp_path, "--epochs", "2", "--resume"), "epochs")


def test_command_line_error_has_no_traceback(tmp_path):
    """The real entry point, as a user types it: a corrupt weights file, exit code 2, one line."""
    model_dir = tmp_path / "broken"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    (model_dir / "model.safetensors").write_bytes(b"not a safetensors file")
    proc = subprocess.run([sys.executable, "train.py", "--model", str(model_dir), "--out", str(tmp_path / "o")],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "model.safetensors" in proc.stderr


@pytest.mark.parametrize("method", ["lora", "adapter", "prefix", "bitfit", "full", "loramoe", "match", "clear"])
def test_saved_run_reloads_to_the_same_accuracy(tiny_model_dir, tiny_dataset, tmp_path, method):
    """--eval_only --load rebuilds the model from the pretrained weights + saved PEFT file."""
    extra = {"loramoe": ["--moe_types", "clean", "--warmup_epochs", "1"], "clear": ["--warmup_epochs", "1", "--noise", "sym"],
             "match": ["--peft", "bitfit"]}.get(method, [])
    summary = train.main(run_args(tiny_model_dir, tiny_dataset, tmp_path, "--method", method, "--epochs", "2",
                                  "--lr", "1e-2" if method != "full" else "1e-3", *extra))
    assert (tmp_path / "peft.safetensors").exists() and (tmp_path / "peft_config.json").exists()
    logged = read_metrics(tmp_path)[-1]
    for key in {"loramoe": ["moe_g0_clean", "moe_balance", "train_balance"], "clear": ["det_auroc", "gate_rate_noisy"],
                "match": ["match_diag", "match_same_label"]}.get(method, []):
        assert logged[key] is not None, key
    result = train.main(["--eval_only", "--load", str(tmp_path), "--no_progress"])
    assert result["test_acc"] == summary["kept_test_acc"]  # the kept (selected) epoch, evaluated as the run did
    if method != "full":
        assert summary["trainable_params"] < summary["total_params"] / 5


@pytest.mark.skipif(not __import__("torch").ops.mkldnn._is_mkldnn_bf16_supported(), reason="no CPU bf16")
def test_bf16_autocast_run_learns_and_keeps_fp32_metrics(tiny_model_dir, tiny_dataset, tmp_path):
    import torch
    summary = train.main(run_args(tiny_model_dir, tiny_dataset, tmp_path, "--noise", "none", "--precision", "bf16"))
    assert summary["best_test_acc"] > 0.75 and summary["config"]["precision"] == "bf16"
    device, autocast = train.pick_device("cpu", "bf16")
    with autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    _, fp32 = train.pick_device("cpu", "fp32")
    with fp32():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_auto_precision_is_bf16_only_on_a_cpu_with_native_bf16(monkeypatch):
    """--precision auto: bf16 where the CPU multiplies bf16 natively (measured faster at the same
    accuracy, results/precision), fp32 where it would be emulated; a named precision is kept."""
    cpu = __import__("torch").device("cpu")
    monkeypatch.setattr(hardware, "CPU_AUTO_PRECISION", "bf16")
    for native, want in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: native)
        assert train.resolve_precision(cpu, "auto") == want
        assert train.resolve_precision(cpu, "fp32") == "fp32" and train.resolve_precision(cpu, "bf16") == "bf16"
    assert isinstance(train.cpu_has_native_bf16(), bool)


def test_resume_ignores_settings_of_methods_the_run_does_not_use(tiny_model_dir, tiny_dataset, tmp_path,
                                                                 monkeypatch):
    """A newer version that changed another method's default still resumes this run."""
    from dataclasses import fields
    import methods
    cut, real_save = tmp_path / "cut", checkpoint.save_training_state

    def save_then_die(out, *state):
        real_save(out, *state)
        raise KeyboardInterrupt
    monkeypatch.setattr(checkpoint, "save_training_state", save_then_die)
    with pytest.raises(SystemExit):
        train.main(run_args(tiny_model_dir, tiny_dataset, cut, "--epochs", "2"))
    monkeypatch.setattr(checkpoint, "save_training_state", real_save)
    far_rows = next(f for f in fields(methods.get("far").settings) if f.name == "far_rows")
    monkeypatch.setattr(far_rows, "default", "drop" if far_rows.default != "drop" else "relabel")
    assert train.main(run_args(tiny_model_dir, tiny_dataset, cut, "--epochs", "2", "--resume"))["config"]["epochs"] == 2


@pytest.mark.parametrize("keep", ["selected", "last"])
def test_the_kept_model_is_the_reported_one(tiny_model_dir, tiny_dataset, tmp_path, keep):
    """--keep selected (the default) saves the epoch chosen on noisy validation, --keep last the last;
    summary.json says which, --eval_only reproduces its test accuracy exactly, and --eval_only --export_hf
    exports it."""
    summary = train.main(run_args(tiny_model_dir, tiny_dataset, tmp_path / "run", "--epochs", "3", "--lr", "1e-2",
                                  "--keep", keep))
    want = summary["selected_epoch"] if keep == "selected" else 3
    assert summary["kept_epoch"] == want
    assert summary["kept_test_acc"] == read_metrics(tmp_path / "run")[want - 1]["test_acc"]
    result = train.main(["--eval_only", "--load", str(tmp_path / "run"), "--no_progress",
                         "--export_hf", str(tmp_path / "hf")])
    assert result["test_acc"] == summary["kept_test_acc"]
    assert (tmp_path / "hf" / "config.json").exists()


def test_your_own_file_trains_on_its_labels_unless_noise_is_asked_for(tiny_model_dir, tiny_dataset, tmp_path, capsys):
    """A user file: no synthetic noise by default (the log says so), noise only with --noise, and a rate
    without --noise is refused in one line; a packaged benchmark keeps its sym default."""
    own = train.main(run_args(tiny_model_dir, tiny_dataset, tmp_path / "own", "--epochs", "1"))
    assert own["config"]["noise"] == "none" and own["realized_noise_rate"] == 0.0
    assert "noise: none - training on the labels as given" in capsys.readouterr().out
    asked = train.main(run_args(tiny_model_dir, tiny_dataset, tmp_path / "asked", "--epochs", "1", "--noise", "sym"))
    assert asked["config"]["noise_rate"] == 0.2 and asked["realized_noise_rate"] > 0
    expect_error(capsys, run_args(tiny_model_dir, tiny_dataset, tmp_path / "rate", "--noise_rate", "0.3"),
                 "--noise_rate 0.3 without --noise")
    packaged = train.parse_args(["--dataset", "mr"])
    assert (packaged.noise, packaged.noise_rate) == ("sym", 0.2)


@pytest.mark.parametrize("argv, fragment", [
    (["--method", "lora", "--base_rate", "0.5"], "--base_rate is a setting of clear"),
    (["--method", "full", "--lora_r", "4"], "--lora_r is a setting of lora"),
    (["--eval_only"], "--eval_only needs --load"),
    (["--eval_only", "--load", "runs/x", "--epochs", "3"], "--epochs does nothing with --eval_only"),
    (["--load", "runs/x"], "--load is for --eval_only"),
    (["--resume", "--overwrite"], "choose one"),
    (["--dataset", "my.csv", "--noise_rate", "0.3"], "--noise_rate 0.3 without --noise"),
], ids=["other-method", "other-kind", "eval-no-load", "eval-train-flag", "load-alone", "resume-overwrite",
        "rate-no-noise"])
def test_no_flag_is_silently_ignored(argv, fragment, capsys):
    """A flag typed where it cannot act stops the run in one line, before anything is loaded."""
    expect_error(capsys, argv, fragment)
