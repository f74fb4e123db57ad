"""
Regenerate the README's results with one command: run a named grid of `train.py` cells
(method x dataset x noise kind x rate x seed), then write the tables and pictures.

* Every cell is one `train.py` run in `<runs>/<grid dir>/<dataset>/<noise><rate>/<method>/s<seed>`.
  A cell whose `summary.json` exists is skipped; one with a checkpoint is resumed
  (`train.py --resume`), so an interrupted sweep continues where it stopped.
* Cells run in the order the grid lists them (most important first), `--jobs` at a time,
  each with `cores // jobs` threads.
* The README's results live between marker comments (`<!-- grid:NAME:KEY -->` ...
  `<!-- /grid:NAME:KEY -->`); `--write_readme` replaces exactly those blocks with tables
  built by report.py from the runs on disk, so nothing there is typed by hand. A cell
  that has not run yet shows up as fewer seeds, never as a made-up number.

Usage:
    python tools/experiments.py --grid quick --jobs 2              # ~20 min on a 2-core CPU
    python tools/experiments.py --grid methods --jobs 2 --write_readme # RESULTS.md's methods grid (many hours on a CPU)
    python tools/experiments.py --grid paper --device cuda         # whole datasets, 8 epochs: one GPU (not yet run)
    python tools/experiments.py --grid methods --dry_run           # list the cells and what is done
"""

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project, one folder up
sys.path[:0] = [ROOT, os.path.dirname(os.path.abspath(__file__))]
import accuracy  # noqa: E402
import bench_runs  # noqa: E402
import fidelity  # noqa: E402
import report  # noqa: E402
import scale  # noqa: E402
import verdicts  # noqa: E402
from checkpoint import CHECKPOINT_NAME, atomic_write  # noqa: E402

TRAIN_PY = os.path.join(ROOT, "train.py")
# a grid cell's method is a registry method (methods/: `--method NAME`) or one of these variants
VARIANTS = {
    "clear": ["--method", "clear", "--peft", "lora"],
    "match": ["--method", "match", "--peft", "lora", "--match_init", "identity"],  # as the methods grid ran it
    "clear-adapter": ["--method", "clear", "--peft", "adapter"],
    # sweeps of the two settings DESIGN leaves open: Match-Tuning's tau, LoRAMoE's learning rate
    **{f"match-tau{t:g}": ["--method", "match", "--peft", "lora", "--match_tau", f"{t:g}", "--match_init", "identity"]
       for t in (0.3, 1, 10)},
    "loramoe-lr2e-3": ["--method", "loramoe", "--lr", "2e-3"],
    # the clean-sample detector: the per-sample loss EMA off (the default is the official 0.9)
    "clear-ema0": ["--method", "clear", "--peft", "lora", "--loss_ema", "0"],
    "lora-ema0": ["--method", "lora", "--loss_ema", "0"],
    # CleaR's recipe against the official code's choices, one change at a time (fair-test issue)
    "clear-constlr": ["--method", "clear", "--peft", "lora", "--lr_schedule", "constant", "--warmup_ratio", "0"],
    "clear-8ep": ["--method", "clear", "--peft", "lora", "--epochs", "8"],
    "clear-r4a1": ["--method", "clear", "--peft", "lora", "--lora_r", "4", "--lora_alpha", "1"],
    "clear-freeze": ["--method", "clear", "--peft", "lora", "--clear_freeze"],
    "clear-adapter-official": ["--method", "clear", "--peft", "adapter", "--base_rate", "0.7", "--consistency_temp", "0.5"],
}
# a CPU-sized subset: stratified 1,000 train / 1,000 test examples, 64 tokens
CPU_DATA = ["--max_train", "1000", "--max_test", "1000", "--max_len", "64"]


@dataclass
class Cell:
    dataset: str
    noise: str
    rate: float
    method: str
    seed: int
    args: list = field(default_factory=list)  # extra train.py arguments (data size, epochs)
    size: str = ""  # a folder level for grids that vary the data size (the scale grid: "n5000", "nall")

    def out_dir(self, root):
        name = os.path.splitext(os.path.basename(self.dataset))[0]  # a file path counts by its name
        return os.path.join(root, name, *([self.size] if self.size else []), f"{self.noise}{self.rate:g}",
                            self.method, f"s{self.seed}")

    def command(self, root, device):
        return [sys.executable, TRAIN_PY, "--dataset", self.dataset, "--noise", self.noise,
                "--noise_rate", f"{self.rate:g}", "--seed", str(self.seed),
                *VARIANTS.get(self.method, ["--method", self.method]), *self.args,
                "--device", device, "--out", self.out_dir(root), "--no_progress"]


def cells(datasets, noises, methods, seeds, args):
    """All combinations, seed-major, so a partial sweep covers every setting once before repeating."""
    return [Cell(d, n, r, m, s, list(args.get(d, []))) for s, d, (n, r), m
            in itertools.product(seeds, datasets, noises, methods)]


