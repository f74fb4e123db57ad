"""
Turn finished runs into the README's tables and pictures.

Reads every `summary.json` (and `metrics.jsonl`) below the given directories, groups runs
that differ only in their seed, and prints a markdown table: mean (and spread over seeds)
of best and last clean-test accuracy, the memorised fraction of noisy training labels,
accuracy on the truly clean training samples, the realised noise rate and the trainable
parameter count. With `--plot FILE` it also
draws the per-epoch memorisation curves (matplotlib, optional).

Usage:
    python tools/report.py runs/t2                        # markdown table on stdout
    python tools/report.py runs/t3 --plot assets/memorisation.png
    python tools/report.py runs/t4/clear --gmm_plot assets/gmm.png --gmm_epoch 4
    python tools/report.py --run runs/mr-clear-lora-sym0.2-s0  # that run's noise_matrix.png and reliability.png
"""

import argparse
import glob
import json
import os
import sys
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project, one folder up
import methods  # noqa: E402
from mixture import fit_gmm  # noqa: E402
from tables import markdown_table  # noqa: E402,F401  (re-exported: report.markdown_table)


def load_runs(dirs):
    """[(summary, metrics)] for every finished run below `dirs`."""
    runs = []
    for d in dirs:
        for path in sorted(glob.glob(os.path.join(d, "**", "summary.json"), recursive=True)):
            with open(path) as f:
                summary = json.load(f)
            with open(os.path.join(os.path.dirname(path), "metrics.jsonl")) as f:
                metrics = [json.loads(line) for line in f]
            runs.append((summary, metrics))
    return runs


# settings that tell runs apart without making them different experiments
NOT_VARIANTS = {"seed", "out", "device", "no_progress", "resume", "overwrite", "eval_batch_size", "eval_only", "load"}


def group_key(cfg, by_lr=False, variant=()):
    """(dataset, noise, method label); `variant`: config keys whose values are added to the label."""
    noise = "none" if cfg["noise"] == "none" else f"{cfg['noise']} {cfg['noise_rate']:g}"
    method = methods.label(cfg) + (f", lr {cfg['lr']:g}" if by_lr else "")
    method += "".join(f", {k} {cfg[k] if k in cfg else defaults(cfg['method']).get(k)}" for k in variant)
    return (os.path.basename(cfg["dataset"]), noise, method)


def defaults(method):
    """train.py's current defaults for `method` (its settings as `--method NAME` alone gives them)."""
    import train
    if method not in _DEFAULTS:
        _DEFAULTS[method] = vars(train.parse_args(["--method", method]))
    return _DEFAULTS[method]


_DEFAULTS = {}


def setting(cfg, key):
    """A run's value of a setting; one it lacks comes from a version without that setting: the default."""
    return repr(cfg[key]) if key in cfg else repr(defaults(cfg["method"]).get(key))


def variant_keys(configs):
    """{row: settings} - for each (dataset, noise, method label) row, the settings (other than the seed
    and the like) that differ between its runs: the row then splits by them, so variants are never
    pooled as seeds."""
    rows = defaultdict(list)
    for cfg in configs:
        rows[group_key(cfg)].append(cfg)
    return {row: tuple(sorted(k for k in set().union(*cfgs) - NOT_VARIANTS
                              if len({setting(c, k) for c in cfgs}) > 1))
            for row, cfgs in rows.items()}


def short_variants(configs, variants):
    """{row: f(cfg) -> the keys to name}: of a row's differing settings, only those where the run departs
    from train.py's default - unless that would give two different settings one name, then all of them."""
    by_row = defaultdict(list)
    for cfg in configs:
        by_row[group_key(cfg)].append(cfg)
    out = {}
    for row, cfgs in by_row.items():
        keys = variants[row]
        pick = lambda cfg, keys=keys: tuple(k for k in keys if setting(cfg, k) != repr(defaults(cfg["method"]).get(k)))
        settings = {tuple(setting(c, k) for k in keys) for c in cfgs}
        names = {tuple((k, setting(c, k)) for k in pick(c)) for c in cfgs}
        out[row] = pick if len(names) == len(settings) else (lambda cfg, keys=keys: keys)
    return out


