"""tools/bench.py without timing anything: its flags, its jobs, its FLOP count and its figures."""

import ast
import os

import pytest

import bench
import bench_jobs
import bench_report
import methods
import train
from conftest import TINY_CONFIG

TOOLS = os.path.dirname(os.path.abspath(bench.__file__))


def test_flags_shared_with_train_py_have_its_names():
    a = vars(bench.parse_args([]))
    t = vars(train.parse_args([]))
    for name in ("batch_size", "max_len", "eval_batch_size", "max_train", "device", "model", "grad_checkpointing"):
        assert name in a and name in t
    assert not {"batch", "seq", "warmup", "epoch", "epoch_train", "infer_batch", "no_hf"} & set(a)
    assert a["hf"] == "auto" and a["burn_in_steps"] == 3 and a["time_epoch_of"] == ["lora"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--hf", "yes"])


def test_the_jobs_come_from_the_registry():
    a = bench.parse_args(["--methods", "lora,full,clear", "--compile", "--precisions", "fp32"])
    jobs = bench.plan(a, use_hf=True)
    assert {"hf_lora", "hf_full", "hf_lora@compile", "epoch@lora"} <= set(jobs)
    assert not [j for j in jobs if j.startswith("hf_clear")]  # a method with hooks of its own has no twin
    assert not [j for j in bench.plan(a, use_hf=False) if j.startswith("hf_")]
    assert bench_jobs.hf_reference("full") == {}
    assert bench_jobs.hf_reference("lora")["target_modules"] == ["query", "value"]
    assert [m for m in bench_jobs.TIMED_METHODS if bench_jobs.merges(m)] == ["lora"]
    assert bench_report.sits_on("clear") == "lora" and bench_report.sits_on("lora") is None


def test_no_method_is_named_in_the_logic():
    """Method names appear only as flag defaults; what differs between methods comes from methods/."""
    names = set(methods.names())
    for file in ("bench.py", "bench_jobs.py", "bench_report.py"):
        with open(os.path.join(TOOLS, file)) as f:
            tree = ast.parse(f.read())
        defaults = {id(k.value) for k in ast.walk(tree) if isinstance(k, ast.keyword) and k.arg == "default"}
        named = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in names
                 and id(n) not in defaults]
        assert named == [], file


def test_full_fine_tuning_costs_three_forwards():
    """train_flops' docstring: training every weight is 3x the forward (every token in the top layer)."""
    C, I, L, B, T = TINY_CONFIG.hidden_size, TINY_CONFIG.intermediate_size, TINY_CONFIG.num_hidden_layers, 4, 16
    forward = L * (2 * 2 * C * C * T + 2 * (2 * C * C + 2 * C * I) * T + 4 * T * T * C) * B + 2 * C * 2 * B
    assert bench_report.train_flops("full", TINY_CONFIG, B, T, cls_only=False) == 3 * forward
    assert bench_report.train_flops("lora", TINY_CONFIG, B, T, cls_only=True) < 3 * forward


def test_figures_from_fake_timings():
    a = bench.parse_args(["--methods", "lora,clear", "--batch_size", "4", "--max_len", "16"])
    step = lambda s, peak=900.0: [{"s_step": [s], "peak_mb": peak, "before_mb": 400.0}]  # noqa: E731
    runs = {"lora": step(0.5), "clear": step(0.6), "hf_lora": step(1.0, 1000.0), "lora+bf16": step(0.25),
            "epoch@lora": [{"epoch_s": 30.0, "train_pass_s": 20.0}], "clear@ckpt": [{"error": "boom"}]}
    out, notes = {"matmul_gflops": 100.0, "matmul_bf16_gflops": 300.0}, []
    rows = bench_report.summarise(a, TINY_CONFIG, runs, out, notes)
    assert len(rows) == 4 and notes == ["clear@ckpt failed: boom"]
    assert out["lora_tok_s"] == 4 * 16 / 0.5
    assert out["lora_vs_hf"] == pytest.approx(2.0) and out["lora_vs_hf_paired"] == pytest.approx(2.0)
    assert out["lora_vs_hf_peak"] == pytest.approx(0.9)
    assert out["lora_bf16_vs_fp32"] == pytest.approx(2.0)
    assert out["clear_vs_lora_step"] == pytest.approx(1.2)
    assert out["lora_epoch_over_train_pass"] == pytest.approx(1.5)
    bench_report.add_infer(a, "lora", {"unmerged_s": [2.0], "merged_s": [1.0], "max_abs_diff": 1e-7}, out)
    assert out["lora_merge_speedup"] == out["merge_speedup"] == pytest.approx(2.0)


def test_speed_tables_are_medians_over_runs_with_their_range(tmp_path):
    """bench_runs: the median over saved runs (not the first or the last), the lowest and highest run
    beside it, a target judged on the median, and one clear error for a run cut short."""
    import doctest
    import json
    import bench_runs
    import tables
    assert doctest.testmod(bench_runs).failed == 0 and doctest.testmod(tables).failed == 0
    for i, (tok, vs_hf, epoch) in enumerate([(300.0, 1.2, 1.7), (100.0, 1.8, 1.3), (200.0, 1.6, 1.9)]):
        figures = {"torch": "x", "device": "cpu", "threads": 2, "batch": 32, "seq": 64, "repeats": 5, "steps": 5,
                   "matmul_gflops": 100.0, "lora_tok_s": tok, "lora_ms_step": 1000.0, "lora_gflops": 50.0,
                   "lora_peak_mb": 900.0 + i, "lora_vs_hf": vs_hf, "epoch_over_train_pass": epoch}
        (tmp_path / f"run{i + 1}.txt").write_text("round 1/5 lora: 1 ms/step\n" + json.dumps(figures) + "\n")
    made = bench_runs.blocks(str(tmp_path), shown="results/bench")
    assert made["runs"].startswith("3 runs") and "`results/bench/run*.txt`" in made["runs"]
    assert "| ours, LoRA, fp32 | 200 | 100-300 | 1000 | 50 | 50% of 100 | 902 |" in made["jobs"]
    assert "| **1.60x** | 1.20-1.80x | met |" in made["targets"]          # 1.6 >= 1.5 on the median
    assert "| **1.70x** | 1.30-1.90x | **missed by 0.30** |" in made["targets"]  # 1.7 > 1.4
    assert "bf16" not in made["jobs"]  # a job no run timed has no row
    (tmp_path / "run4.txt").write_text("round 1/5 lora: 1 ms/step\n")
    with pytest.raises(ValueError, match="run4.txt: the last line is not bench.py's JSON"):
        bench_runs.load_runs(str(tmp_path))
    assert bench_runs.blocks(str(tmp_path / "none")) == {}