MAIN_METHODS = ["lora", "clear", "full", "loramoe", "match"]
# On two classes asym (i -> i+1 mod 2) has the same transition matrix as sym, so mr skips it.
MR_NOISE = [("sym", 0.4), ("idn", 0.4), ("sym", 0.2), ("idn", 0.2)]
NG_NOISE = [("sym", 0.4), ("asym", 0.4), ("idn", 0.4), ("sym", 0.2), ("asym", 0.2), ("idn", 0.2)]
# held-out check on a dataset no default was tuned on (8 imbalanced classes)
SWEEP_CELLS = cells(["mr"], [("sym", 0.4)], ["match-tau0.3", "match-tau1", "match-tau10", "loramoe-lr2e-3"], [0],
                    {"mr": CPU_DATA})
R8_CELLS = cells(["r8"], [("sym", 0.4), ("asym", 0.4)], ["lora", "clear", "full"], [0], {"r8": CPU_DATA})
GRIDS = {
    # ~20 min with --jobs 2 on a 2-core CPU (20 such cells took 32 min here): seed 0 of the two 40% mr settings
    "quick": cells(["mr"], MR_NOISE[:2], MAIN_METHODS, [0], {"mr": CPU_DATA}),
    # the README's grid, most informative first: seed 0 of every mr setting, the sweeps, the held-out
    # R8 rows, seeds 1 and 2 of mr, then 20 Newsgroups
    "cpu": (cells(["mr"], MR_NOISE, MAIN_METHODS, [0], {"mr": CPU_DATA})
            + SWEEP_CELLS + R8_CELLS
            + cells(["mr"], MR_NOISE, MAIN_METHODS, [1, 2], {"mr": CPU_DATA})
            + cells(["20ng"], NG_NOISE, MAIN_METHODS, [0, 1, 2], {"20ng": CPU_DATA})),
}
GRIDS["r8"] = R8_CELLS
# the detector's loss smoothing, on and off, for CleaR and for plain LoRA (whose runs show how detectable
# the noise is): 1,000 mr snippets, sym 0.4, 2 seeds
# CleaR's recipe, one official choice at a time, beside the plain PEFT kinds it routes
RECIPE = ["clear", "lora", "clear-constlr", "clear-8ep", "clear-r4a1", "clear-freeze", "clear-adapter",
          "clear-adapter-official", "adapter"]
# 20 Newsgroups' three seeds first (1,000 mr snippets barely learn: test accuracy 0.52-0.60), then mr seed 0
GRIDS["clear-recipe"] = (cells(["20ng"], [("sym", 0.4)], RECIPE, [0, 1, 2], {"20ng": CPU_DATA})
                         + cells(["mr"], [("sym", 0.4)], RECIPE, [0], {"mr": CPU_DATA}))
# Defaults re-chosen on noisy validation data, and claim 1 (PEFT memorises less than full fine-tuning) sized:
# each PEFT kind at its default learning rate and a lower and higher one, LoRA at three ranks (alpha/r fixed,
# so only capacity changes), a wider adapter, Match-Tuning's tau and LoRAMoE's rate; 20 Newsgroups sym 0.4
LR_VARIANTS = {"lora": (5e-4, 5e-3), "full": (1e-5, 1e-4, 3e-4), "bitfit": (1e-3, 2e-2), "adapter": (5e-4, 5e-3),
               "prefix": (5e-3,), "probe": (1e-3, 1e-1)}
for _kind, _rates in LR_VARIANTS.items():
    VARIANTS.update({f"{_kind}-lr{r:g}": ["--method", _kind, "--lr", f"{r:g}"] for r in _rates})
VARIANTS.update({"lora-r2": ["--method", "lora", "--lora_r", "2", "--lora_alpha", "4"],
                 "lora-r32": ["--method", "lora", "--lora_r", "32", "--lora_alpha", "64"],
                 "adapter-m64": ["--method", "adapter", "--adapter_size", "64"]})
GRIDS["lr-capacity"] = cells(["20ng"], [("sym", 0.4)],
                             ["lora", "adapter", "full", "full-lr1e-05", "full-lr0.0001", "lora-lr0.0005", "lora-lr0.005",
                              "bitfit", "bitfit-lr0.001", "lora-r2", "lora-r32", "adapter-lr0.0005",
                              "adapter-lr0.005", "match", "match-tau1", "match-tau10", "loramoe", "loramoe-lr2e-3",
                              "prefix", "prefix-lr0.005", "adapter-m64",
                              # added when full's and BitFit's best rate sat at the edge of the first range
                              "full-lr0.0003", "bitfit-lr0.02",
                              # the linear probe: the head alone on the frozen encoder's fixed features
                              "probe", "probe-lr0.001", "probe-lr0.1"], [0], {"20ng": CPU_DATA})
# bf16 autocast against fp32 on the CPU (performance issue): CleaR, the quick mr command (2,000 snippets) and
# the 20 Newsgroups fair-test setting, 3 seeds
VARIANTS.update({f"clear-{p}": ["--method", "clear", "--peft", "lora", "--precision", p] for p in ("fp32", "bf16")})
GRIDS["precision"] = [c for s in (0, 1, 2) for c in
                      cells(["mr"], [("sym", 0.4)], ["clear-fp32", "clear-bf16"], [s], {"mr": ["--max_train", "2000"]})
                      + cells(["20ng"], [("sym", 0.4)], ["clear-fp32", "clear-bf16"], [s], {"20ng": CPU_DATA})]
