"""
Speed and memory of one training step per fine-tuning method, on the packaged MiniLM.

The timed step is the engine's (engine.train_step, what train.py runs) - the method's gates,
forward, the method's loss with its extra terms, backward, gradient clipping, AdamW (fused
when available), LR scheduler - on one fixed batch of random
token ids in [1000, 30000) (batch 32 x length 64, all-ones mask), after a burn-in. Every
timing runs in a fresh subprocess of this script (`--only JOB --json`), so each peak memory
belongs to one job, and the rounds of all jobs (ours, plus Hugging Face's LoRA when
transformers + peft are importable) interleave in alternating order, so drift hits all alike.
Use no more --threads than there are idle cores: busy cores make threaded kernels wait.
Every method of the registry (methods/) with a training step can be timed; CleaR and LoRAMoE's typed balance
are timed as after warm-up (their end_epoch hook is fed random logits once).

Per job: tok/s = batch * seq / seconds per step, the median over --repeats rounds of --steps
steps each; ms/step; GFLOP/s = train_flops() / seconds per step, to hold against
matmul_gflops, this machine's fp32 matmul roof measured in the same run; peak MB = the
subprocess's peak resident memory (imports + model + training; "before" = the same before
step 1), or torch.cuda.max_memory_allocated on CUDA. Every job runs in fp32 and under bf16 autocast
(`--precisions`; job suffix +bf16; Hugging Face's under the same autocast), each held against its own
precision's matmul roof (matmul_gflops, matmul_bf16_gflops). Plus one real train.py epoch per
`--epoch` method over its training pass alone (epoch_over_train_pass), LoRA inference merged vs
unmerged, and the tokens an epoch on mr costs with length-bucketed batches vs padding to 128.

Usage:
    python tools/bench.py                            # our methods
    python tools/bench.py --methods lora --hf        # side by side with transformers + peft, where both are installed
    python tools/bench.py --methods lora,full --paths_ab --no_hf  # what each speed path (speedups.py) pays
    python tools/bench.py --methods lora --steps 2 --warmup 1 --repeats 1 --threads 1   # smoke test, not a measurement
The last stdout line is one JSON object holding every figure.
"""

import argparse
import importlib.machinery
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project, one folder up
sys.path.insert(0, ROOT)
import data  # noqa: E402
import engine  # noqa: E402
import methods  # noqa: E402
import peft  # noqa: E402  ours; hf_step swaps in the peft package of the same name in its own subprocess
from hooks import Hooks  # noqa: E402
import speedups  # noqa: E402
import train  # noqa: E402
from mixture import LossDetector  # noqa: E402
from model import BertConfig, ModelLoadError, default_model_dir, load_tokenizer  # noqa: E402