def fmt(values, scale=100.0, digits=1):
    """'81.2' for one seed, '81.2 ± 0.4' (std over seeds) for several."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    v = np.array(values) * scale
    return f"{v.mean():.{digits}f}" if len(v) == 1 else f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


COUNT_COLUMNS = ("samples_per_s", "wall_s")  # extra columns shown as whole numbers
POINT_COLUMNS = ("memorised_rise",)  # extra columns shown in points, like the accuracies


def table(runs, extra_columns=(), by_lr=False):
    """A markdown table, one row per (dataset, noise, method, distinguishing settings), seeds aggregated:
    test accuracy at the epoch chosen on noisy validation data, at the best epoch (an oracle) and the last."""
    groups, variants = defaultdict(list), variant_keys([s["config"] for s, _ in runs])
    short = short_variants([s["config"] for s, _ in runs], variants)
    for summary, metrics in runs:  # extra columns may come from the last epoch's metrics
        cfg = summary["config"]
        variant = tuple(k for k in short[group_key(cfg)](cfg) if not (by_lr and k == "lr"))
        val = [m["val_acc"] for m in metrics if m.get("val_acc") is not None]
        # the noisy-validation accuracy of the selected epoch, and its mean over the last three epochs (the
        # saved model is the last epoch's; three epochs average out some of a small split's noise)
        selected_val = {"selected_val_acc": max(val), "val_last3": float(np.mean(val[-3:]))} if val else {}
        # is memorisation still going on at the end? the memorised share's change over the last two epochs
        memorised = [m.get("noisy_memorized") for m in metrics[-3:]]
        rise = {"memorised_rise": memorised[-1] - memorised[0]} if len(memorised) == 3 and None not in memorised else {}
        first = {f"{k}@1": v for k, v in metrics[0].items()} if metrics else {}  # "key@1": the first epoch's
        groups[group_key(cfg, by_lr, variant)].append({**first, **metrics[-1], **summary, **selected_val, **rise})
    head = ["dataset", "noise", "method", "seeds", "selected acc", "best acc", "last acc", "clean train acc",
            "memorised", "realised noise", "trainable", *extra_columns]
    rows = []
    for (dataset, noise_name, method), ss in sorted(groups.items()):
        row = [dataset, noise_name, method, str(len(ss)), fmt([s.get("selected_test_acc") for s in ss]),
               fmt([s["best_test_acc"] for s in ss]),
               fmt([s["last_test_acc"] for s in ss]), fmt([s.get("train_clean_acc") for s in ss]),
               fmt([s["noisy_memorized"] for s in ss]),
               fmt([s["realized_noise_rate"] for s in ss]), f"{ss[0]['trainable_params']:,}"]
        row += [fmt([s.get(c) for s in ss]) if c in POINT_COLUMNS else
                fmt([s.get(c) for s in ss], scale=1.0, digits=0 if c in COUNT_COLUMNS else 3) for c in extra_columns]
        rows.append(row)
    return markdown_table(head, rows)


def flag_table(runs, earlier):
    """label_issues.csv's flag on the training rows, per (dataset, noise, method): the detector's estimated
    noise rate against the realised one, the share flagged, precision and recall - and, from `earlier` runs
    of the same cells whose flag was P(clean) <= 0.5, that flag's share, precision and recall."""
    rows, old = [], defaultdict(list)
    for summary, _ in earlier:
        old[group_key(summary["config"])].append(summary)
    groups = defaultdict(list)
    for summary, _ in runs:
        groups[group_key(summary["config"])].append(summary)
    for key, ss in sorted(groups.items()):
        before = old.get(key, [])
        rows.append([*key, str(len(ss)), fmt([s["realized_noise_rate"] for s in ss]),
                     fmt([s.get("issues_estimated_rate") for s in ss]), fmt([s.get("issues_flagged") for s in ss]),
                     fmt([s.get("issues_precision") for s in ss]), fmt([s.get("issues_recall") for s in ss]),
                     fmt([s.get("issues_flagged") for s in before]), fmt([s.get("issues_precision") for s in before]),
                     fmt([s.get("issues_recall") for s in before])])
    head = ["dataset", "noise", "method", "seeds", "realised noise", "estimated rate", "flagged", "precision",
            "recall", "flagged (P(clean) <= 0.5)", "precision (0.5)", "recall (0.5)"]
    return markdown_table(head, rows)