# The methods grid (results issue): every method on every dataset, 3 seeds, validation-selected, best and
# last accuracy. mr (binary) with no noise and sym 0.2 / 0.4; 20 Newsgroups and R8 with sym 0.2 / 0.4, asym 0.4
# and idn 0.4. The budget per cell is the fair-test setting (1,000 stratified training examples, 64 tokens,
# 6 epochs: plain LoRA's memorised share still rising at the end), with 500 test examples; mr trains on
# 2,000 snippets (at 1,000 it barely learns).
VARIANTS["loramoe-clean"] = ["--method", "loramoe", "--moe_types", "clean"]
RESULT_METHODS = ["lora", "clear", "full", "probe", "adapter", "clear-adapter", "loramoe-clean", "match"]
RESULT_DATA = {"20ng": ["--max_train", "1000", "--max_test", "500", "--max_len", "64"],
               "mr": ["--max_train", "2000", "--max_test", "500", "--max_len", "64"]}
RESULT_DATA["r8"] = RESULT_DATA["20ng"]
MULTI_NOISE = [("sym", 0.4), ("asym", 0.4), ("idn", 0.4), ("sym", 0.2)]
MR_RESULT_NOISE = [("sym", 0.4), ("none", 0.0), ("sym", 0.2)]


def every_method(args):
    """The methods grid's cells (data settings x RESULT_METHODS x seeds 0-2, seed-major) with these train.py
    arguments per dataset."""
    return [c for s in (0, 1, 2) for c in cells(["20ng", "r8"], MULTI_NOISE, RESULT_METHODS, [s], args)
            + cells(["mr"], MR_RESULT_NOISE, RESULT_METHODS, [s], args)]


GRIDS["methods"] = every_method(RESULT_DATA)
# The methods grid at the CleaR paper's scale: whole datasets, 128 tokens (train.py's default), the official 8
# epochs, every method and noise setting of the methods grid, 3 seeds - a single-GPU job (`--device cuda`, bf16
# autocast); not yet run on a GPU.
GRIDS["paper"] = every_method({d: ["--epochs", "8"] for d in ("20ng", "r8", "mr")})
# The accuracy grid (accuracy issue): what a perfect detector would buy (the oracles), what a practitioner does
# instead (confident learning on frozen embeddings) and the noisy-label methods of methods/, at the methods grid's
# budget and settings (mr sym 0.2 / 0.4; 20ng and R8 sym 0.2 / 0.4, asym 0.4, idn 0.4), seeds 0-2. LoRA and
# CleaR come from the methods grid (REUSED). First a pilot on seed 0 of four settings: filter-and-retrain's
# variants, chosen on noisy validation (ACCURACY_FAR names the chosen one).
VARIANTS.update({
    "oracle-clean": ["--method", "lora", "--oracle", "clean-subset"],
    "oracle-noisefree": ["--method", "lora", "--oracle", "noise-free"],
    **{f"far-{rows}": ["--method", "far", "--far_rows", rows] for rows in ("drop", "relabel", "unlabelled")},
    **{f"far-{rows}-loss": ["--method", "far", "--far_rows", rows, "--far_score", "loss"]
       for rows in ("drop", "relabel", "unlabelled")},
    **{f"far-{rows}-cf": ["--method", "far", "--far_rows", rows, "--far_folds", "2"]
       for rows in ("drop", "relabel", "unlabelled")},
})
ACCURACY_NOISE = {"mr": [("sym", 0.2), ("sym", 0.4)], "20ng": MULTI_NOISE, "r8": MULTI_NOISE}
PILOT_SETTINGS = [("20ng", ("sym", 0.4)), ("r8", ("sym", 0.4)), ("mr", ("sym", 0.2)), ("20ng", ("asym", 0.4))]
ACCURACY_FAR = "far-unlabelled"  # the variant the pilot chose on noisy validation (RESULTS.md, "Filter and retrain")
ACCURACY_METHODS = ["oracle-clean", "oracle-noisefree", "practitioner", ACCURACY_FAR, "selfmix", "gce", "elr",
                    "smallloss"]
REUSED = {"results/methods": ["lora", "clear"]}  # rows read from another grid's committed cells


def accuracy_cells():
    """The pilot's detector-input variants first (rows: drop / relabel / unlabelled), then the chosen
    variant's score and cross-fitting checks, then seed 0 of every other row, then everything else,
    seed-major."""
    pilot = [c for d, noise in PILOT_SETTINGS for c in cells([d], [noise], ["far-drop", "far-relabel", "far-unlabelled"],
                                                             [0], RESULT_DATA)]
    checks = [c for d, noise in PILOT_SETTINGS for c in cells([d], [noise], [f"{ACCURACY_FAR}-loss",
                                                                              f"{ACCURACY_FAR}-cf"], [0], RESULT_DATA)]
    main = [c for s in (0, 1, 2) for d in ("20ng", "r8", "mr")
            for c in cells([d], ACCURACY_NOISE[d], ACCURACY_METHODS, [s], RESULT_DATA)]
    first = [c for c in main if c.seed == 0 and c.method != ACCURACY_FAR]
    return pilot + checks + first + [c for c in main if c not in pilot + first]


