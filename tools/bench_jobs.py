"""
What one job of tools/bench.py measures. bench.py runs every job in a fresh subprocess of itself
(`--only JOB --json`, which calls run_job here), so a job's peak memory is its own. The jobs:

    METHOD           engine.train_step (what train.py runs) on train.py's model and hooks for METHOD:
                     the method's gates, forward, loss with its extra terms, backward, gradient
                     clipping, AdamW, LR scheduler - on one fixed batch of random token ids in
                     [1000, 30000) with an all-ones mask, after --burn_in_steps untimed steps
    hf_METHOD        the same step with Hugging Face transformers' BertModel (SDPA), under peft's
                     LoRA or with all weights trained: for a plain method of a kind they implement
                     (hf_reference)
    infer@METHOD     evaluation forwards, the LoRA update unmerged vs merged into W0 (peft.merge_lora)
    paths_ab@METHOD  steps and evaluation forwards with each speed path (speedups.py) on and off
    epoch@METHOD     one real train.py epoch: its wall time against its training pass
A training-step job name takes a suffix: @compile (torch.compile), @ckpt (gradient checkpointing),
@plain (none of speedups.py), @-PATH (every speed path but PATH); and +bf16 (bf16 autocast, as
train.py --precision bf16) after any job. The parent measures two figures itself: the matmul roof
(matmul_roof) and the tokens an epoch on mr costs (data_side).
"""

import importlib.machinery
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project, one folder up
sys.path.insert(0, ROOT)
import batching  # noqa: E402
import data  # noqa: E402
import engine  # noqa: E402
import methods  # noqa: E402
import peft  # noqa: E402  ours; hf_step swaps in the peft package of the same name, in its own subprocess
import speedups  # noqa: E402
import build  # noqa: E402
import train  # noqa: E402
from hardware import pick_device  # noqa: E402
from hooks import Hooks  # noqa: E402
from mixture import LossDetector  # noqa: E402
from model import ModelLoadError, Outputs, default_model_dir, load_tokenizer  # noqa: E402

TIMED_METHODS = tuple(m for m in methods.names() if methods.get(m).run is None)  # the others have no training step
NUM_CLASSES, NUM_TRAIN = 2, 10_000  # a binary task; the fake training-set size that per-sample hook state indexes
VARIANTS = ("compile", "ckpt", "plain") + tuple(f"-{p}" for p in speedups.PATHS)  # the job suffixes after @
HF_LORA_TARGETS = ("query", "key", "value")  # our LoRA targets that BertSelfAttention names the same way


# ----------------------------------------------------------------------------
# measuring

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


def matmul_roof(n, dtype, device, sync):
    """This machine's matmul GFLOP/s in `dtype`: an n x n by n x n product (2 n^3 FLOPs), the median
    of 8 timed calls after 2 untimed ones."""
    x, y, z = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(3))
    secs = [timed(lambda: torch.mm(x, y, out=z), 1, sync) for _ in range(10)][2:]
    return 2 * n**3 / statistics.median(secs) / 1e9