def cost_table(runs):
    """Markdown: per method, how many cells ran and their median wall seconds with the quartiles - what
    a cell costs (only comparable within one grid: its cells ran under the same load)."""
    walls = defaultdict(list)
    for summary, _ in runs:
        if summary.get("wall_s") is not None:
            walls[methods.label(summary["config"])].append(summary["wall_s"])
    rows = [[m, str(len(w)), f"{np.median(w):.0f}", f"{np.percentile(w, 25):.0f}-{np.percentile(w, 75):.0f}"]
            for m, w in sorted(walls.items())]
    return markdown_table(["method", "cells", "median wall s", "quartiles"], rows)


def joint_rate(matrix):
    """The off-diagonal share of a noise_matrix.json's estimated counts."""
    joint = np.asarray(matrix["estimated_true_x_observed"], dtype=np.float64)
    return 1.0 - np.trace(joint) / max(joint.sum(), 1.0)


def rate_table(runs):
    """Three estimates of the noise rate against the realised one, per (dataset, noise, method), from
    [(summary, noise_matrix.json, the practitioner's noise_matrix.json of the same noise draw or None)]:
    the loss mixture's mean P(noisy) (what the flag uses), the off-diagonal share of the final model's
    confident joint (its own training-set predictions) and of the practitioner's (out-of-sample
    probabilities of a regression on frozen embeddings); the last row is each one's mean absolute error
    in points over the runs that have it."""
    groups, errors = defaultdict(list), defaultdict(list)
    for summary, matrix, held_out in runs:
        real = summary["realized_noise_rate"]
        got = {"mixture": summary["issues_estimated_rate"], "joint": joint_rate(matrix),
               "held_out": joint_rate(held_out) if held_out else None}
        groups[group_key(summary["config"])].append((real, got))
        for k, v in got.items():
            if v is not None:
                errors[k].append(abs(v - real))
    names = ("mixture", "joint", "held_out")
    rows = [[*key, str(len(v)), fmt([r for r, _ in v]), *(fmt([g[k] for _, g in v]) for k in names)]
            for key, v in sorted(groups.items())]
    if rows:
        rows.append(["all", "", "mean abs. error", str(len(runs)), "",
                     *(fmt([float(np.mean(errors[k]))] if errors[k] else []) for k in names)])
    head = ["dataset", "noise", "method", "runs", "realised noise", "mixture: mean P(noisy)",
            "confident joint (own predictions)", "confident joint (practitioner, out-of-sample)"]
    return markdown_table(head, rows)