GRIDS["accuracy"] = accuracy_cells()
# The scale grid (fidelity issue): do the claims hold with more data? Plain LoRA, CleaR (LoRA), full
# fine-tuning and the accuracy grid's most consistent method (GCE) on 20ng sym 0.4 and mr sym 0.2 at 1,000,
# 2,000, 5,000 and every training example, the methods grid's 64 tokens, 6 epochs and 500 test examples, seeds
# 0-2. The methods grid's and accuracy grid's cells give 20ng at 1,000 and mr at 2,000 (SCALE_REUSED).
SCALE_METHODS = ["lora", "clear", "full", "gce"]
SCALE_SIZES = {"20ng": (2000, 5000, None), "mr": (1000, 5000, None)}  # None: the whole training split
SCALE_NOISE = {"20ng": ("sym", 0.4), "mr": ("sym", 0.2)}


def scale_cells():
    """Seed-major, then size ascending, so a partial run holds whole curves for the first seeds."""
    out = []
    for s in (0, 1, 2):
        for d in ("20ng", "mr"):
            for n in SCALE_SIZES[d]:
                size = ["--max_train", str(n)] if n else []
                out += [Cell(d, *SCALE_NOISE[d], m, s, size + ["--max_test", "500", "--max_len", "64"],
                             size=f"n{n}" if n else "nall") for m in SCALE_METHODS]
    return out


GRIDS["scale"] = scale_cells()
# The Match-Tuning grid (fidelity issue): the method as published - a fresh dense layer N(0, 0.02) before the
# in-batch matching - on LoRA and on full fine-tuning (the paper's setting, full fine-tuning's learning rate),
# 20ng and mr at sym 0.4, the methods grid's budget. First a pilot on seed 0: tau over a range whose epoch-1
# self-share (match_diag) spans well below 0.5, chosen on noisy validation (MATCH_TAU names the choice).
MATCH_TAUS = (0.3, 1, 3, 10)
MATCH_KINDS = {"lora": ["--peft", "lora"], "full": ["--peft", "none"]}
VARIANTS.update({f"match-{k}-tau{t:g}": ["--method", "match", *a, "--match_tau", f"{t:g}"]
                 for k, a in MATCH_KINDS.items() for t in MATCH_TAUS})
MATCH_SETTINGS = [("20ng", ("sym", 0.4)), ("mr", ("sym", 0.4))]


# chosen in the pilot on noisy validation (accuracy averaged over the last three epochs and both settings)
MATCH_TAU = {"lora": 10, "full": 1}
for _k, _a in MATCH_KINDS.items():
    _t = f"{MATCH_TAU[_k]:g}"
    VARIANTS.update({f"match-{_k}-id-tau{_t}": ["--method", "match", *_a, "--match_tau", _t, "--match_init", "identity"],
                     f"match-{_k}-nomix": ["--method", "match", *_a, "--match_mix", "none"],
                     f"match-{_k}-tau{_t}-evalmix": ["--method", "match", *_a, "--match_tau", _t, "--match_eval", "mix"],
                     f"match-{_k}-tau{_t}-random": ["--method", "match", *_a, "--match_tau", _t, "--batch_order",
                                                    "random"]})


def match_cells():
    """The pilot (every tau on both kinds and both settings, seed 0), then at each kind's chosen tau: the
    method on seeds 1-2, the identity-init ablation and the no-mixing control on seeds 0-2, evaluation with
    the mix once (seed 0), and random batches once (LoRA, seed 0)."""
    pilot = [c for d, noise in MATCH_SETTINGS for k in MATCH_KINDS
             for c in cells([d], [noise], [f"match-{k}-tau{t:g}" for t in MATCH_TAUS], [0], RESULT_DATA)]
    main = []
    for s in (0, 1, 2):
        for k in MATCH_KINDS:
            t = f"{MATCH_TAU[k]:g}"
            names = ([f"match-{k}-tau{t}"] if s else [f"match-{k}-tau{t}-evalmix"]) + \
                [f"match-{k}-id-tau{t}", f"match-{k}-nomix"]
            main += [c for d, noise in MATCH_SETTINGS for c in cells([d], [noise], names, [s], RESULT_DATA)]
    # the table's batches are length-bucketed; the official code draws them at random: once, on LoRA, seed 0
    random = [c for d, noise in MATCH_SETTINGS for c in cells([d], [noise], [f"match-lora-tau{MATCH_TAU['lora']:g}-random"],
                                                                [0], RESULT_DATA)]
    return pilot + main + random


GRIDS["match"] = match_cells()
# The LoRAMoE grid (fidelity issue): can the localized balance act on label-noise types at all? Beside the
# methods grid's LoRA cells, LoRAMoE with loss-mixture types and four controls on 20ng and mr at sym 0.4, seeds 0-2: the
# constraint off (--moe_beta 0, the official script's default), no types (plain balance, our own extension), the
# true noisy flags as types (an oracle), and plain LoRA on the same FFN linears with LoRAMoE's trainable-parameter
# count (r 27: 629,780 on 20ng) and learning rate (5e-4).
VARIANTS.update({
    "loramoe-none": ["--method", "loramoe", "--moe_types", "none"],
    "loramoe-off": ["--method", "loramoe", "--moe_types", "clean", "--moe_beta", "0"],
    "loramoe-truth": ["--method", "loramoe", "--moe_types", "truth"],
    "lora-ffn-r27": ["--method", "lora", "--lora_targets", "ffn_in,ffn_out", "--lora_r", "27", "--lr", "5e-4"],
})
LORAMOE_CONTROLS = ["loramoe-none", "loramoe-off", "loramoe-truth", "lora-ffn-r27", "loramoe-clean"]  # the last:
# the methods grid's cells again, with this code's specialisation metrics (the same training; to be checked)
GRIDS["loramoe"] = [c for s in (0, 1, 2) for d, noise in MATCH_SETTINGS
                    for c in cells([d], [noise], LORAMOE_CONTROLS, [s], RESULT_DATA)]
