"""
The documents' generated blocks: from a grid's committed runs to the tables and pictures between marker
comments (`<!-- grid:NAME:KEY -->` ... `<!-- /grid:NAME:KEY -->`) of README.md, RESULTS.md and
docs/speed.md. `write_readme` replaces exactly those blocks; `check_readme` says which differ from what
the committed cells give (a test runs it), so no number in a block is typed by hand.

Usage:
    python tools/experiments.py --grid methods --no_run --write_readme   # rewrite one grid's blocks
    python tools/experiments.py --check_readme                           # exit 1 if any block drifted
"""

import json
import os
import re

from grids import (ACCURACY_METHODS, ACCURACY_NOISE, Cell, GRIDS, MAIN_METHODS, MATCH_KINDS,
                   MATCH_SETTINGS, MATCH_TAU, MATCH_TAUS, PILOT_SETTINGS, QUICK, QUICK_OUT,
                   RESULTS, RESULT_METHODS, REUSED, SCALE_NOISE, SWEEP_CELLS,
                   finished_runs, read_json, status, ROOT)  # noqa: E402
import accuracy  # noqa: E402
import bench_runs  # noqa: E402
import fidelity  # noqa: E402
import report  # noqa: E402
import scale  # noqa: E402
import verdicts  # noqa: E402
from checkpoint import atomic_write  # noqa: E402


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
    if grid is GRIDS.get("scale-cost"):
        runs = finished_runs(grid, root)
        return {"cost-alone": scale.cost_table(runs)} if runs else {}
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
