"""
Which label-issue score ranks the truly mislabelled training samples first? For finished runs
with synthetic noise, the AUROC of every score in label_issues.SCORES, from the runs' saved
per-epoch losses (per_sample.npz: loss (E, N), observed, true), per run and averaged per dataset.
This is the measurement behind label_issues.DEFAULT_SCORE (docs/outputs.md, "Which score ranks the mislabelled rows first").

Usage: python tools/label_issue_scores.py results/fair-test results/ema
"""

import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from label_issues import SCORES, score_auroc  # noqa: E402


def runs_under(roots):
    for root in roots:
        for d, _, files in sorted(os.walk(root)):
            if "per_sample.npz" in files and "summary.json" in files:
                yield d


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("roots", nargs="+", help="folders searched for finished runs")
    p.add_argument("--summary", action="store_true", help="only the per-dataset means")
    args = p.parse_args(argv)
    names, by_dataset, lines = list(SCORES), {}, []
    lines.append("| run | epochs | noise | " + " | ".join(names) + " |")
    lines.append("|---|---|---|" + "---|" * len(names))
    for d in runs_under(args.roots):
        with open(os.path.join(d, "summary.json")) as f:
            cfg = json.load(f)["config"]
        z = np.load(os.path.join(d, "per_sample.npz"))
        aucs = score_auroc(z["loss"], z["observed"], z["true"], cfg.get("loss_ema", 0.9))
        if None in aucs.values():
            continue
        by_dataset.setdefault(cfg["dataset"], []).append([aucs[n] for n in names])
        lines.append(f"| {os.path.relpath(d)} | {len(z['loss'])} | {cfg['noise']} {cfg['noise_rate']:g} | "
                     + " | ".join(f"{aucs[n]:.3f}" for n in names) + " |")
    if not args.summary:
        print("\n".join(lines) + "\n")
    print("| dataset | runs | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for ds, rows in sorted(by_dataset.items()):
        mean = np.mean(rows, axis=0)
        print(f"| {ds} | {len(rows)} | " + " | ".join(f"{m:.3f}" for m in mean) + " |")


if __name__ == "__main__":
    main()