# Where the types are visible in the input: no noise, each sample typed by its observed label's half of the
# class list - on mr+r8 the source (movie reviews vs Reuters), on mr the sentiment class - with the balance
# on (the method) and off (--moe_beta 0: how far routing separates the types by itself).
VARIANTS.update({"loramoe-label": ["--method", "loramoe", "--moe_types", "label"],
                 "loramoe-label-off": ["--method", "loramoe", "--moe_types", "label", "--moe_beta", "0"]})
RESULT_DATA["mr+r8"] = RESULT_DATA["mr"]
LORAMOE_VISIBLE = ["mr+r8", "mr"]
GRIDS["loramoe"] += [c for s in (0, 1, 2) for d in LORAMOE_VISIBLE
                     for c in cells([d], [("none", 0.0)], ["loramoe-label", "loramoe-label-off"], [s], RESULT_DATA)]
GRIDS["ema"] = cells(["mr"], [("sym", 0.4)], ["clear", "clear-ema0", "lora", "lora-ema0"], [0, 1], {"mr": CPU_DATA})


# The label-issue flag (newcomer issue): the methods grid's LoRA and CleaR cells of four settings re-run - the
# same training, the same metrics - with label_issues.csv flagging the detector's estimated share of rows, so each
# row's flag precision and recall sit beside the methods grid's, where the flag was P(clean) <= 0.5.
ISSUES_SETTINGS = [("mr", ("sym", 0.2)), ("mr", ("sym", 0.4)), ("20ng", ("sym", 0.4)), ("r8", ("asym", 0.4))]
GRIDS["issues"] = [c for s in (0, 1, 2) for d, noise in ISSUES_SETTINGS
                   for c in cells([d], [noise], ["clear", "lora"], [s], RESULT_DATA)]


# The README's quick command, `python train.py --method clear --max_train 2000`, as a cell: its log is the
# output the README shows (the readme grid's quick-output block, with the path the command itself writes).
QUICK = Cell("mr", "sym", 0.2, "clear", 0, ["--max_train", "2000"])
GRIDS["readme"] = [QUICK]

# the speed tables of docs/speed.md: no training cells - several saved tools/bench.py outputs (bench_runs.py)
GRIDS["bench"] = []
QUICK_OUT = "runs/mr-clear-lora-sym0.2-s0"  # where the quick command writes (train.py's default --out)


# where each grid's cells are committed (a cell there counts as done on any machine); --runs defaults to it
RESULTS = {"lr-capacity": "results/fair-test", "clear-recipe": "results/fair-test", "ema": "results/ema",
           "precision": "results/precision", "methods": "results/methods", "accuracy": "results/accuracy",
           "scale": "results/scale", "match": "results/match", "loramoe": "results/loramoe",
           "issues": "results/issues", "readme": "results/readme", "bench": "results/bench"}


def read_json(path):
    """The parsed file, or None when it does not exist."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def status(cell, root):
    d = cell.out_dir(root)
    if os.path.isfile(os.path.join(d, "summary.json")):
        return "done"
    return "partial" if os.path.isfile(os.path.join(d, CHECKPOINT_NAME)) else "todo"


def run_grid(grid, root, jobs, device, threads):
    """Run every unfinished cell, `jobs` at a time; returns the number of failed cells."""
    todo = [c for c in grid if status(c, root) != "done"]
    print(f"{len(grid) - len(todo)} of {len(grid)} cells done; running {len(todo)} with {jobs} job(s) "
          f"x {threads} thread(s)", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    running, failed, started = [], 0, time.time()
    while todo or running:
        while todo and len(running) < jobs:
            cell = todo.pop(0)
            cmd = cell.command(root, device) + (["--resume"] if status(cell, root) == "partial" else ["--overwrite"])
            os.makedirs(cell.out_dir(root), exist_ok=True)
            log = open(cell.out_dir(root) + ".log", "a")
            running.append((cell, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
        time.sleep(2)
        for item in list(running):
            cell, proc, log = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log.close()
            ok = proc.returncode == 0
            failed += not ok
            print(f"[{(time.time() - started) / 60:5.1f} min] {'done' if ok else 'FAILED'}: {cell.out_dir(root)}"
                  + ("" if ok else f" (see {cell.out_dir(root)}.log)"), flush=True)
    return failed


def finished_runs(grid, root, **match):
    """report.load_runs() of the grid's finished cells whose fields equal `match`."""
    dirs = [c.out_dir(root) for c in grid if status(c, root) == "done"
            and all(getattr(c, k) in (v if isinstance(v, (list, tuple)) else [v]) for k, v in match.items())]
    return report.load_runs(dirs)


