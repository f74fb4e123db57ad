"""
The accuracy grid's tables: every method beside the two oracles and the practitioner's
baseline, the verdicts (each method against LoRA, CleaR and the baseline, and the share of the
LoRA-to-noise-free gap it recovers) and the accuracy issue's targets, checked per setting.

Rows are grouped by setting (report.group_key: dataset, noise, method label); two rows are compared
on the seeds both ran, averaged within the setting first, so every setting counts once and a grid
still running compares like with like. The gap a method recovers is (A - LoRA) / (noise-free - LoRA) on
validation-selected test accuracy; where noise-free is less than one point above LoRA there is no
gap to speak of, and the share is left out. blocks.readme_blocks writes these tables into
RESULTS.md and the README (blocks grid:accuracy:*), so no number here is typed by hand.

Usage:
    python tools/accuracy.py results/accuracy results/methods    # print the verdicts
"""

import os
import sys
from collections import defaultdict

import numpy as np

import report

LORA, CLEAR, PRACTITIONER = "lora", "clear (lora)", "practitioner"
CLEAN, NOISE_FREE = "lora [oracle: clean-subset]", "lora [oracle: noise-free]"
REFERENCES = (PRACTITIONER, CLEAN, NOISE_FREE)
KEYS = ("selected_test_acc", "best_test_acc", "last_test_acc", "noisy_memorized", "det_auroc", "wall_s")
MIN_GAP = 1.0  # points: below this, noise-free is not above LoRA enough for a recovered share


def setting_means(runs):
    """{(dataset, noise, label): {key: mean over seeds, "seeds": n, key + "_all": [values], "by_seed": {seed:
    summary}}}."""
    groups = defaultdict(list)
    for summary, _ in runs:
        groups[report.group_key(summary["config"])].append(summary)
    out = {}
    for k, ss in groups.items():
        out[k] = {"seeds": len(ss), "by_seed": {s["config"]["seed"]: s for s in ss}}
        for key in KEYS:
            vals = [s.get(key) for s in ss if s.get(key) is not None]
            out[k][key] = float(np.mean(vals)) if vals else None
            out[k][key + "_all"] = vals
    return out


def paired(means, setting, labels, key="selected_test_acc"):
    """[mean of `key` over the seeds every one of `labels` ran in this setting] - rows compared on the same
    seeds, so a grid still running compares like with like - or None where they share no seed."""
    rows = [means.get((*setting, label)) for label in labels]
    if None in rows:
        return None
    seeds = set.intersection(*(set(r["by_seed"]) for r in rows))
    vals = [[r["by_seed"][s].get(key) for s in sorted(seeds)] for r in rows]
    if not seeds or any(v is None for vs in vals for v in vs):
        return None
    return [float(np.mean(vs)) for vs in vals]


def gap_share(means, setting, label):
    """(A - LoRA) / (noise-free - LoRA) of selected accuracy on the seeds all three ran, or None."""
    got = paired(means, setting, [label, LORA, NOISE_FREE])
    if got is None or 100 * (got[2] - got[1]) < MIN_GAP:
        return None
    return (got[0] - got[1]) / (got[2] - got[1])


def methods_in(means):
    """The method labels of the grid that are not references or the reused rows, in label order."""
    return sorted({m for _, _, m in means} - set(REFERENCES) - {LORA, CLEAR})


def order(labels):
    first = [LORA, CLEAR]
    return [m for m in first if m in labels] + sorted(set(labels) - set(first) - set(REFERENCES)) + \
        [m for m in REFERENCES if m in labels]


def setting_table(runs, dataset):
    """Markdown: per noise setting of `dataset`, one row per method, references last."""
    means = setting_means(runs)
    head = ["noise", "method", "seeds", "selected acc", "best acc", "last acc", "memorised", "det AUROC",
            "wall s", "gap recovered"]
    rows = []
    for noise in sorted({n for d, n, _ in means if d == dataset}):
        labels = [m for d, n, m in means if (d, n) == (dataset, noise)]
        for label in order(labels):
            m = means[(dataset, noise, label)]
            share = gap_share(means, (dataset, noise), label)
            rows.append([noise, label, str(m["seeds"]), *(report.fmt(m[k + "_all"]) for k in KEYS[:4]),
                         report.fmt(m["det_auroc_all"], scale=1.0, digits=3),
                         f"{np.median(m['wall_s_all']):.0f}" if m["wall_s_all"] else "-",
                         "-" if share is None or label in (LORA, NOISE_FREE) else f"{100 * share:.0f}%"])
    return report.markdown_table(head, rows)