METHODS = tuple(m for m in methods.names() if methods.get(m).run is None)  # a method with its own run has no training step
NUM_CLASSES, NUM_TRAIN = 2, 10_000  # a binary task; the fake training-set size CleaR's per-sample state indexes
CHILD_FLAGS = ("batch", "seq", "steps", "warmup", "threads", "device", "model", "infer_batch", "epoch_train")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--methods", default=",".join(METHODS), help="comma list of methods to time")
    p.add_argument("--batch", type=int, default=32, help="training batch size")
    p.add_argument("--seq", type=int, default=64, help="sequence length (random ids, no padding)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    p.add_argument("--warmup", type=int, default=3, help="untimed burn-in steps in every subprocess")
    p.add_argument("--repeats", type=int, default=5, help="rounds, one subprocess per job each; figures are medians")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads, the same for every job")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto = cuda when available")
    p.add_argument("--model", default=None, help="BERT directory; none = the packaged all-MiniLM-L6-v2")
    hf = p.add_mutually_exclusive_group()
    hf.add_argument("--hf", action="store_true", help="require the Hugging Face transformers + peft LoRA job "
                                                      "(without it: run whenever both are importable)")
    hf.add_argument("--no_hf", action="store_true", help="skip the Hugging Face job")
    p.add_argument("--compile", action="store_true", help="also time every job with its model in torch.compile")
    p.add_argument("--grad_checkpointing", action="store_true",
                   help="also time our methods with gradient checkpointing (try a long --seq)")
    p.add_argument("--infer_batch", type=int, default=128, help="batch of the merged vs unmerged LoRA inference timing")
    p.add_argument("--no_infer", action="store_true", help="skip the merged vs unmerged LoRA inference timing")
    p.add_argument("--no_data", action="store_true", help="skip the mr padding figure")
    p.add_argument("--roof_n", type=int, default=2048, help="matrix size of the fp32 and bf16 matmul roofs")
    p.add_argument("--precisions", default="fp32,bf16", help="comma list: fp32, bf16 (autocast, train.py "
                   "--precision bf16) - every job is timed in each; bf16 is skipped where the CPU lacks it")
    p.add_argument("--epoch", default="lora", help="comma list of methods whose whole epoch is timed against its "
                   "training pass (a real train.py epoch on --epoch_train mr snippets); '' for none")
    p.add_argument("--epoch_train", type=int, default=2000, help="mr snippets of the --epoch run (the quick "
                   "command's 2,000: 1,800 train + 200 noisy validation, every epoch also predicting the 2,629 "
                   "test snippets, train.py's other defaults)")
    p.add_argument("--only", default=None, help="run one job in this process (a method, hf_lora or lora_infer; "
                                                "suffix @compile for torch.compile, @ckpt for grad checkpointing, "
                                                "@plain for no speed paths, @-PATH for all speed paths but PATH) - "
                                                "what the subprocesses run")
    p.add_argument("--paths_ab", action="store_true", help="time every method's steps with each speed path on and "
                   "off, alternating within one process (the robust way to see what a path pays)")
    p.add_argument("--variants", default="", help="speed-path variants to time for every method too (comma list): "
                   "plain (none of speedups.py), -PATH (all but PATH: -dropout, -attention, -cls_only), "
                   "or all (every one of those)")
    p.add_argument("--json", action="store_true", help="print only the final JSON line")
    a = p.parse_args(argv)
    a.methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    a.precisions = [x.strip() for x in a.precisions.split(",") if x.strip()]
    a.epoch = [m.strip() for m in a.epoch.split(",") if m.strip()]
    if set(a.precisions) - {"fp32", "bf16"} or not a.precisions:
        p.error(f"--precisions: choose from fp32,bf16, got {a.precisions}")
    every = ["plain"] + [f"-{p}" for p in speedups.PATHS]
    a.variants = every if a.variants == "all" else [v.strip() for v in a.variants.split(",") if v.strip()]
    if set(a.variants) - set(every):
        p.error(f"--variants: choose from {','.join(every)} or all, got {a.variants}")
    if not a.methods or set(a.methods) - set(METHODS):
        p.error(f"--methods: choose from {','.join(METHODS)}, got {a.methods}")
    if min(a.batch, a.seq, a.steps, a.repeats, a.threads, a.infer_batch) < 1 or a.warmup < 0:
        p.error("--batch, --seq, --steps, --repeats, --threads, --infer_batch must be >= 1, --warmup >= 0")
    return a


def peak_mb(device):
    """This process's peak memory so far, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    try:  # VmHWM = the peak RSS of this process image. ru_maxrss would be the same, except that Linux
        # carries the parent's RSS at exec over into it, which would floor every child at the parent's size
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)


def timed(fn, n, sync):
    """Mean seconds per call over n calls of fn, synchronised (CUDA) at both ends."""
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    return (time.perf_counter() - t0) / n


def fake_batch(batch_size, seq, device):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (batch_size, seq), generator=g)
    label = torch.randint(0, NUM_CLASSES, (batch_size,), generator=g)
    index = torch.randperm(NUM_TRAIN, generator=g)[:batch_size]
    return data.Batch(*(t.to(device) for t in (ids, torch.ones_like(ids), index, label)))


# ----------------------------------------------------------------------------
# the jobs, each in its own subprocess

def make_step(model, forward, hooks, targs, batch, autocast):
    """A closure running engine.train_step once, with the optimizer and schedule train.py builds."""
    opt, sched = engine.build_optimizer(model, targs.lr, targs.weight_decay, targs.warmup_ratio, total_steps=10**6)
    params = [p for p in model.parameters() if p.requires_grad]
    return lambda: engine.train_step(forward, hooks, batch, opt, sched, params, targs.grad_clip, autocast)


def our_step(method, a, autocast, batch, compiled, checkpointing=False, paths=speedups.PATHS):
    """train.py's model and hooks for `method`, with the speed paths in `paths` switched on."""
    targs = train.parse_args(["--method", method, "--model", a.model, "--no_speedups"])
    model, _ = train.build_model(targs, NUM_CLASSES)
    speedups.enable(model, cls_only=not methods.get(method).reads_all_tokens, paths=paths)
    model.to(batch.label.device).train()
    model.encoder.grad_checkpointing = checkpointing
    hooks = train.build_hooks(targs, model, NUM_TRAIN)
    # as after warm-up: a mixture router's clean probabilities and teacher come from one refit
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(NUM_TRAIN, NUM_CLASSES, generator=g).numpy()
    observed = np.random.default_rng(1).integers(0, NUM_CLASSES, NUM_TRAIN)
    hooks.end_epoch(targs.warmup_epochs - 1, logits, observed, LossDetector(0).update(logits, observed))
    return make_step(model, torch.compile(model) if compiled else model, hooks, targs, batch, autocast)