# one picture per method that has its own diagnostics: (file stem, caption, draw(run_dir, png_path))
PICTURES = {
    "clear": ("clear_gates", "CleaR: how often truly clean vs truly noisy samples get their PEFT modules, and the "
                             "detector's AUROC, per epoch",
              lambda d, path: report.plot_curves(report.load_runs([d]), ["gate_rate_clean", "gate_rate_noisy",
                                                                         "det_auroc"], path, "rate / AUROC")),
    "loramoe": ("loramoe_groups", "LoRAMoE expert group 0's routing share, truly clean vs noisy",
                lambda d, path: report.plot_curves(report.load_runs([d]), ["moe_g0_clean", "moe_g0_noisy"], path,
                                                   "routing share")),
    "match": ("match_mass", "Match-Tuning: where each example's mixing mass goes, per epoch",
              lambda d, path: report.plot_curves(report.load_runs([d]), ["match_diag", "match_same_label",
                                                                         "match_diff_label"], path,
                                                 "share of mixing mass")),
}


def readme_blocks(grid, root, assets, draw=()):
    """{marker key: markdown} for every table and picture of this grid that has runs; the pictures
    whose keys are in `draw` are drawn too (--write_readme: those some document marks; check_readme:
    none, the same markdown)."""
    if grid is GRIDS.get("accuracy"):
        return accuracy_blocks(grid, root, assets, draw)
    if grid is GRIDS.get("match") or grid is GRIDS.get("loramoe"):
        return fidelity_blocks(grid, root)
    if grid is GRIDS.get("bench"):
        return bench_runs.blocks(root, shown=RESULTS["bench"])
    if grid is GRIDS.get("readme"):
        log = QUICK.out_dir(root) + ".log"
        if not os.path.isfile(log):
            return {}
        with open(log) as f:
            text = f.read().replace(QUICK.out_dir(RESULTS["readme"]), QUICK_OUT).rstrip()  # as the log says it
        with open(os.path.join(QUICK.out_dir(root), "summary.json")) as f:
            wall = json.load(f)["wall_s"]
        return {"quick-output": f"```\n$ python train.py --method clear --max_train 2000\n{text}\n```\n\n"
                                f"(This run: {wall:.0f} s wall time on one CPU thread, in bf16 autocast.)"}
    if grid is GRIDS.get("issues"):
        same = [c for c in GRIDS["methods"] if c in grid]  # the same cells, flagged by P(clean) <= 0.5
        matrices = []  # (summary, noise_matrix.json, the practitioner's of the same draw) of each finished cell
        accuracy_root = os.path.join(ROOT, RESULTS["accuracy"])
        for c in [c for c in grid if status(c, root) == "done"]:
            held_out = Cell(c.dataset, c.noise, c.rate, "practitioner", c.seed).out_dir(accuracy_root)
            got = [read_json(os.path.join(d, name)) for d, name in
                   [(c.out_dir(root), "summary.json"), (c.out_dir(root), "noise_matrix.json"),
                    (held_out, "noise_matrix.json")]]
            if got[2] and got[2]["realised_true_x_observed"] != got[1]["realised_true_x_observed"]:
                got[2] = None  # not the same noise draw
            matrices.append(tuple(got))
        return {"issues-flags": report.flag_table(finished_runs(grid, root),
                                                  finished_runs(same, os.path.join(ROOT, RESULTS["methods"]))),
                "issues-rates": report.rate_table(matrices)}
    if grid is GRIDS.get("scale"):
        path = os.path.join(assets, "scale_curves.png")
        return scale.scale_blocks(finished_runs(grid, root) + scale_reused_runs(), path, draw="scale-curves" in draw)
    everything = finished_runs(grid, root)  # table-all: every finished cell, one row per setting
    extras = ["val_last3", "selected_val_acc", "det_auroc"] + (["samples_per_s", "wall_s"] if grid is GRIDS["precision"] else [])
    blocks = {"table-all": report.table(everything, extras)} if everything else {}
    results = grid is GRIDS.get("methods")  # the methods grid: verdicts, every noise setting, results_* pictures
    if results and everything:  # each claim as numbers (tools/verdicts.py)
        blocks["verdicts"] = verdicts.table(everything)
        blocks["verdicts-all"] = verdicts.table(everything, overall_only=True)
        blocks["moe-groups"] = verdicts.moe_groups_table(everything)
        blocks["cost"] = report.cost_table(everything)
    sweep_cells = [c for c in grid if not c.method.startswith(("clear", "match", "loramoe"))]
    capacity = finished_runs(sweep_cells, root)
    if grid is GRIDS.get("lr-capacity") and capacity:  # claim 1: memorisation against fit, PEFT vs full
        path = os.path.join(assets, "capacity_20ng.png")
        if "capacity" in draw:
            report.plot_capacity(capacity, path)
        blocks["capacity"] = f"![memorised share against clean fit, every capacity and learning rate]({path})"
    shown = RESULT_METHODS if results else MAIN_METHODS
    prefix = "results_" if results else ""  # the earlier grids' pictures keep their names
    rates = {} if results else {"rate": 0.4}  # results: a memorisation panel per noise setting
    for dataset in sorted({c.dataset for c in grid}):
        runs = finished_runs(grid, root, dataset=dataset, method=shown)
        if not runs:
            continue
        blocks[f"table-{dataset}"] = report.table(runs, ["memorised_rise", "det_auroc"])
        main = finished_runs(grid, root, dataset=dataset, method=["lora", "clear", "full"], **rates)
        if main:
            path = os.path.join(assets, f"{prefix}memorisation_{dataset}.png")
            if f"memorisation-{dataset}" in draw:
                report.plot_memorisation(main, path)
            blocks[f"memorisation-{dataset}"] = f"![memorised fraction and test accuracy per epoch, {dataset}]({path})"
    sweep = [c for c in grid if c in SWEEP_CELLS or (c.dataset, c.noise, c.rate, c.seed) == ("mr", "sym", 0.4, 0)
             and c.method in ("match", "loramoe")]
    sweep_runs = finished_runs(sweep, root)
    if any(c in SWEEP_CELLS for c in sweep):
        blocks["table-sweep"] = report.table(sweep_runs, ["match_same_label", "match_diff_label"], by_lr=True)
    first = [c for c in grid if c.seed == 0 and c.noise == "sym" and c.rate == 0.4 and status(c, root) == "done"]
    for cell in first:
        method = cell.method.partition("-")[0]  # a variant (loramoe-clean) draws as its method
        if method not in PICTURES or f"picture-{method}" in blocks:
            continue
        name, caption, picture = PICTURES[method]
        path = os.path.join(assets, f"{prefix}{name}_{cell.dataset}.png")
        if f"picture-{method}" in draw:
            picture(cell.out_dir(root), path)
        blocks[f"picture-{method}"] = f"![{caption}]({path})"
    return blocks


