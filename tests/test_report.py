"""report.py aggregates seeds into mean ± sample std, one row per (dataset, noise, method)."""

import json

import numpy as np

import report


def fake_run(tmp_path, name, seed, best, method="lora", noise="sym", rate=0.4):
    d = tmp_path / name
    d.mkdir()
    cfg = {"method": method, "dataset": "mr", "noise": noise, "noise_rate": rate, "seed": seed, "lr": 1e-3}
    summary = {"best_test_acc": best, "last_test_acc": best - 0.01, "noisy_memorized": 0.2,
               "realized_noise_rate": 0.4, "trainable_params": 1234, "config": cfg}
    (d / "summary.json").write_text(json.dumps(summary))
    (d / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_acc": best, "noisy_memorized": 0.2}) + "\n")


def test_table_aggregates_seeds(tmp_path):
    for seed, best in enumerate([0.80, 0.82, 0.84]):
        fake_run(tmp_path, f"a{seed}", seed, best)
    fake_run(tmp_path, "b", 0, 0.7, method="full")
    lines = report.table(report.load_runs([str(tmp_path)])).splitlines()
    assert len(lines) == 2 + 2  # header, separator, one row per method
    lora = next(line for line in lines if "| lora |" in line)
    std = np.std([80, 82, 84], ddof=1)
    assert f"82.0 ± {std:.1f}" in lora and "| 3 |" in lora
    assert "| 70.0 |" in next(line for line in lines if "| full |" in line)


def test_variants_are_never_pooled_as_seeds(tmp_path):
    """Two settings of one method (here a detector flag) become two rows, named by the setting."""
    for seed in (0, 1):
        for ema in (0.9, 0.0):
            fake_run(tmp_path, f"c{seed}-{ema}", seed, 0.6 + ema / 10, method="lora")
            cfg_path = tmp_path / f"c{seed}-{ema}" / "summary.json"
            summary = json.loads(cfg_path.read_text())
            summary["config"]["loss_ema"] = ema
            cfg_path.write_text(json.dumps(summary))
    lines = report.table(report.load_runs([str(tmp_path)])).splitlines()
    rows = [line for line in lines[2:]]
    assert len(rows) == 2 and all("| 2 |" in row for row in rows)
    # the run at train.py's default (0.9) is named plainly, the other by the setting it changes
    assert any("| lora |" in row for row in rows) and any("| lora, loss_ema 0.0 |" in row for row in rows)


def test_variant_names_fall_back_to_every_setting_when_short_names_would_collide(tmp_path):
    """Two runs off the default in different settings are named by what they change; if naming only
    the non-default settings cannot tell runs apart, every differing setting is named."""
    for name, changes in (("a", {"lr": 1e-3}), ("b", {"lr": 5e-3}), ("c", {"lr": 1e-3, "epochs": 8})):
        fake_run(tmp_path, name, 0, 0.6, method="lora")
        path = tmp_path / name / "summary.json"
        summary = json.loads(path.read_text())
        summary["config"].update(changes)
        path.write_text(json.dumps(summary))
    rows = report.table(report.load_runs([str(tmp_path)])).splitlines()[2:]
    assert len(rows) == 3 and all("| 1 |" in row for row in rows)
    assert len({row.split("|")[3] for row in rows}) == 3


def test_memorised_rise_is_the_change_over_the_last_two_epochs(tmp_path):
    """The results tables' memorised_rise column: memorised share at the last epoch minus two epochs earlier, in points."""
    for seed, shares in enumerate([[0.1, 0.3, 0.4, 0.6], [0.1, 0.2, 0.5, 0.4]]):
        fake_run(tmp_path, f"a{seed}", seed, 0.8)
        (tmp_path / f"a{seed}" / "metrics.jsonl").write_text(
            "".join(json.dumps({"epoch": e + 1, "noisy_memorized": m}) + "\n" for e, m in enumerate(shares)))
    fake_run(tmp_path, "short", 0, 0.7, method="full")  # one epoch: no rise to report
    lines = report.table(report.load_runs([str(tmp_path)]), ["memorised_rise"]).splitlines()
    rises = [100 * (0.6 - 0.3), 100 * (0.4 - 0.2)]
    lora = next(line for line in lines if "| lora |" in line)
    assert lora.endswith(f"| {np.mean(rises):.1f} ± {np.std(rises, ddof=1):.1f} |")
    assert next(line for line in lines if "| full |" in line).endswith("| - |")