def fake_batch(batch_size, max_len, device):
    """A fixed batching.Batch: random token ids in [1000, 30000), every row max_len long (all-ones mask)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (batch_size, max_len), generator=g)
    label = torch.randint(0, NUM_CLASSES, (batch_size,), generator=g)
    index = torch.randperm(NUM_TRAIN, generator=g)[:batch_size]
    return batching.Batch(*(t.to(device) for t in (ids, torch.ones_like(ids), index, label)))


def outside_project(path):
    """sys.path without this project and tools/: where the transformers and peft *packages* are
    found (our peft/, in the project, shadows the name)."""
    return [p for p in path if os.path.abspath(p or ".") not in (ROOT, os.path.join(ROOT, "tools"))]


def hf_available():
    """Whether transformers and the peft package are importable from outside the project."""
    path = outside_project(sys.path)
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


# ----------------------------------------------------------------------------
# what the registry says about a method

def plain_kind(name):
    """The PEFT kind (at train.py's default settings) that method NAME trains with no hooks of its own,
    or None when the method has hooks of its own (any registered entry, not the bare methods.Method)."""
    method = methods.get(name)
    if type(method) is not methods.Method:
        return None
    targs = train.parse_args(["--method", name])
    return peft.kind_config(method.kind_name(targs), vars(targs))


def hf_reference(name):
    """What job hf_NAME trains: {} = every weight of BertModel (the kind of NAME trains the base
    weights), LoraConfig's settings = peft's LoRA with NAME's r, alpha, dropout and targets, or None:
    Hugging Face has no job for NAME (it has hooks of its own, or a kind they do not implement)."""
    kind = plain_kind(name)
    if kind is None:
        return None
    if kind.trains_base:
        return {}
    targets = kind.lora_targets.split(",") if isinstance(kind, peft.LoRA) else None
    if targets is None or set(targets) - set(HF_LORA_TARGETS):
        return None
    return {"r": kind.lora_r, "lora_alpha": kind.lora_alpha, "target_modules": targets,
            "lora_dropout": kind.lora_dropout}


def merges(name):
    """Whether method NAME is plain training of LoRA, whose update merges into W0 (peft.merge_lora)."""
    return isinstance(plain_kind(name), peft.LoRA)


# ----------------------------------------------------------------------------
# the jobs

def make_step(model, forward, hooks, targs, batch, autocast):
    """A closure running engine.train_step once, with the optimizer and schedule train.py builds."""
    opt, sched = engine.build_optimizer(model, total_steps=10**6, **train.optimizer_settings(targs))
    params = [p for p in model.parameters() if p.requires_grad]
    step = engine.Step(forward, hooks, targs.grad_clip, autocast)
    return lambda: engine.train_step(step, batch, opt, sched, params)


def our_step(method, a, autocast, batch, compiled, checkpointing=False, paths=tuple(speedups.PATHS)):
    """train.py's model and hooks for `method`, with the speed paths in `paths` switched on."""
    targs = train.parse_args(["--method", method, "--model", a.model, "--no_speedups"])
    model, _ = build.build_model(targs, NUM_CLASSES)
    speedups.enable(model, cls_only=not methods.get(method).reads_all_tokens, paths=paths)
    model.to(batch.label.device).train()
    model.encoder.grad_checkpointing = checkpointing
    hooks = build.build_hooks(targs, model, NUM_TRAIN)
    # timed as after warm-up: per-epoch state (a detector's clean probabilities, a teacher) refit once
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(NUM_TRAIN, NUM_CLASSES, generator=g).numpy()
    observed = np.random.default_rng(1).integers(0, NUM_CLASSES, NUM_TRAIN)
    hooks.end_epoch(targs.warmup_epochs - 1, logits, observed, LossDetector(0).update(logits, observed))
    return make_step(model, torch.compile(model) if compiled else model, hooks, targs, batch, autocast)


def hf_step(name, a, autocast, batch, compiled):
    """The step of plain method NAME with Hugging Face: BertModel (SDPA), wrapped by peft's LoRA as
    hf_reference(NAME) says, dropout + linear head on [CLS]; AdamW groups and schedule as ours."""
    lora, targs = hf_reference(name), train.parse_args(["--method", name])
    for module in [m for m in sys.modules if m == "peft" or m.startswith("peft.")]:
        del sys.modules[module]  # forget our peft/, so that `import peft` finds the package outside the project
    sys.path[:] = outside_project(sys.path)
    import transformers
    from peft import LoraConfig, get_peft_model
    transformers.logging.set_verbosity_error()
    bert = transformers.BertModel.from_pretrained(a.model, attn_implementation="sdpa", add_pooling_layer=False,
                                                  dtype=torch.float32)
    if lora:
        bert = get_peft_model(bert, LoraConfig(**lora))
    head = torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.Linear(bert.config.hidden_size, NUM_CLASSES))
    model = torch.nn.ModuleDict({"bert": bert, "head": head}).to(batch.label.device).train()
    encode = torch.compile(bert) if compiled else bert

    def forward(input_ids, attention_mask, gates=None, with_features=False):
        features = encode(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]
        return Outputs(head(features), features) if with_features else head(features)
    return make_step(model, forward, Hooks(), targs, batch, autocast)


def infer_job(a, method, device, autocast, sync):
    """Seconds per evaluation forward (eval, no_grad) of `method`'s model, its LoRA update unmerged vs
    merged into W0 (peft.merge_lora), alternating; and the largest logit difference merging makes."""
    model, _ = build.build_model(train.parse_args(["--method", method, "--model", a.model]), NUM_CLASSES)
    model.to(device).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, peft.LoRALinear):
                m.lora_B.normal_(std=0.02)  # a non-zero update, so merging really changes W0
    batch = fake_batch(a.eval_batch_size, a.max_len, device)

    def forward():
        with torch.no_grad(), autocast():
            return model(batch.input_ids, batch.attention_mask).float()
    timed(forward, max(a.burn_in_steps, 1), sync)
    unmerged, merged, ref = [], [], forward()
    for _ in range(a.repeats):
        unmerged.append(timed(forward, a.steps, sync))
        peft.merge_lora(model)
        merged.append(timed(forward, a.steps, sync))
        diff = float((forward() - ref).abs().max())  # merging changes the rounding, not the function
        peft.unmerge_lora(model)
    return {"unmerged_s": unmerged, "merged_s": merged, "max_abs_diff": diff}