FIDELITY_BASELINES = {"match": ["lora", "full"], "loramoe": ["lora"]}  # from the methods grid


def fidelity_blocks(grid, root):
    """The Match-Tuning or LoRAMoE study's blocks (tools/fidelity.py), with the methods grid's cells of
    FIDELITY_BASELINES at the study's settings beside them."""
    name = "match" if grid is GRIDS.get("match") else "loramoe"
    settings = {(d, n, r) for d, (n, r) in MATCH_SETTINGS}
    base = [c for c in GRIDS["methods"] if c.method in FIDELITY_BASELINES[name] and (c.dataset, c.noise, c.rate)
            in settings]
    baseline = finished_runs(base, os.path.join(ROOT, RESULTS["methods"]))
    if name == "loramoe":
        return fidelity.loramoe_blocks(finished_runs(grid, root), baseline)
    pilot = [c for c in grid if c.method in {f"match-{k}-tau{t:g}" for k in MATCH_KINDS for t in MATCH_TAUS}
             and c.seed == 0]
    main = [c for c in grid if c not in pilot or c.method == f"match-{c.method.split('-')[1]}-tau"
            f"{MATCH_TAU[c.method.split('-')[1]]:g}"]
    return fidelity.match_blocks(finished_runs(pilot, root), finished_runs(main, root), baseline)


SCALE_REUSED = {"results/methods": ["lora", "clear", "full"], "results/accuracy": ["gce"]}  # at their grid's N


def scale_reused_runs():
    """The scale curves' points at the methods grid's sizes (20ng 1,000, mr 2,000): those grids' finished
    cells of SCALE_METHODS at SCALE_NOISE."""
    runs = []
    for results_dir, names in SCALE_REUSED.items():
        grid = GRIDS["methods" if results_dir == "results/methods" else "accuracy"]
        cells_here = [c for c in grid if c.method in names and (c.noise, c.rate) == SCALE_NOISE.get(c.dataset)]
        runs += finished_runs(cells_here, os.path.join(ROOT, results_dir))
    return runs


def reused_runs(grid_name):
    """The accuracy grid's rows read from another grid (REUSED): its finished cells of these methods in the
    accuracy grid's settings."""
    runs = []
    for results_dir, names in REUSED.items():
        reused = [c for c in GRIDS[grid_name] if c.method in names and (c.noise, c.rate) in ACCURACY_NOISE[c.dataset]]
        runs += finished_runs(reused, os.path.join(ROOT, results_dir))
    return runs


def accuracy_blocks(grid, root, assets, draw=()):
    """The accuracy grid's blocks (tools/accuracy.py): the verdicts, the targets, the pilot, a table per
    dataset and the accuracy picture, with LoRA and CleaR from the methods grid beside the new rows."""
    runs = finished_runs([c for c in grid if c.method in ACCURACY_METHODS], root) + reused_runs("methods")
    if not runs:
        return {}
    pilot = finished_runs([c for c in grid if c.method.startswith("far-") and c.seed == 0
                           and (c.dataset, (c.noise, c.rate)) in PILOT_SETTINGS], root)
    blocks = {"accuracy-verdicts": accuracy.verdicts_table(runs), "accuracy-targets": accuracy.targets_table(runs),
              "accuracy-cost": report.cost_table(runs)}
    if pilot:
        blocks["accuracy-pilot"] = accuracy.pilot_table(pilot)
    for dataset in ACCURACY_NOISE:
        if any(s["config"]["dataset"] == dataset for s, _ in runs):
            blocks[f"accuracy-{dataset}"] = accuracy.setting_table(runs, dataset)
    path = os.path.join(assets, "accuracy_curves.png")
    if "accuracy-curves" in draw:
        accuracy.plot_accuracy(runs, [("20ng", "sym 0.4"), ("r8", "sym 0.4"), ("mr", "sym 0.2")], path)
    blocks["accuracy-curves"] = f"![clean-test accuracy and memorised share per epoch, every method and the oracles]({path})"
    return blocks


