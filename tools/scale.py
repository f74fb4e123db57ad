"""
The fidelity issue's scale study: do the claims hold with more data? For each dataset and method, against
the number of training examples N (1,000 / 2,000, 5,000, the whole split): validation-selected and last
test accuracy, the memorised share of the truly noisy labels, the loss detector's AUROC, each method's
advantage over plain LoRA, and the cost - a training pass's seconds per epoch and per example, with the
exponent b of seconds ~ N^b fitted over the sizes (b <= 1: no worse than linear), and a run's wall time.
experiments.py writes the blocks into RESULTS.md (grid:scale:*; the cost measured alone, the scale-cost
grid, as grid:scale-cost:cost-alone), so no number is typed by hand.

Usage:
    blocks = scale_blocks(runs, "assets/scale_curves.png", draw=True)   # {marker key: markdown}
"""

from collections import defaultdict

import numpy as np

import report

MEASURES = [("selected_test_acc", "selected acc"), ("last_test_acc", "last acc"), ("noisy_memorized", "memorised"),
            ("det_auroc", "det_auroc")]


def by_curve(runs):
    """{(dataset, noise, method): {N: [(summary, metrics), ...]}}, N the training examples after the
    validation share."""
    curves = defaultdict(lambda: defaultdict(list))
    for summary, metrics in runs:
        dataset, noise_name, method = report.group_key(summary["config"])
        curves[dataset, noise_name, method][summary["num_train"]].append((summary, metrics))
    return curves


def pass_seconds(metrics):
    """Median seconds of an epoch's training pass (the optimizer steps alone) over the run's epochs."""
    return float(np.median([m["train_pass_s"] for m in metrics if m.get("train_pass_s") is not None]))


def cost_exponent(sizes, seconds):
    """b of seconds = a N^b, least squares on log-log; None for fewer than two sizes."""
    if len(sizes) < 2:
        return None
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def advantage(runs, lora_runs):
    """Mean selected-accuracy gain over LoRA in points on the seeds both ran, or None when they share none."""
    lora = {s["config"]["seed"]: s["selected_test_acc"] for s, _ in lora_runs}
    gains = [s["selected_test_acc"] - lora[s["config"]["seed"]] for s, _ in runs if s["config"]["seed"] in lora]
    return 100 * float(np.mean(gains)) if gains else None


def scale_table(runs):
    """One row per (dataset, noise, method, N): seeds, the MEASURES, the advantage over LoRA at that N
    (selected accuracy, points, on the seeds both ran), the training pass per epoch and per example, and
    the whole run's wall time (every epoch with its evaluations and detector passes; medians over seeds)."""
    curves, rows = by_curve(runs), []
    for (dataset, noise_name, method), points in sorted(curves.items()):
        lora = curves.get((dataset, noise_name, "lora"), {})
        for n, rs in sorted(points.items()):
            summaries = [s for s, _ in rs]
            sec = [pass_seconds(m) for _, m in rs]
            gain = advantage(rs, lora.get(n, [])) if method != "lora" else None
            vs = "-" if gain is None else f"{gain:+.1f}"
            rows.append([dataset, noise_name, method, f"{n:,}", str(len(rs))]
                        + [report.fmt([s.get(k) for s in summaries], **({} if k != "det_auroc" else
                                                                          {"scale": 1.0, "digits": 3}))
                           for k, _ in MEASURES]
                        + [vs, f"{np.median(sec):.0f}", f"{1000 * np.median(sec) / n:.1f}",
                           f"{np.median([s['wall_s'] for s in summaries]) / 60:.1f}"])
    head = ["dataset", "noise", "method", "N train", "seeds", *(name for _, name in MEASURES), "selected vs LoRA",
            "train pass s/epoch", "ms/example", "run wall min"]
    return report.markdown_table(head, rows)


def mean_of(runs, key, scale=100.0):
    values = [s[key] for s, _ in runs if s.get(key) is not None]
    return scale * float(np.mean(values)) if values else float("nan")