def paths_ab(a, method, device, autocast, sync):
    """Seconds per training step and per evaluation forward with each speed path on and off,
    alternating in one process (A B A B ... a.repeats times, a.steps calls each), so machine drift
    hits both alike."""
    out = {}
    for path in speedups.PATHS:
        if path == "cls_only" and methods.get(method).reads_all_tokens:
            continue
        torch.manual_seed(0)
        batch = fake_batch(a.batch_size, a.max_len, device)
        targs = train.parse_args(["--method", method, "--model", a.model, "--no_speedups"])
        model, _ = build.build_model(targs, NUM_CLASSES)
        speedups.enable(model, cls_only=not methods.get(method).reads_all_tokens)
        model.to(device).train()
        hooks = build.build_hooks(targs, model, NUM_TRAIN)
        step = make_step(model, model, hooks, targs, batch, autocast)
        infer = fake_batch(a.eval_batch_size, a.max_len, device)

        def evaluate():  # an evaluation pass's forward: no gradients, eval mode, an unpadded batch
            model.eval()
            with torch.no_grad(), autocast():
                model(infer.input_ids, infer.attention_mask)
            model.train()
        timed(step, max(a.burn_in_steps, 1), sync)
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
    """One real train.py epoch of `method` (the quick command's: mr, --max_train snippets, the whole
    test split, train.py's other defaults): its wall time (training pass + the evaluation passes + the
    detector) and its training pass alone, as metrics.jsonl records them."""
    with tempfile.TemporaryDirectory() as out:
        train.main(["--method", method, "--model", a.model, "--max_train", str(a.max_train), "--epochs", "1",
                    "--device", a.device, "--out", out, "--no_progress", "--precision", "bf16" if bf16 else "fp32"])
        with open(os.path.join(out, "metrics.jsonl")) as f:
            m = json.loads(f.readline())
    return {"epoch_s": m["epoch_s"], "train_pass_s": m["train_pass_s"]}


def run_job(job, a):
    """One job in this process. A training-step job: build, a.burn_in_steps untimed steps, then
    a.repeats timings of a.steps steps -> {"s_step": seconds per step each, "peak_mb", "before_mb"}."""
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    a.model = resolve_model_dir(a.model)
    job, bf16 = (job.removesuffix("+bf16"), True) if job.endswith("+bf16") else (job, False)
    device, autocast = pick_device(a.device, "bf16" if bf16 else "fp32")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    name, _, variant = job.partition("@")  # a job over a method (epoch@, infer@, paths_ab@), or a variant
    if name == "epoch":
        return epoch_job(a, variant, bf16)
    if name == "infer":
        return infer_job(a, variant, device, autocast, sync)
    if name == "paths_ab":
        return paths_ab(a, variant, device, autocast, sync)
    hf = name.startswith("hf_")
    if variant not in ("",) + VARIANTS or (hf_reference(name[3:]) is None if hf else name not in TIMED_METHODS):
        raise SystemExit(f"--only: unknown job {job!r}")
    batch = fake_batch(a.batch_size, a.max_len, device)
    if hf:
        step = hf_step(name[3:], a, autocast, batch, variant == "compile")
    else:
        paths = () if variant == "plain" else tuple(p for p in speedups.PATHS if variant != f"-{p}")
        step = our_step(name, a, autocast, batch, variant == "compile", variant == "ckpt", paths)
    before = peak_mb(device)
    for _ in range(a.burn_in_steps):
        step()
    secs = [timed(step, a.steps, sync) for _ in range(a.repeats)]
    return {"s_step": secs, "peak_mb": peak_mb(device), "before_mb": before}


def data_side(a):
    """Tokens one epoch over mr's training split costs (max_len 128, train.py's default): our
    length-bucketed batches, random batches padded to their longest, everything padded to 128."""
    ids = batching.encode(load_tokenizer(a.model), data.load_data("mr").train.texts, 128)
    lengths, n128 = [len(t) for t in ids], 128 * len(ids)
    out = {"mr_examples": len(ids), "tokens_pad128": n128, "pad_frac_pad128": 1 - sum(lengths) / n128}
    for name, kw in (("bucketed", {}), ("unbucketed", {"bucket_factor": 1})):  # 1: sorted within a batch only
        batches = batching.length_bucketed_batches(lengths, a.batch_size, seed=0, epoch=0, **kw)
        out[f"tokens_{name}"] = sum(len(b) * max(lengths[i] for i in b) for b in batches)
        out[f"pad_frac_{name}"] = batching.padding_fraction(ids, batches)
    out["tokens_ratio_pad128"] = n128 / out["tokens_bucketed"]
    return out