# a generated block: `<!-- grid:NAME:KEY -->`, newline, body, `<!-- /grid:NAME:KEY -->`
MARKED_BLOCK = re.compile(r"(<!-- grid:([\w.-]+):([\w.-]+) -->\n)(.*?)(<!-- /grid:\2:\3 -->)", re.S)


def write_readme(readme, grid_name, blocks):
    """Replace the body of each `<!-- grid:NAME:KEY -->` block this file marks for this grid with
    blocks[KEY]; returns the keys written."""
    with open(readme) as f:
        text = f.read()
    written = set()
    def replace(m):
        if m.group(2) != grid_name or m.group(3) not in blocks:
            return m.group(0)
        written.add(m.group(3))
        return m.group(1) + blocks[m.group(3)] + "\n" + m.group(5)
    text = MARKED_BLOCK.sub(replace, text)
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    atomic_write(readme, write)
    print(f"wrote {len(written)} block(s) into {readme}")
    return written


def marked_blocks(text):
    """{(grid name, key): body} of every marked block in the text."""
    return {(m.group(2), m.group(3)): m.group(4) for m in MARKED_BLOCK.finditer(text)}


def check_readme(readme, assets="assets"):
    """The README's marked blocks of every grid stored under results/ (RESULTS) that differ from what
    readme_blocks() makes of the committed cells now: [(grid, key, why)]; [] = all equal."""
    with open(readme) as f:
        marked = marked_blocks(f.read())
    wrong, made = [], {}
    for grid_name, key in sorted(marked):
        if grid_name not in RESULTS:
            continue
        if grid_name not in made:
            made[grid_name] = readme_blocks(GRIDS[grid_name], os.path.join(ROOT, RESULTS[grid_name]), assets)
        want = made[grid_name].get(key)
        if want is None:
            wrong.append((grid_name, key, "no block of this name comes out of the results"))
        elif marked[grid_name, key] != want + "\n":
            wrong.append((grid_name, key, "differs from what the committed results give"))
    return wrong


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", choices=sorted(GRIDS), default="quick", help="which grid to run")
    p.add_argument("--runs", default=None, help="root directory of the cells' run directories (default: where "
                   "the grid's results are committed, RESULTS, else runs/GRID)")
    p.add_argument("--jobs", type=int, default=1, help="train.py processes at a time")
    p.add_argument("--threads", type=int, default=None, help="threads per job (default: cores // jobs)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="passed to train.py")
    p.add_argument("--dry_run", action="store_true", help="list the cells and their status, run nothing")
    p.add_argument("--no_run", action="store_true", help="skip training; only aggregate what exists")
    p.add_argument("--write_readme", action="store_true", help="write tables and pictures into README.md")
    p.add_argument("--readme", default="README.md,RESULTS.md,docs/speed.md", help="the files (comma list) whose marker blocks are "
                   "rewritten (--write_readme) or checked (--check_readme)")
    p.add_argument("--assets", default="assets", help="where the pictures go")
    p.add_argument("--check_readme", action="store_true", help="only check that the README's marked blocks of "
                   "the grids stored under results/ equal what their committed cells give; exit 1 if not")
    args = p.parse_args(argv)
    docs = [d.strip() for d in args.readme.split(",") if d.strip()]
    if args.check_readme:
        wrong = [(doc, *w) for doc in docs for w in check_readme(doc, args.assets)]
        for doc, grid_name, key, why in wrong:
            print(f"{doc}: block grid:{grid_name}:{key} {why} (regenerate: python tools/experiments.py "
                  f"--grid {grid_name} --no_run --write_readme)")
        return 1 if wrong else 0
    args.runs = args.runs or RESULTS.get(args.grid, os.path.join("runs", args.grid))
    grid = GRIDS[args.grid]
    if args.dry_run:
        for c in grid:
            print(f"{status(c, args.runs):8s} python train.py {' '.join(c.command(args.runs, args.device)[2:])}")
        return 0
    failed = 0
    if not args.no_run:
        failed = run_grid(grid, args.runs, args.jobs, args.device,
                          args.threads or max(1, (os.cpu_count() or 1) // args.jobs))
    runs = finished_runs(grid, args.runs)
    if runs:
        print(report.table(runs, ["det_auroc"]))
    if args.write_readme:
        marked = set()
        for doc in docs:
            with open(doc) as f:
                marked |= {key for name, key in marked_blocks(f.read()) if name == args.grid}
        blocks = readme_blocks(grid, args.runs, args.assets, draw=marked)  # no picture nothing shows
        written = set().union(*(write_readme(doc, args.grid, blocks) for doc in docs))
        for key in sorted(set(blocks) - written):
            print(f"note: no <!-- grid:{args.grid}:{key} --> marker in {', '.join(docs)}; block not written")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