def verdicts_table(runs):
    """Per (dataset, noise, method), the claims against N: the advantage over LoRA at the smallest and the
    largest N (on shared seeds) and at how many sizes it is above LoRA; the memorised share, the detector's
    AUROC (its P(clean)) and the AUROC of the smoothed loss it fits (the ranking alone) at the smallest and
    the largest N (seed means)."""
    curves, rows = by_curve(runs), []
    for (dataset, noise_name, method), points in sorted(curves.items()):
        sizes, lora = sorted(points), curves.get((dataset, noise_name, "lora"), {})
        lo, hi = points[sizes[0]], points[sizes[-1]]
        gains = [advantage(points[n], lora.get(n, [])) for n in sizes] if method != "lora" else []
        shown = [g for g in gains if g is not None]
        seeds = f"{min(len(points[n]) for n in sizes)}-{max(len(points[n]) for n in sizes)}"
        rows.append([dataset, noise_name, method, f"{sizes[0]:,} -> {sizes[-1]:,}", seeds,
                     "-" if not gains or gains[0] is None else f"{gains[0]:+.1f}",
                     "-" if not gains or gains[-1] is None else f"{gains[-1]:+.1f}",
                     f"{sum(g > 0 for g in shown)} of {len(shown)}" if shown else "-",
                     f"{mean_of(lo, 'noisy_memorized'):.1f} -> {mean_of(hi, 'noisy_memorized'):.1f}",
                     f"{mean_of(lo, 'det_auroc', 1.0):.3f} -> {mean_of(hi, 'det_auroc', 1.0):.3f}",
                     f"{mean_of(lo, 'det_auroc_loss', 1.0):.3f} -> {mean_of(hi, 'det_auroc_loss', 1.0):.3f}"])
    head = ["dataset", "noise", "method", "N", "seeds per N", "vs LoRA, smallest N", "vs LoRA, largest N",
            "sizes above LoRA", "memorised", "det AUROC", "loss AUROC"]
    return report.markdown_table(head, rows)


def cost_table(runs):
    """Per (dataset, method): the training pass's milliseconds per example at each N measured (medians over
    runs), and the fitted exponent b of seconds per epoch ~ N^b over those sizes."""
    rows = []
    for (dataset, noise_name, method), points in sorted(by_curve(runs).items()):
        sizes = sorted(points)
        seconds = [np.median([pass_seconds(m) for _, m in points[n]]) for n in sizes]
        b = cost_exponent(sizes, seconds)
        rows.append([dataset, noise_name, method, ", ".join(f"{n:,}" for n in sizes),
                     str(min(len(points[n]) for n in sizes)),
                     ", ".join(f"{1000 * t / n:.1f}" for n, t in zip(sizes, seconds)), "-" if b is None else f"{b:.2f}"])
    return report.markdown_table(["dataset", "noise", "method", "N measured", "runs per N", "ms/example at each N",
                                  "b (s/epoch ~ N^b)"], rows)


def plot_scale(runs, path):
    """One row per dataset: selected accuracy, memorised share, detector AUROC and the training pass's seconds
    per epoch against N (log axes for N and seconds), one line per method, seed means with their spread."""
    plt = report.pyplot()
    curves = by_curve(runs)
    datasets = sorted({d for d, _, _ in curves})
    summary_value = lambda key, scale: lambda s, m: None if s.get(key) is None else scale * s[key]
    panels = [(summary_value("selected_test_acc", 100), "selected test accuracy (%)"),
              (summary_value("noisy_memorized", 100), "noisy labels memorised (%)"),
              (summary_value("det_auroc", 1), "detector AUROC"),
              (lambda s, m: pass_seconds(m), "training pass, s per epoch")]
    fig, axes = plt.subplots(len(datasets), len(panels), figsize=(4.0 * len(panels), 3.4 * len(datasets)),
                             squeeze=False)
    for (dataset, noise_name, method), points in sorted(curves.items()):
        row, sizes = datasets.index(dataset), sorted(points)
        for col, (value, label) in enumerate(panels):
            values = [[v for v in (value(s, m) for s, m in points[n]) if v is not None] for n in sizes]
            mean = [np.mean(v) if v else np.nan for v in values]
            spread = [np.std(v) if v else np.nan for v in values]
            ax = axes[row, col]
            ax.errorbar(sizes, mean, yerr=spread, marker="o", capsize=3, label=method)
            ax.set_xscale("log")
            if col == len(panels) - 1:
                ax.set_yscale("log")  # a straight line of slope b: seconds ~ N^b
            ax.set_ylabel(label)
            ax.set_title(f"{dataset}, {noise_name}")
    for ax in axes[-1]:
        ax.set_xlabel("training examples N")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def scale_blocks(runs, path, draw=False):
    """{"scale-table", "scale-verdicts", "scale-cost", "scale-curves"} of the scale study's runs (+ the reused cells)."""
    if not runs:
        return {}
    if draw:
        plot_scale(runs, path)
    return {"scale-table": scale_table(runs), "scale-verdicts": verdicts_table(runs), "scale-cost": cost_table(runs),
            "scale-curves": f"![selected accuracy, memorised share, detector AUROC and training-pass seconds "
                            f"against training examples]({path})"}