def hf_step(a, autocast, batch, compiled, lora=True):
    """The same step with Hugging Face: BertModel (SDPA) + peft LoRA (or all weights trained when
    lora=False), dropout + linear head on [CLS]."""
    # our peft.py (imported above) shadows the peft package: forget it, and take this folder off the path
    sys.modules.pop("peft", None)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") not in (ROOT, os.path.join(ROOT, "tools"))]
    import transformers
    from peft import LoraConfig, get_peft_model
    transformers.logging.set_verbosity_error()
    bert = transformers.BertModel.from_pretrained(a.model, attn_implementation="sdpa", add_pooling_layer=False,
                                                  dtype=torch.float32)
    if lora:
        bert = get_peft_model(bert, LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], lora_dropout=0.1))
    head = torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.Linear(bert.config.hidden_size, NUM_CLASSES))
    model = torch.nn.ModuleDict({"bert": bert, "head": head}).to(batch.label.device).train()
    encode = torch.compile(bert) if compiled else bert

    def forward(input_ids, attention_mask, gates=None):
        return head(encode(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0])
    targs = train.parse_args(["--method", "lora" if lora else "full"])  # same AdamW groups + schedule
    return make_step(model, forward, Hooks(), targs, batch, autocast)


def lora_infer(a, device, autocast, sync):
    """Seconds per forward (eval, no_grad), LoRA unmerged vs merged into W0 (peft.merge_lora), alternating."""
    model, _ = train.build_model(train.parse_args(["--method", "lora", "--model", a.model]), NUM_CLASSES)
    model.to(device).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, peft.LoRALinear):
                m.lora_B.normal_(std=0.02)  # a non-zero update, so merging really changes W0
    batch = fake_batch(a.infer_batch, a.seq, device)

    def forward():
        with torch.no_grad(), autocast():
            return model(batch.input_ids, batch.attention_mask).float()
    timed(forward, max(a.warmup, 1), sync)
    unmerged, merged, ref = [], [], forward()
    for _ in range(a.repeats):
        unmerged.append(timed(forward, a.steps, sync))
        peft.merge_lora(model)
        merged.append(timed(forward, a.steps, sync))
        diff = float((forward() - ref).abs().max())  # merging changes the rounding, not the function
        peft.unmerge_lora(model)
    return {"unmerged_s": unmerged, "merged_s": merged, "max_abs_diff": diff}


def paths_ab(a, device, autocast, sync, method):
    """Seconds per training step with each speed path on and off, alternating in one process
    (A B A B ... a.repeats times, a.steps steps each), so machine drift hits both alike."""
    out = {}
    for path in speedups.PATHS:
        if path == "cls_only" and methods.get(method).reads_all_tokens:
            continue
        torch.manual_seed(0)
        batch = fake_batch(a.batch, a.seq, device)
        targs = train.parse_args(["--method", method, "--model", a.model, "--no_speedups"])
        model, _ = train.build_model(targs, NUM_CLASSES)
        speedups.enable(model, cls_only=not methods.get(method).reads_all_tokens)
        model.to(device).train()
        hooks = train.build_hooks(targs, model, NUM_TRAIN)
        step = make_step(model, model, hooks, targs, batch, autocast)
        infer = fake_batch(a.infer_batch, a.seq, device)

        def evaluate():  # an evaluation pass's forward: no gradients, eval mode, an unpadded batch
            model.eval()
            with torch.no_grad(), autocast():
                model(infer.input_ids, infer.attention_mask)
            model.train()
        timed(step, max(a.warmup, 1), sync)
        times = {k: [] for k in ("on_s", "off_s", "eval_on_s", "eval_off_s")}
        for _ in range(a.repeats):
            for on in (True, False):
                speedups.switch(model, path, on)
                times["on_s" if on else "off_s"].append(timed(step, a.steps, sync))
                times["eval_on_s" if on else "eval_off_s"].append(timed(evaluate, a.steps, sync))
            speedups.switch(model, path, True)
        out[path] = times
    return out