def pyplot():
    """matplotlib.pyplot without a display; matplotlib is optional, so say how to get it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("plotting needs matplotlib: pip install matplotlib") from None
    return plt


def plot_memorisation(runs, path):
    """Per-epoch memorised fraction and clean-test accuracy, one line per method, one panel per noise."""
    plt = pyplot()
    noisy = [(s, m) for s, m in runs if s["config"]["noise"] != "none"]
    noise_names = sorted({group_key(s["config"])[1] for s, _ in noisy})
    fig, axes = plt.subplots(2, len(noise_names), figsize=(4.5 * len(noise_names), 6.5), squeeze=False)
    curves = defaultdict(list)
    for s, m in noisy:
        curves[group_key(s["config"])].append(m)
    for (dataset, noise_name, method), ms in sorted(curves.items()):
        col = noise_names.index(noise_name)
        for row, key in enumerate(("noisy_memorized", "test_acc")):
            y = np.mean([[e[key] for e in m] for m in ms], axis=0)
            axes[row, col].plot(np.arange(1, len(y) + 1), 100 * y, marker="o", label=method)
        axes[0, col].set_title(f"{dataset}, {noise_name}")
    for col in range(len(noise_names)):
        axes[0, col].set_ylabel("noisy labels memorised (%)")
        axes[1, col].set_ylabel("clean test accuracy (%)")
        axes[1, col].set_xlabel("epoch")
    axes[0, 0].legend(fontsize=8)
    for ax in axes.flat:
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def plot_capacity(runs, path):
    """Claim 1 at equal fit: each run's memorised share of the truly noisy training labels against its
    accuracy on the truly clean ones after the last epoch - PEFT memorising less than full fine-tuning
    means lying lower at the same clean fit, not merely fitting less. Colour: trained (PEFT) kind;
    each point is labelled with its learning rate (and LoRA rank or adapter width when not the default)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    colours = {}
    for s, m in runs:
        cfg = s["config"]
        kind = methods.get(cfg["method"], cfg.get("method_module")).kind_name(argparse.Namespace(**cfg))
        first = kind not in colours  # label each kind's colour once
        colour = colours.setdefault(kind, f"C{len(colours)}")
        x, y = 100 * s["train_clean_acc"], 100 * s["noisy_memorized"]
        ax.scatter(x, y, color=colour, label=kind if first else None)
        extra = "".join(f", {k} {cfg[k]}" for k in ("lora_r", "adapter_size")  # the capacity knobs, if moved
                        if kind in k and k in cfg and cfg[k] != defaults(cfg["method"]).get(k))
        ax.annotate(f"lr {cfg['lr']:g}{extra}", (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
    ax.set_xlabel("accuracy on the truly clean training labels (%), last epoch")
    ax.set_ylabel("truly noisy labels memorised (%), last epoch")
    first = runs[0][0]["config"]
    ax.set_title(f"{os.path.basename(first['dataset'])}, {first['noise']} {first['noise_rate']:g}: "
                 "memorisation against fit", fontsize=9)
    ax.legend(fontsize=7, title="trained", title_fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def plot_curves(runs, keys, path, ylabel):
    """Per-epoch curves of chosen metrics.jsonl keys, one panel per run (e.g. LoRAMoE's
    expert-group shares, or Match-Tuning's same- vs different-label mixing mass)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(4.6 * len(runs), 3.4), squeeze=False)
    for ax, (summary, metrics) in zip(axes[0], runs):
        for key in keys:
            ys = [m.get(key) for m in metrics]
            xs = [m["epoch"] for m, y in zip(metrics, ys) if y is not None]
            ax.plot(xs, [y for y in ys if y is not None], marker="o", label=key)
        cfg = summary["config"]
        ax.set_title(f"{methods.label(cfg)}, {cfg['noise']} {cfg['noise_rate']:g}", fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def plot_gmm(run_dir, epoch, path):
    """Histogram of one epoch's per-sample losses (raw, the scale the mixture is fitted on),
    coloured by truly clean / truly noisy, with the two fitted Gaussians on top."""
    plt = pyplot()
    d = np.load(os.path.join(run_dir, "per_sample.npz"))
    x = d["loss"][epoch - 1]  # the epoch's raw losses; the run's own mixture was fitted to their moving average
    gmm = fit_gmm(x)
    clean = d["observed"] == d["true"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    bins = np.linspace(0, x.max(), 41)
    ax.hist([x[clean], x[~clean]], bins=bins, stacked=True, density=False, color=["tab:blue", "tab:red"],
            label=[f"truly clean ({clean.sum()})", f"truly noisy ({(~clean).sum()})"])
    grid = np.linspace(0, x.max(), 400)
    width = bins[1] - bins[0]
    for k, name in enumerate(("clean component", "noisy component")):
        pdf = np.exp(-0.5 * (grid - gmm.means[k]) ** 2 / gmm.variances[k]) / np.sqrt(2 * np.pi * gmm.variances[k])
        ax.plot(grid, len(x) * width * gmm.weights[k] * pdf, lw=2, color=["navy", "darkred"][k], label=name)
    ax.set_xlabel("training loss on the observed label")
    ax.set_ylabel("samples")
    cfg = json.load(open(os.path.join(run_dir, "summary.json")))["config"]
    ax.set_title(f"{methods.label(cfg)}, {cfg['noise']} {cfg['noise_rate']:g}, after epoch {epoch}", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def plot_noise_matrices(run_dir, path):
    """The run's realised noise (true x observed) beside the model's estimate of it (estimated true x
    observed, label_issues.confident_joint), each row normalised to P(observed | true)."""
    plt = pyplot()
    m = json.load(open(os.path.join(run_dir, "noise_matrix.json")))
    names = m["class_names"]
    panels = [(m[k], t) for k, t in (("realised_true_x_observed", "realised"),
                                     ("estimated_true_x_observed", "estimated from the model")) if m[k] is not None]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
    for ax, (counts, title) in zip(axes[0], panels):
        c = np.asarray(counts, dtype=float)
        rows = c / np.maximum(c.sum(axis=1, keepdims=True), 1)
        ax.imshow(rows, vmin=0, vmax=1, cmap="Blues")
        if len(names) <= 10:
            for i in range(len(names)):
                for j in range(len(names)):
                    ax.text(j, i, f"{rows[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if rows[i, j] > 0.5 else "black")
        ticks = range(len(names)) if len(names) <= 20 else []
        ax.set_xticks(ticks, [names[t][:8] for t in ticks], rotation=90, fontsize=6)
        ax.set_yticks(ticks, [names[t][:8] for t in ticks], fontsize=6)
        ax.set_xlabel("observed label")
        ax.set_ylabel("true label" if title == "realised" else "estimated true label")
        ax.set_title(f"P(observed | true), {title}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def plot_reliability(run_dir, path):
    """Reliability diagram of the clean test split after the last epoch (calibration.json), with ECE."""
    plt = pyplot()
    bins = json.load(open(os.path.join(run_dir, "calibration.json")))
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    M = len(bins["count"])
    centres = (np.arange(M) + 0.5) / M
    acc = [a if a is not None else 0.0 for a in bins["accuracy"]]
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.bar(centres, acc, width=1 / M, edgecolor="black", color="tab:blue", label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_xlabel("confidence (max softmax probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"test split, last epoch: ECE {summary['test_ece']:.3f}, NLL {summary['test_nll']:.3f}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main():
    p = argparse.ArgumentParser(description="Markdown tables and plots from finished runs.")
    p.add_argument("dirs", nargs="+", help="directories searched recursively for summary.json")
    p.add_argument("--plot", default=None, help="also write the per-epoch memorisation plot to this PNG")
    p.add_argument("--extra", default="", help="comma list of extra summary.json keys to show as columns")
    p.add_argument("--by_lr", action="store_true", help="one row per learning rate (for LR sweeps)")
    p.add_argument("--gmm_plot", default=None, help="write CleaR's loss histogram + fitted GMM of the first run here")
    p.add_argument("--gmm_epoch", type=int, default=4, help="which epoch's losses --gmm_plot shows")
    p.add_argument("--curves", default=None, help="comma list of metrics.jsonl keys to plot per epoch and run")
    p.add_argument("--curves_plot", default="curves.png", help="where --curves writes its PNG")
    p.add_argument("--run", action="store_true", help="draw one finished run's pictures into its folder: "
                   "noise_matrix.png (realised vs estimated noise) and reliability.png")
    args = p.parse_args()
    if args.run:
        for d in args.dirs:
            plot_noise_matrices(d, os.path.join(d, "noise_matrix.png"))
            plot_reliability(d, os.path.join(d, "reliability.png"))
        return None
    if args.gmm_plot:
        return plot_gmm(args.dirs[0], args.gmm_epoch, args.gmm_plot)
    runs = load_runs(args.dirs)
    if not runs:
        raise SystemExit(f"no summary.json below {args.dirs}")
    if args.curves:
        return plot_curves(runs, args.curves.split(","), args.curves_plot, "share of mixing / routing mass")
    print(table(runs, [c for c in args.extra.split(",") if c], args.by_lr))
    if args.plot:
        plot_memorisation(runs, args.plot)


if __name__ == "__main__":
    main()
