"""
Speed and memory of one training step per fine-tuning method, on the packaged MiniLM.

Every method of the registry (methods/) with a training step can be timed. What a job measures
is in bench_jobs.py: the engine's step (engine.train_step, what train.py runs) on one fixed
random batch (--batch_size x --max_len tokens, no padding) after --burn_in_steps untimed steps;
methods with per-epoch state (their end_epoch hook) are timed as after warm-up. This file is the
command line and the orchestration: every job runs in a fresh subprocess of this script
(`--only JOB --json`), so each peak memory belongs to one job, and the rounds of all jobs (ours,
plus Hugging Face's where transformers + peft are importable, --hf) run in alternating order, so
drift hits all alike. Use no more --threads than there are idle cores: busy cores make threaded
kernels wait. bench_report.py turns the timings into the figures.

Per job: tok/s = batch_size * max_len / seconds per step, the median over --repeats rounds of
--steps steps each; ms/step; GFLOP/s = bench_report.train_flops() / seconds per step, to hold
against matmul_gflops, this machine's matmul roof measured in the same run; peak MB = the
subprocess's peak resident memory (imports + model + training; "before" = the same before step
1), or torch.cuda.max_memory_allocated on CUDA. Every job runs in fp32 and under bf16 autocast
(--precisions; job suffix +bf16; Hugging Face's under the same autocast), each held against its
own precision's matmul roof (matmul_gflops, matmul_bf16_gflops). Plus one real train.py epoch per
--time_epoch_of method over its training pass alone (epoch_over_train_pass), inference with a
LoRA update merged vs unmerged, and the tokens an epoch on mr costs with length-bucketed batches
vs padding to 128.

Usage:
    python tools/bench.py                                  # every method
    python tools/bench.py --methods lora --hf require      # side by side with transformers + peft
    python tools/bench.py --methods lora,full --paths_ab --hf skip   # what each speed path (speedups.py) pays
    python tools/bench.py --methods lora --steps 2 --burn_in_steps 1 --repeats 1 --threads 1   # smoke test
The last stdout line is one JSON object holding every figure (its keys: bench_report.py).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

import torch

import bench_jobs as jobs
import bench_report as report
import data  # importable once bench_jobs has put the project on sys.path
import speedups
from hardware import pick_device
from model import BertConfig, ModelLoadError

CHILD_FLAGS = ("batch_size", "max_len", "steps", "burn_in_steps", "threads", "device", "model", "eval_batch_size",
               "max_train")  # what a job's subprocess is given of this run's flags


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--methods", default=",".join(jobs.TIMED_METHODS), help="comma list of train.py --method names to time")
    p.add_argument("--batch_size", type=int, default=32, help="training batch size (train.py's)")
    p.add_argument("--max_len", type=int, default=64, help="tokens per sequence: every row of the random batch is "
                   "this long, no padding (train.py's --max_len, reached by every row)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per round")
    p.add_argument("--burn_in_steps", type=int, default=3, help="untimed steps before the timing, in every "
                   "subprocess (not train.py's --warmup_ratio, the learning-rate warm-up)")
    p.add_argument("--repeats", type=int, default=5, help="rounds, one subprocess per job each; figures are medians")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads, the same for every job")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto = cuda when available")
    p.add_argument("--model", default=None, help="BERT directory; none = the packaged all-MiniLM-L6-v2")
    p.add_argument("--hf", choices=("auto", "require", "skip"), default="auto", help="the Hugging Face jobs "
                   "(transformers + peft, for each plain method of --methods whose PEFT kind they implement): "
                   "auto = run them when both are importable, require = fail when they are not, skip = none")
    p.add_argument("--compile", action="store_true", help="also time every job with its model in torch.compile")
    p.add_argument("--grad_checkpointing", action="store_true",
                   help="also time our methods with gradient checkpointing (try a long --max_len)")
    p.add_argument("--eval_batch_size", type=int, default=128, help="batch of the evaluation forwards: merged vs "
                   "unmerged inference and --paths_ab's (train.py's --eval_batch_size)")
    p.add_argument("--no_infer", action="store_true", help="skip the merged vs unmerged LoRA inference timing")
    p.add_argument("--no_data", action="store_true", help="skip the mr padding figure")
    p.add_argument("--roof_n", type=int, default=2048, help="matrix size of the fp32 and bf16 matmul roofs")
    p.add_argument("--precisions", default="fp32,bf16", help="comma list: fp32, bf16 (autocast, train.py "
                   "--precision bf16) - every job is timed in each; bf16 is skipped where the CPU lacks it")
    p.add_argument("--time_epoch_of", default="lora", help="comma list of methods whose whole epoch is timed "
                   "against its training pass (a real train.py epoch on --max_train mr snippets); '' for none")
    p.add_argument("--max_train", type=int, default=2000, help="train.py's --max_train for the --time_epoch_of "
                   "runs (the quick command's: 90%% train, 10%% noisy validation, every epoch also predicting "
                   "the whole test split; train.py's other defaults)")
    p.add_argument("--only", default=None, help="run one job in this process and print its JSON - what the "
                   "subprocesses run (the job names: bench_jobs.py)")
    p.add_argument("--paths_ab", action="store_true", help="time every method's steps with each speed path on and "
                   "off, alternating within one process (the robust way to see what a path pays)")
    every = ["plain"] + [f"-{path}" for path in speedups.PATHS]
    p.add_argument("--variants", default="", help="speed-path variants to time for every method too (comma list): "
                   f"plain (none of speedups.py), -PATH (all but PATH: {', '.join(every[1:])}), or all")
    p.add_argument("--json", action="store_true", help="print only the final JSON line")
    a = p.parse_args(argv)
    a.methods, a.precisions, a.time_epoch_of = (
        [x.strip() for x in s.split(",") if x.strip()] for s in (a.methods, a.precisions, a.time_epoch_of))
    if set(a.precisions) - {"fp32", "bf16"} or not a.precisions:
        p.error(f"--precisions: choose from fp32,bf16, got {a.precisions}")
    a.variants = every if a.variants == "all" else [v.strip() for v in a.variants.split(",") if v.strip()]
    if set(a.variants) - set(every):
        p.error(f"--variants: choose from {','.join(every)} or all, got {a.variants}")
    if not a.methods or set(a.methods + a.time_epoch_of) - set(jobs.TIMED_METHODS):
        p.error(f"--methods, --time_epoch_of: choose from {','.join(jobs.TIMED_METHODS)}, got "
                f"{a.methods}, {a.time_epoch_of}")
    if min(a.batch_size, a.max_len, a.steps, a.repeats, a.threads, a.eval_batch_size) < 1 or a.burn_in_steps < 0:
        p.error("--batch_size, --max_len, --steps, --repeats, --threads, --eval_batch_size must be >= 1, "
                "--burn_in_steps >= 0")
    return a


def child(job, a, repeats=1):
    """Run one job in a fresh subprocess of this script; its result dict, or {"error": its last stderr line}."""
    cmd = [sys.executable, os.path.abspath(__file__), "--only", job, "--repeats", str(repeats), "--json"]
    cmd += [arg for k in CHILD_FLAGS for arg in (f"--{k}", str(getattr(a, k)))]
    r = subprocess.run(cmd, capture_output=True, text=True)
    lines = r.stdout.strip().splitlines()
    if r.returncode or not lines:
        return {"error": (r.stderr.strip().splitlines() or [f"exit code {r.returncode}"])[-1]}
    return json.loads(lines[-1])


def plan(a, use_hf):
    """The jobs of the rounds, in the order of the first round: each method, its Hugging Face twin,
    the variants asked for, then all of them again under bf16, then the epochs."""
    names = a.methods + ([f"hf_{m}" for m in a.methods if jobs.hf_reference(m) is not None] if use_hf else [])
    names += [j + "@compile" for j in names] if a.compile else []
    names += [m + "@ckpt" for m in a.methods] if a.grad_checkpointing else []
    names += [f"{m}@{v}" for m in a.methods for v in a.variants]
    base = [j for j in names if "@" not in j]
    names = (names if "fp32" in a.precisions else [j for j in names if "@" in j]) \
        + ([j + "+bf16" for j in base] if "bf16" in a.precisions else [])
    return names + [f"epoch@{m}" + sfx for m in a.time_epoch_of
                    for sfx in (["", "+bf16"] if "bf16" in a.precisions else [""])]


def run_rounds(a, names, device, sync):
    """a.repeats rounds of: the matmul roofs, then one subprocess per job, order reversed every other round."""
    runs, roofs = {j: [] for j in names}, {"fp32": [], "bf16": []}
    for r in range(a.repeats):
        for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            if precision == "fp32" or "bf16" in a.precisions:  # the fp32 roof is always measured (matmul_gflops)
                roofs[precision].append(jobs.matmul_roof(a.roof_n, dtype, device, sync))
        for job in (names if r % 2 == 0 else names[::-1]):
            if runs[job] and "error" in runs[job][-1]:
                continue  # failed once (e.g. torch.compile cannot build here): out for good
            res = child(job, a)
            runs[job].append(res)
            what = ("" if "error" in res else f"epoch {res['epoch_s']:.1f} s, training pass {res['train_pass_s']:.1f} s"
                    if "epoch_s" in res else f"{1000 * res['s_step'][0]:.0f} ms/step, peak {res['peak_mb']:.0f} MB")
            print(f"round {r + 1}/{a.repeats} {job}: " + (f"failed: {res['error']}" if "error" in res else what),
                  file=sys.stderr)
    return runs, {k: statistics.median(v) for k, v in roofs.items() if v}


def main(argv=None):
    a = parse_args(argv)
    if a.only:
        print(json.dumps(jobs.run_job(a.only, a)))
        return
    torch.set_num_threads(a.threads)
    try:
        a.model = jobs.resolve_model_dir(a.model)
        cfg = BertConfig.from_json(os.path.join(a.model, "config.json"))
    except ModelLoadError as e:
        sys.exit(f"error: {e}")
    device, _ = pick_device(a.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    use_hf = a.hf != "skip" and jobs.hf_available()
    if a.hf == "require" and not use_hf:
        sys.exit("--hf require: transformers and peft are not importable in this Python (use one where they are)")
    notes = ["transformers + peft not importable here: no Hugging Face job"] if a.hf == "auto" and not use_hf else []
    if "bf16" in a.precisions and not (device.type == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        notes.append("this CPU has no bf16 instructions: bf16 jobs skipped")
        a.precisions = [x for x in a.precisions if x != "bf16"] or ["fp32"]
    runs, roofs = run_rounds(a, plan(a, use_hf), device, sync)
    out = {"torch": torch.__version__, "device": device.type, "threads": a.threads, "batch": a.batch_size,
           "seq": a.max_len, "steps": a.steps, "repeats": a.repeats, "matmul_gflops": roofs.get("fp32")}
    if "bf16" in roofs:
        out["matmul_bf16_gflops"] = roofs["bf16"]
    rows = report.summarise(a, cfg, runs, out, notes)
    for m in a.methods if a.paths_ab else []:
        res = child(f"paths_ab@{m}", a, repeats=a.repeats)
        if "error" in res:
            notes.append(f"paths_ab@{m} failed: {res['error']}")
            continue
        for line in report.add_paths_ab(m, res, out):
            print(line)
    for m in [m for m in a.methods if jobs.merges(m)] if not a.no_infer else []:
        res = child(f"infer@{m}", a, repeats=a.repeats)
        if "error" in res:
            notes.append(f"{m} inference failed: {res['error']}")
        else:
            report.add_infer(a, m, res, out)
    try:
        out.update({} if a.no_data else jobs.data_side(a))
    except (data.DataError, ModelLoadError) as e:  # e.g. the mr data package is not installed in this Python
        notes.append(f"mr padding figure skipped: {type(e).__name__}: {e}")
    if not a.json:
        report.print_report(a, out, rows, notes)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