def epoch_job(a, method, bf16):
    """One real train.py epoch (the quick command's: mr, a.epoch_train snippets, the whole test split): its wall time
    (training pass + the evaluation passes + the detector) over its training pass alone."""
    import tempfile
    with tempfile.TemporaryDirectory() as out:
        train.main(["--method", method, "--model", a.model, "--max_train", str(a.epoch_train), "--epochs", "1",
                    "--device", a.device, "--out", out, "--no_progress", "--precision", "bf16" if bf16 else "fp32"])
        with open(os.path.join(out, "metrics.jsonl")) as f:
            m = json.loads(f.readline())
    return {"epoch_s": m["epoch_s"], "train_pass_s": m["train_pass_s"]}


def run_job(job, a):
    """One job in this process: build, burn in, time a.repeats x a.steps steps."""
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    a.model = resolve_model_dir(a.model)
    job, bf16 = (job[:-len("+bf16")], True) if job.endswith("+bf16") else (job, False)
    device, autocast = train.pick_device(a.device, "bf16" if bf16 else "fp32")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if job.startswith("epoch@"):
        return epoch_job(a, job.partition("@")[2], bf16)
    if job == "lora_infer":
        return lora_infer(a, device, autocast, sync)
    if job.startswith("paths_ab@"):
        return paths_ab(a, device, autocast, sync, job.partition("@")[2])
    name, _, variant = job.partition("@")  # @compile, @ckpt (grad checkpointing), @plain, @-PATH (speed paths)
    paths = () if variant == "plain" else tuple(p for p in speedups.PATHS if variant != f"-{p}")
    known = ("", "compile", "ckpt", "plain") + tuple(f"-{p}" for p in speedups.PATHS)
    if name not in METHODS + ("hf_lora", "hf_full") or variant not in known:
        raise SystemExit(f"--only: unknown job {job!r}")
    batch = fake_batch(a.batch, a.seq, device)
    if name.startswith("hf_"):
        step = hf_step(a, autocast, batch, variant == "compile", lora=name == "hf_lora")
    else:
        step = our_step(name, a, autocast, batch, variant == "compile", variant == "ckpt", paths)
    before = peak_mb(device)
    for _ in range(a.warmup):
        step()
    secs = [timed(step, a.steps, sync) for _ in range(a.repeats)]
    return {"s_step": secs, "peak_mb": peak_mb(device), "before_mb": before}


# ----------------------------------------------------------------------------
# the parent: rounds of subprocesses, FLOPs, the roof, the data-side figure, the report

def train_flops(method, cfg, B, T, targs, cls_only):
    """FLOPs of one training step, 2 per multiply-add (softmax, LayerNorm, GELU, optimizer not counted).
    Per sample and layer, with C = hidden, I = FFN width, T tokens, T_kv = T (+ P prefix positions) and
    t_q query-side tokens (T, or 1 in the top layer when only [CLS] is computed there, cls_only):
      forward    2 * 2C^2 * T              key and value projections
               + 2 * (2C^2 + 2CI) * t_q    query, attention output, FFN in and out
               + 4 * t_q * T_kv * C        attention: scores q k^T and the weighted sum of values
               + E * T                     the PEFT branch's own matmuls (LoRA A and B, adapter down and
                                           up, LoRAMoE experts and router), counted on every token
      backward, activation gradients, through every layer the loss reaches (all L here: every method
               trains something in every layer): dX = dY W^T is 1x each weight matmul's forward - except
               layer 0's q/k/v when the embeddings are frozen (their input needs no gradient) - 2x the
               attention matmuls (both operands are activations), 1x E;
      backward, weight gradients dW = dY^T X (another 1x the matmul's forward) ONLY for trainable
               weights: the base matmuls under full fine-tuning, E for the PEFT branches.
    Plus the head: 2 * C * K per sample forward, 3x that in all (Match-Tuning's extra C x C layer and
    its B x B mix are not counted). Full fine-tuning comes to 3x forward."""
    C, I, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    kind = peft.kind_config(methods.get(method).kind(targs), vars(targs))  # the registry entry counts E and P
    E, T_kv, full = kind.branch_flops(cfg), T + kind.extra_keys(), kind.trains_base
    t_q = [T] * (L - 1) + [1 if cls_only else T]
    weights = sum(2 * 2 * C * C * T + 2 * (2 * C * C + 2 * C * I) * t for t in t_q)
    attn = sum(4 * t * T_kv * C for t in t_q)
    forward = weights + attn + E * T
    act_grad = weights - (0 if full else 2 * 3 * C * C * T) + 2 * attn + E * T
    weight_grad = (weights if full else 0) + E * T
    return (forward + act_grad + weight_grad) * B + 3 * 2 * C * NUM_CLASSES * B


