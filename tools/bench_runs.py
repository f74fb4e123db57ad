"""
The speed tables of docs/speed.md from several saved runs of tools/bench.py: one run's figures are
medians over its rounds, and rounds within one run share the machine's mood (another job, a warm
cache), so the tables take the median over runs and show the lowest and highest run beside it.

Each saved run is bench.py's whole output, its last line the JSON of figures (bench_report.py's
keys). experiments.py's `bench` entry turns results/bench/run*.txt into the `grid:bench:*` blocks:

    python tools/bench.py --hf require --methods lora,full,clear --time_epoch_of lora --repeats 5 \
        --steps 5 --burn_in_steps 2 --threads 2 --no_data > results/bench/run1.txt   # run2, run3 likewise
    python tools/experiments.py --grid bench --no_run --write_readme

Usage:
    >>> runs = [{"lora_tok_s": 100.0}, {"lora_tok_s": 300.0}, {"lora_tok_s": 200.0}]
    >>> over_runs(runs, "lora_tok_s")
    (200.0, 100.0, 300.0)
"""

import glob
import json
import os
import statistics

from tables import markdown_table

# (job key in bench_report's figures, what the table calls it); fp32 then bf16 autocast
JOBS = [("lora", "ours, LoRA"), ("full", "ours, full fine-tuning"), ("clear", "ours, CleaR (LoRA)"),
        ("hf_lora", "transformers + peft, LoRA"), ("hf_full", "transformers, full")]

# (figure, what it compares, the target or None (a figure only), True = at least the target, False = at most)
TARGETS = [("lora_vs_hf", "LoRA fp32 tokens/s over transformers + peft", 1.5, True),
           ("lora_vs_hf_paired", "the same, the ratio within each round (median of rounds)", 1.5, True),
           ("lora_vs_hf_peak", "LoRA fp32 peak memory over transformers + peft", 1.0, False),
           ("lora_bf16_vs_fp32", "LoRA bf16 autocast tokens/s over our fp32", 1.5, True),
           ("lora_vs_hf_bf16", "LoRA bf16 tokens/s over transformers + peft in bf16", 1.5, True),
           ("epoch_over_train_pass", "one train.py epoch over its training pass (bf16)", 1.4, False),
           ("merge_speedup", "merged LoRA inference tokens/s over unmerged (fp32, batch 128)", None, True)]


def load_runs(directory):
    """[figures dict] of every run*.txt in `directory` (sorted by name); a file whose last line is not
    bench.py's JSON raises ValueError naming it."""
    runs = []
    for path in sorted(glob.glob(os.path.join(directory, "run*.txt"))):
        with open(path) as f:
            lines = [line for line in f.read().splitlines() if line.strip()]
        try:
            runs.append(json.loads(lines[-1]))
        except (IndexError, json.JSONDecodeError):
            raise ValueError(f"{path}: the last line is not bench.py's JSON of figures (an interrupted run?)") from None
    return runs


def over_runs(runs, key):
    """(median, lowest, highest) of one figure over the runs that have it; None when none has."""
    values = [r[key] for r in runs if key in r]
    return (statistics.median(values), min(values), max(values)) if values else None


def jobs_table(runs):
    """Markdown: per job and precision, tokens/s (median of the runs' medians, lowest-highest run), the
    median ms/step, GFLOP/s and share of its precision's matmul roof, and the highest peak memory."""
    head = ["job", "tok/s", "lowest-highest run", "ms/step", "GFLOP/s", "of its roof", "peak MB"]
    rows = []
    for suffix, precision in (("", "fp32"), ("_bf16", "bf16")):
        roof = over_runs(runs, "matmul_bf16_gflops" if suffix else "matmul_gflops")
        for job, name in JOBS:
            tok = over_runs(runs, f"{job}{suffix}_tok_s")
            if tok is None:
                continue
            ms, gflops = over_runs(runs, f"{job}{suffix}_ms_step")[0], over_runs(runs, f"{job}{suffix}_gflops")[0]
            peak = over_runs(runs, f"{job}{suffix}_peak_mb")[2]
            share = f"{100 * gflops / roof[0]:.0f}% of {roof[0]:.0f}" if roof else "-"
            rows.append([f"{name}, {precision}", f"{tok[0]:,.0f}", f"{tok[1]:,.0f}-{tok[2]:,.0f}", f"{ms:.0f}",
                         f"{gflops:.0f}", share, f"{peak:,.0f}"])
    return markdown_table(head, rows)


def targets_table(runs):
    """Markdown: each target's figure as the median over runs, the lowest and highest run, and whether the
    median meets it (by how much it misses when not)."""
    head = ["target", "median of runs", "lowest-highest run", "verdict"]
    rows = []
    for key, what, target, at_least in TARGETS:
        got = over_runs(runs, key)
        if got is None:
            continue
        med, lo, hi = got
        if target is None:
            rows.append([what, f"**{med:.2f}x**", f"{lo:.2f}-{hi:.2f}x", "-"])
            continue
        met = med >= target if at_least else med <= target
        verdict = "met" if met else f"**missed by {abs(med - target):.2f}**"
        sign = ">=" if at_least else "<="
        rows.append([f"{what} {sign} {target:g}x", f"**{med:.2f}x**", f"{lo:.2f}-{hi:.2f}x", verdict])
    return markdown_table(head, rows)


def blocks(directory, shown=None):
    """{marker key: markdown} for docs/speed.md: `runs` (how many, the machine), `jobs`, `targets`;
    {} when no run is saved. `shown` is the directory as the text names it (default: `directory`)."""
    runs = load_runs(directory)
    if not runs:
        return {}
    first = runs[0]
    about = (f"{len(runs)} runs, torch {first.get('torch')}, {first.get('device')}, {first.get('threads')} threads, "
             f"batch {first.get('batch')} x {first.get('seq')} tokens, each run the median of {first.get('repeats')} "
             f"rounds x {first.get('steps')} steps (outputs: `{shown or directory}/run*.txt`)")
    return {"runs": about, "jobs": jobs_table(runs), "targets": targets_table(runs)}
