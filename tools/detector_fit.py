"""
What the clean-sample detector made of one finished run: replay its per-epoch losses (the run's
`per_sample.npz`) through mixture.LossDetector with the run's --loss_ema and print the last epoch's
mixture - each component's mean, spread and weight - the share of rows it gives P(clean) ~ 0 or
above 0.5, and how well P(clean) and the smoothed loss alone rank the truly clean rows (AUROC). A
gap between the two AUROCs means the ranking is fine and the mixture's posterior ties rows.

per_sample.npz is not committed (results/ keeps small files only): re-run the cell to have it.

Usage:
    python tools/detector_fit.py results/scale/20ng/nall/sym0.4/gce/s0
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project, one folder up
from mixture import LossDetector, auroc  # noqa: E402

ZERO = 1e-6  # a P(clean) below this counts as zero


def replay(run_dir):
    """(the last epoch's DetectorFit, truly clean (N,) bool) of a finished run."""
    path = os.path.join(run_dir, "per_sample.npz")
    if not os.path.isfile(path):
        raise SystemExit(f"error: {path} is missing (results/ keeps no per-sample arrays: re-run the cell)")
    with open(os.path.join(run_dir, "summary.json")) as f:
        ema = json.load(f)["config"]["loss_ema"]
    data = np.load(path, allow_pickle=False)
    detector = LossDetector(ema)
    for epoch_loss in data["loss"]:  # (E, N): one update per epoch, as the run made them
        fit = detector.update_losses(epoch_loss)
    return fit, data["observed"] == data["true"]


def describe(fit, clean):
    """{name: value} of the fit against the truth."""
    g, w = fit.gmm, fit.clean_prob
    return {"clean component mean": g.means[0], "clean component sd": np.sqrt(g.variances[0]),
            "clean component weight": g.weights[0], "noisy component mean": g.means[1],
            "noisy component sd": np.sqrt(g.variances[1]), "rows with P(clean) ~ 0": float(np.mean(w < ZERO)),
            "rows with P(clean) > 0.5": float(np.mean(w > 0.5)), "truly noisy rows": float(np.mean(~clean)),
            "AUROC of P(clean)": auroc(w, clean), "AUROC of the smoothed loss": auroc(-fit.smoothed, clean)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    p.add_argument("run", help="a finished run's directory (holds summary.json and per_sample.npz)")
    args = p.parse_args(argv)
    for name, value in describe(*replay(args.run)).items():
        print(f"{name}: {value:.3f}")


if __name__ == "__main__":
    main()