def child(job, a, repeats=1):
    cmd = [sys.executable, os.path.abspath(__file__), "--only", job, "--repeats", str(repeats), "--json"]
    cmd += [arg for k in CHILD_FLAGS for arg in (f"--{k}", str(getattr(a, k)))]
    r = subprocess.run(cmd, capture_output=True, text=True)
    lines = r.stdout.strip().splitlines()
    if r.returncode or not lines:
        return {"error": (r.stderr.strip().splitlines() or [f"exit code {r.returncode}"])[-1]}
    return json.loads(lines[-1])


def hf_available():
    """transformers and the peft *package* importable (our peft.py, next to this file, shadows the name)."""
    path = [p for p in sys.path if os.path.abspath(p or ".") not in (ROOT, os.path.join(ROOT, "tools"))]
    return all(importlib.machinery.PathFinder.find_spec(n, path) is not None for n in ("transformers", "peft"))


def resolve_model_dir(path):
    """--model, else the packaged MiniLM in this Python, else in the `python` on PATH (so a separate
    environment holding transformers + peft needs no copy of the weights package)."""
    try:
        return path or default_model_dir()
    except ModelLoadError:
        r = subprocess.run(["python", "-c", "import model; print(model.default_model_dir())"], cwd=ROOT,
                           capture_output=True, text=True)
        if r.returncode or not os.path.isdir(r.stdout.strip()):
            raise
        return r.stdout.strip()


def data_side(a):
    """Tokens one epoch over mr's training split costs (max_len 128, train.py's default): our
    length-bucketed batches, random batches padded to their longest, everything padded to 128."""
    ids = data.encode(load_tokenizer(a.model), data.load_data("mr").train.texts, 128)
    lengths, n128 = [len(t) for t in ids], 128 * len(ids)
    out = {"mr_examples": len(ids), "tokens_pad128": n128, "pad_frac_pad128": 1 - sum(lengths) / n128}
    for name, kw in (("bucketed", {}), ("unbucketed", {"bucket_factor": 1})):  # 1: sorted within a batch only
        batches = data.length_bucketed_batches(lengths, a.batch, seed=0, epoch=0, **kw)
        shapes = [(len(b), max(lengths[i] for i in b)) for b in batches]
        out[f"tokens_{name}"] = sum(n * w for n, w in shapes)
        out[f"pad_frac_{name}"] = data.padding_fraction(ids, batches)
    out["tokens_ratio_pad128"] = n128 / out["tokens_bucketed"]
    return out


def run_rounds(a, jobs, device, sync):
    """a.repeats rounds of: the fp32 matmul roof, then one subprocess per job, order reversed every other round."""
    runs, roofs = {j: [] for j in jobs}, {"fp32": [], "bf16": []}
    for r in range(a.repeats):
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            if name == "bf16" and "bf16" not in a.precisions:
                continue  # the fp32 roof is always measured (matmul_gflops)
            x, y, z = (torch.randn(a.roof_n, a.roof_n, device=device, dtype=dtype) for _ in range(3))
            secs = [timed(lambda: torch.mm(x, y, out=z), 1, sync) for _ in range(10)][2:]  # 2 untimed
            roofs[name].append(2 * a.roof_n**3 / statistics.median(secs) / 1e9)
        for job in (jobs if r % 2 == 0 else jobs[::-1]):
            if runs[job] and "error" in runs[job][-1]:
                continue  # failed once (e.g. torch.compile cannot build here): out for good
            res = child(job, a)
            runs[job].append(res)
            what = ("" if "error" in res else f"epoch {res['epoch_s']:.1f} s, training pass {res['train_pass_s']:.1f} s"
                    if "epoch_s" in res else f"{1000 * res['s_step'][0]:.0f} ms/step, peak {res['peak_mb']:.0f} MB")
            print(f"round {r + 1}/{a.repeats} {job}: " + (f"failed: {res['error']}" if "error" in res else what),
                  file=sys.stderr)
    return runs, {k: statistics.median(v) for k, v in roofs.items() if v}