def compare(means, a, b, settings):
    """(settings both ran, where A's selected accuracy is higher, mean A - B in points) on shared seeds, or None."""
    pairs = [p for p in (paired(means, s, [a, b]) for s in settings) if p is not None]
    if not pairs:
        return None
    return len(pairs), sum(x > y for x, y in pairs), float(np.mean([100 * (x - y) for x, y in pairs]))


def verdicts_table(runs):
    """Markdown: each method (and CleaR, the baseline) against LoRA, CleaR, the baseline and the
    clean-subset oracle over every noisy setting, and its mean recovered gap on sym / idn noise."""
    means = setting_means(runs)
    settings = sorted({(d, n) for d, n, _ in means if n != "none"})
    head = ["method", "vs LoRA: higher / mean", "vs CleaR", "vs practitioner", "reaches clean-subset",
            "gap recovered (sym, idn)"]
    show = lambda c: "-" if c is None else f"{c[1]} of {c[0]}, {c[2]:+.1f}"
    rows = []
    for label in [CLEAR, PRACTITIONER] + methods_in(means):
        shares = [gap_share(means, s, label) for s in settings if s[1].split()[0] in ("sym", "idn")]
        shares = [x for x in shares if x is not None]
        reach = compare(means, label, CLEAN, settings)
        rows.append([label, show(compare(means, label, LORA, settings)),
                     "-" if label == CLEAR else show(compare(means, label, CLEAR, settings)),
                     "-" if label == PRACTITIONER else show(compare(means, label, PRACTITIONER, settings)),
                     "-" if reach is None else f"{sum(1 for s in settings if reached(means, s, label))} of {reach[0]}",
                     f"{100 * np.mean(shares):.0f}% ({len(shares)} settings)" if shares else "-"])
    return report.markdown_table(head, rows)


def reached(means, setting, label):
    got = paired(means, setting, [label, CLEAN])
    return got is not None and got[0] >= got[1]


def targets_table(runs, datasets=("20ng", "r8")):
    """Markdown: the accuracy issue's targets on every noisy 20ng / R8 setting, for the best method there
    (highest selected accuracy among the methods, references excluded; the columns of accuracies are each
    row's own seed means): beats LoRA by 3 points where LoRA sits 4 or more below noise-free, beats the
    practitioner, reaches clean-subset, recovers 75% (sym, idn) - each judged on the seeds both ran."""
    means = setting_means(runs)
    head = ["data", "noise", "best method", "selected", "LoRA", "practitioner", "clean-subset", "noise-free",
            "+3 over LoRA", "beats practitioner", "reaches clean-subset", "recovers 75%"]
    rows = []
    sel = lambda s, lab: means.get((*s, lab), {}).get("selected_test_acc")
    for s in sorted({(d, n) for d, n, _ in means if d in datasets and n != "none"}):
        cands = [m for m in methods_in(means) + [CLEAR] if sel(s, m) is not None]
        if not cands or sel(s, LORA) is None:
            continue
        best = max(cands, key=lambda m: sel(s, m))
        pts = lambda lab: "-" if sel(s, lab) is None else f"{100 * sel(s, lab):.1f}"
        yes = lambda got, strict=True: "-" if got is None else \
            ("yes" if (got[0] > got[1] if strict else got[0] >= got[1]) else "no")
        vs_lora, vs_free = paired(means, s, [best, LORA]), paired(means, s, [LORA, NOISE_FREE])
        needs3 = vs_free is not None and 100 * (vs_free[1] - vs_free[0]) >= 4
        share = gap_share(means, s, best)
        rows.append([*s, best, pts(best), pts(LORA), pts(PRACTITIONER), pts(CLEAN), pts(NOISE_FREE),
                     f"{100 * (vs_lora[0] - vs_lora[1]):+.1f}" + ("" if needs3 else " (n/a)"),
                     yes(paired(means, s, [best, PRACTITIONER])), yes(paired(means, s, [best, CLEAN]), strict=False),
                     "n/a" if s[1].split()[0] == "asym" else
                     ("-" if share is None else f"{100 * share:.0f}% " + ("yes" if share >= 0.75 else "no"))])
    return report.markdown_table(head, rows)