def summarise(a, cfg, runs, out, notes):
    """Per job, medians into `out` (<job>_tok_s, _ms_step, _gflops, _peak_mb, _before_mb); the table rows."""
    rows, tok = [], a.batch * a.seq
    for job, results in runs.items():
        ok = [r for r in results if "error" not in r]
        notes += [f"{job} failed: {r['error']}" for r in results if "error" in r]
        if not ok:
            continue
        if job.startswith("epoch@"):  # a whole epoch over its training pass
            key = job.partition("@")[2].replace("+bf16", "_bf16")
            out[f"{key}_epoch_over_train_pass"] = statistics.median(r["epoch_s"] / r["train_pass_s"] for r in ok)
            out[f"{key}_epoch_s"] = statistics.median(r["epoch_s"] for r in ok)
            continue
        bf16 = job.endswith("+bf16")
        key = job.replace("+bf16", "_bf16").replace("@-", "_no_").replace("@", "_")
        method = job.partition("@")[0].replace("+bf16", "").removeprefix("hf_")
        roof = out["matmul_bf16_gflops" if bf16 else "matmul_gflops"]
        secs = [s for r in ok for s in r["s_step"]]
        plain = job.startswith("hf_") or job.endswith(("@plain", "@-cls_only"))  # the top layer in full
        cls_only = not plain and not methods.get(method).reads_all_tokens  # speedups.py, path 3
        targs = train.parse_args(["--method", method])
        s, flops = statistics.median(secs), train_flops(method, cfg, a.batch, a.seq, targs, cls_only)
        out.update({f"{key}_tok_s": tok / s, f"{key}_ms_step": 1000 * s, f"{key}_gflops": flops / s / 1e9,
                    f"{key}_peak_mb": max(r["peak_mb"] for r in ok), f"{key}_before_mb": max(r["before_mb"] for r in ok)})
        rows.append(f"| {key} | {tok / s:,.0f} | {tok / max(secs):,.0f}-{tok / min(secs):,.0f} | {1000 * s:.0f} "
                    f"| {flops / 1e9:.1f} | {flops / s / 1e9:.1f} | {100 * flops / s / 1e9 / roof:.0f}% "
                    f"| {out[f'{key}_peak_mb']:.0f} | {out[f'{key}_before_mb']:.0f} |")
    job_suffix = {"": "", "_compile": "@compile", "_bf16": "+bf16"}
    for m, sfx in [(m, sfx) for m in ("lora", "full") for sfx in job_suffix]:  # ours / theirs
        if f"{m}{sfx}_tok_s" in out and f"hf_{m}{sfx}_tok_s" in out:  # > 1 is faster; < 1 is less memory
            out[f"{m}_vs_hf{sfx}"] = out[f"{m}{sfx}_tok_s"] / out[f"hf_{m}{sfx}_tok_s"]
            out[f"{m}_vs_hf_peak{sfx}"] = out[f"{m}{sfx}_peak_mb"] / out[f"hf_{m}{sfx}_peak_mb"]
            # the same ratio within each round (the two jobs ran back to back), median over rounds:
            # robust to the machine speeding up or slowing down between rounds
            pairs = [statistics.median(h["s_step"]) / statistics.median(o["s_step"])
                     for o, h in zip(runs[m + job_suffix[sfx]], runs["hf_" + m + job_suffix[sfx]])
                     if "error" not in o and "error" not in h]
            out[f"{m}_vs_hf_rounds{sfx}"] = pairs
            out[f"{m}_vs_hf_paired{sfx}"] = statistics.median(pairs)
    for m in ("lora", "full"):  # grad checkpointing: activation memory (peak - before) and speed vs without
        if f"{m}_ckpt_tok_s" in out and f"{m}_tok_s" in out:
            out[f"{m}_ckpt_act_mb_ratio"] = ((out[f"{m}_ckpt_peak_mb"] - out[f"{m}_ckpt_before_mb"])
                                            / (out[f"{m}_peak_mb"] - out[f"{m}_before_mb"]))
            out[f"{m}_ckpt_speed_ratio"] = out[f"{m}_ckpt_tok_s"] / out[f"{m}_tok_s"]
    for m in METHODS:  # what each speed path pays: all on / that one off (per-round medians, like the above)
        for off in [p for p in speedups.PATHS if f"{m}_no_{p}_tok_s" in out] + (["plain"] if f"{m}_plain_tok_s" in out else []):
            key = f"{m}_no_{off}" if off != "plain" else f"{m}_plain"
            if f"{m}_tok_s" in out:
                out[f"{m}_speedup_{off}"] = out[f"{m}_tok_s"] / out[f"{key}_tok_s"]
    for m in METHODS + tuple(f"hf_{m}" for m in ("lora", "full")):  # bf16 autocast over fp32, same job
        if f"{m}_bf16_tok_s" in out and f"{m}_tok_s" in out:
            out[f"{m}_bf16_vs_fp32"] = out[f"{m}_bf16_tok_s"] / out[f"{m}_tok_s"]
    default = "_bf16" if train.resolve_precision(train.pick_device(a.device)[0], "auto") == "bf16" else ""
    if f"lora{default}_epoch_over_train_pass" in out:  # the headline: LoRA at this device's default precision
        out["epoch_over_train_pass"] = out[f"lora{default}_epoch_over_train_pass"]
    if "clear_ms_step" in out and "lora_ms_step" in out:  # CleaR's per-step cost over the LoRA it routes
        out["clear_vs_lora_step"] = out["clear_ms_step"] / out["lora_ms_step"]
    return rows