def pilot_table(runs):
    """Markdown: filter-and-retrain's variants on the pilot settings (seed 0): the noisy-validation accuracy
    they are chosen by - the mean over the last three epochs (the retrained model's; the selected epoch's
    maximum of ~100 noisy labels moves by one example at a time), averaged over settings - then test
    accuracy and the detector's flags per setting."""
    head = ["variant", "setting", "selected val acc", "val acc, last 3", "selected acc", "last acc", "score AUROC",
            "flagged", "flag precision", "flag recall", "kept", "relabelled (acc)"]
    rows, by_variant = [], defaultdict(list)
    for summary, metrics in runs:
        cfg, last = summary["config"], metrics[-1]
        if cfg["method"] != "far":
            continue
        label = report.group_key(cfg)[2]
        val3 = float(np.mean([m["val_acc"] for m in metrics[-3:]]))
        by_variant[label].append((report.group_key(cfg)[:2], summary["selected_val_acc"], val3))
        f = lambda k, d=3: "-" if last.get(k) is None else f"{last[k]:.{d}f}"
        rows.append([label, f"{cfg['dataset']} {cfg['noise']} {cfg['noise_rate']:g}",
                     f"{summary['selected_val_acc']:.3f}", f"{val3:.3f}", f"{100 * summary['selected_test_acc']:.1f}",
                     f"{100 * summary['last_test_acc']:.1f}", f("far_score_auroc"), f("far_flagged"),
                     f("far_flag_precision"),
                     f("far_flag_recall"), f("far_kept"),
                     f"{f('far_relabelled')} ({f('far_relabel_acc', 2)})"])
    rows.sort()
    common = set.intersection(*({s for s, _, _ in v} for v in by_variant.values())) if by_variant else set()
    for label, v in sorted(by_variant.items()):  # over the settings every variant ran, so the means compare
        vals = [(a, b) for s, a, b in v if s in common]
        if vals:
            rows.append([label, f"mean of {len(vals)}", *(f"{x:.3f}" for x in np.mean(vals, axis=0)),
                         *["" for _ in head[4:]]])
    return report.markdown_table(head, rows)


def plot_accuracy(runs, settings, path):
    """Clean-test accuracy and memorised share per epoch (seed means), one column per setting: LoRA, CleaR,
    each method, the oracles; the practitioner's one model as a dashed line. A two-stage method's epochs run
    on past the others' (its first --warmup_epochs detect)."""
    plt = report.pyplot()
    fig, axes = plt.subplots(2, len(settings), figsize=(5.2 * len(settings), 7), squeeze=False)
    curves = defaultdict(list)
    for summary, metrics in runs:
        curves[report.group_key(summary["config"])].append(metrics)
    every = order({m for _, _, m in curves})
    colour = {label: plt.get_cmap("tab10")(i % 10) for i, label in enumerate(every)}  # one colour per row
    for col, setting in enumerate(settings):
        for label in order([m for d, n, m in curves if (d, n) == setting]):
            ms = curves[(*setting, label)]
            for row, key in enumerate(("test_acc", "noisy_memorized")):
                n = min(len(m) for m in ms)
                ys = [[e.get(key) for e in m[:n]] for m in ms]
                if any(None in y for y in ys):
                    continue
                y, ax = 100 * np.mean(ys, axis=0), axes[row, col]
                if label == PRACTITIONER:
                    ax.axhline(y[0], ls="--", color=colour[label], label=label)
                else:
                    ax.plot(np.arange(1, n + 1), y, marker="o", ms=3, label=label, color=colour[label],
                            ls=":" if label in (CLEAN, NOISE_FREE) else "-")
        axes[0, col].set_title(f"{setting[0]}, {setting[1]} (seed means)")
        axes[0, col].set_ylabel("clean test accuracy (%)")
        axes[1, col].set_ylabel("noisy labels memorised (%)")
        axes[1, col].set_xlabel("epoch")
    handles = {}
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.legend([handles[k] for k in every if k in handles], [k for k in every if k in handles],
               loc="lower center", ncol=min(5, len(handles)), fontsize=8)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    loaded = report.load_runs(sys.argv[1:] or ["results/accuracy"])
    print(verdicts_table(loaded), targets_table(loaded), sep="\n\n")