def print_report(a, out, rows, notes):
    bf16_roof = f", bf16 {out['matmul_bf16_gflops']:.1f}" if "matmul_bf16_gflops" in out else ""
    print(f"\ntorch {out['torch']}, {out['device']}, {a.threads} threads, batch {a.batch} x seq {a.seq}; median of "
          f"{a.repeats} rounds x {a.steps} steps; matmul roof fp32 {out['matmul_gflops']:.1f}{bf16_roof} GFLOP/s "
          "(a job's share is of its own precision's roof)\n\n"
          "| job | tok/s | range | ms/step | GFLOP/step | GFLOP/s | of roof | peak MB | before MB |\n"
          "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    for m in ("lora", "full"):
        if f"{m}_vs_hf" in out:
            rounds = ", ".join(f"{r:.2f}" for r in out[f"{m}_vs_hf_rounds"])
            print(f"ours / Hugging Face, {m}: {out[f'{m}_vs_hf']:.2f}x the tokens/s (medians); per round "
                  f"{rounds}, median {out[f'{m}_vs_hf_paired']:.2f}x; {out[f'{m}_vs_hf_peak']:.2f}x the peak memory")
        if f"{m}_ckpt_act_mb_ratio" in out:
            print(f"{m} with grad checkpointing: {out[f'{m}_ckpt_act_mb_ratio']:.2f}x the activation memory "
                  f"(peak - before), {out[f'{m}_ckpt_speed_ratio']:.2f}x the tokens/s")
        if f"{m}_vs_hf_bf16" in out:
            print(f"ours / Hugging Face, {m}, both under bf16 autocast: {out[f'{m}_vs_hf_bf16']:.2f}x the tokens/s "
                  f"(per-round median {out[f'{m}_vs_hf_paired_bf16']:.2f}x); {out[f'{m}_vs_hf_peak_bf16']:.2f}x the peak memory")
    for m in METHODS + ("hf_lora", "hf_full"):
        if f"{m}_bf16_vs_fp32" in out:
            print(f"{m}: bf16 autocast {out[f'{m}_bf16_vs_fp32']:.2f}x the tokens/s of fp32")
        for sfx in ("", "_bf16"):
            if f"{m}{sfx}_epoch_over_train_pass" in out:
                print(f"{m}{sfx}: one epoch ({a.epoch_train} mr snippets, 2,629 test) "
                      f"{out[f'{m}{sfx}_epoch_s']:.1f} s = {out[f'{m}{sfx}_epoch_over_train_pass']:.2f}x its training pass")
    if "clear_vs_lora_step" in out:
        print(f"CleaR (LoRA) / LoRA: {out['clear_vs_lora_step']:.2f}x the time per step")
    for m in METHODS:
        paid = {p: out[f"{m}_speedup_{p}"] for p in speedups.PATHS + ("plain",) if f"{m}_speedup_{p}" in out}
        if paid:
            print(f"{m}: tokens/s with every speed path / with one off: "
                  + ", ".join(f"{p} {v:.2f}x" for p, v in paid.items() if p != "plain")
                  + (f"; all of them / none (plain path) {paid['plain']:.2f}x" if "plain" in paid else ""))
    if "merge_speedup" in out:
        print(f"LoRA inference, batch {a.infer_batch}: unmerged {out['lora_infer_tok_s']:,.0f} tok/s, merged "
              f"{out['lora_merged_infer_tok_s']:,.0f} tok/s ({out['merge_speedup']:.2f}x; max |logit diff| "
              f"{out['merged_max_abs_diff']:.1e})")
    if "tokens_ratio_pad128" in out:
        print(f"mr epoch, {out['mr_examples']} examples: bucketed {out['tokens_bucketed']:,} tokens "
              f"({100 * out['pad_frac_bucketed']:.1f}% padding), random batches {out['tokens_unbucketed']:,} "
              f"({100 * out['pad_frac_unbucketed']:.1f}%), all padded to 128 {out['tokens_pad128']:,} "
              f"({100 * out['pad_frac_pad128']:.1f}%): pad-to-128 costs {out['tokens_ratio_pad128']:.2f}x the tokens")
    for note in notes:
        print(f"note: {note}")


def main(argv=None):
    a = parse_args(argv)
    if a.only:
        print(json.dumps(run_job(a.only, a)))
        return
    torch.set_num_threads(a.threads)
    try:
        a.model = resolve_model_dir(a.model)
        cfg = BertConfig.from_json(os.path.join(a.model, "config.json"))
    except ModelLoadError as e:
        sys.exit(f"error: {e}")
    device, _ = train.pick_device(a.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    use_hf = not a.no_hf and hf_available()
    if a.hf and not use_hf:
        sys.exit("--hf: transformers and peft are not importable in this Python (e.g. use /tmp/refenv/bin/python)")
    notes = [] if use_hf or a.no_hf else ["transformers + peft not importable here: no Hugging Face job"]
    jobs = a.methods + ([f"hf_{m}" for m in ("lora", "full") if m in a.methods] if use_hf else [])
    jobs += [j + "@compile" for j in jobs] if a.compile else []
    jobs += [m + "@ckpt" for m in a.methods] if a.grad_checkpointing else []
    jobs += [f"{m}@{v}" for m in a.methods for v in a.variants]
    bf16_ok = device.type == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if "bf16" in a.precisions and not bf16_ok:
        notes.append("this CPU has no bf16 instructions: bf16 jobs skipped")
        a.precisions = [x for x in a.precisions if x != "bf16"] or ["fp32"]
    base = [j for j in jobs if "@" not in j]
    jobs = (jobs if "fp32" in a.precisions else [j for j in jobs if "@" in j]) \
        + ([j + "+bf16" for j in base] if "bf16" in a.precisions else [])
    jobs += [f"epoch@{m}" + sfx for m in a.epoch for sfx in (["", "+bf16"] if "bf16" in a.precisions else [""])]
    runs, roofs = run_rounds(a, jobs, device, sync)
    out = {"torch": torch.__version__, "device": device.type, "threads": a.threads, "batch": a.batch, "seq": a.seq,
           "steps": a.steps, "repeats": a.repeats, "matmul_gflops": roofs.get("fp32")}
    if "bf16" in roofs:
        out["matmul_bf16_gflops"] = roofs["bf16"]
    rows = summarise(a, cfg, runs, out, notes)
    for m in a.methods if a.paths_ab else []:
        res = child(f"paths_ab@{m}", a, repeats=a.repeats)
        if "error" in res:
            notes.append(f"paths_ab@{m} failed: {res['error']}")
            continue
        for path, r in res.items():  # > 1: the path makes it faster; per-pair ratios, their median
            for what, pre in (("training step", ""), ("eval forward", "eval_")):
                pairs = [off / on for on, off in zip(r[f"{pre}on_s"], r[f"{pre}off_s"])]
                out[f"{m}_{pre}pays_{path}"] = statistics.median(pairs)
                print(f"{m}, speed path {path}, {what}: time off / on, median of {len(pairs)} alternating pairs "
                      f"{statistics.median(pairs):.2f}x (pairs {', '.join(f'{x:.2f}' for x in pairs)})")
    if "lora" in a.methods and not a.no_infer:
        res = child("lora_infer", a, repeats=a.repeats)
        if "error" in res:
            notes.append(f"LoRA inference failed: {res['error']}")
        else:
            out["lora_infer_tok_s"] = a.infer_batch * a.seq / statistics.median(res["unmerged_s"])
            out["lora_merged_infer_tok_s"] = a.infer_batch * a.seq / statistics.median(res["merged_s"])
            out["merge_speedup"] = out["lora_merged_infer_tok_s"] / out["lora_infer_tok_s"]
            out["merged_max_abs_diff"] = res["max_abs_diff"]
    try:
        out.update({} if a.no_data else data_side(a))
    except (data.DataError, ModelLoadError) as e:  # e.g. the mr data package is not installed in this Python
        notes.append(f"mr padding figure skipped: {type(e).__name__}: {e}")
    if not a.json:
        print_report(a, out, rows, notes)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
