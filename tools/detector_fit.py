"""
What the clean-sample detector made of one finished run: replay its per-epoch losses (the run's
`per_sample.npz`) through mixture.LossDetector with the run's --loss_ema and print the last epoch's
mixture - each component's mean, spread and weight - the share of rows it gives P(clean) ~ 0 or
above 0.5, and how well P(clean) and the smoothed loss alone rank the truly clean rows (AUROC). A
gap between the two AUROCs means the ranking is fine and the mixture's posterior ties rows. Beside it,
the same mixture fitted to log(loss + 1e-6) (not what any run uses; a candidate fix for those ties), and
each fit's estimate of the noise rate (the mean P(noisy), what label_issues.csv flags) against the truth.
With several runs it prints one line each and the medians.

per_sample.npz is not committed (results/ keeps small files only): re-run the cell to have it.

Usage:
    python tools/detector_fit.py results/scale/20ng/nall/sym0.4/gce/s0
    python tools/detector_fit.py results/scale/*/*/*/*/s*      # every run that has its per_sample.npz
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project, one folder up
from mixture import LossDetector, auroc, clean_probability  # noqa: E402

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
    """{name: value} of the fit against the truth, and of the same mixture on log-losses."""
    g, w = fit.gmm, fit.clean_prob
    w_log, _ = clean_probability(np.log(fit.smoothed + 1e-6))
    return {"clean component mean": g.means[0], "clean component sd": np.sqrt(g.variances[0]),
            "clean component weight": g.weights[0], "noisy component mean": g.means[1],
            "noisy component sd": np.sqrt(g.variances[1]), "rows with P(clean) ~ 0": float(np.mean(w < ZERO)),
            "rows with P(clean) > 0.5": float(np.mean(w > 0.5)), "truly noisy rows": float(np.mean(~clean)),
            "AUROC of P(clean)": auroc(w, clean), "AUROC of the smoothed loss": auroc(-fit.smoothed, clean),
            "AUROC of P(clean), log-loss fit": auroc(w_log, clean), "estimated rate": float(1 - w.mean()),
            "estimated rate, log-loss fit": float(1 - w_log.mean())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    p.add_argument("runs", nargs="+", help="finished runs' directories (each holds summary.json and per_sample.npz)")
    args = p.parse_args(argv)
    if len(args.runs) == 1:
        for name, value in describe(*replay(args.runs[0])).items():
            print(f"{name}: {value:.3f}")
        return
    keys = ["AUROC of the smoothed loss", "AUROC of P(clean)", "AUROC of P(clean), log-loss fit", "truly noisy rows",
            "estimated rate", "estimated rate, log-loss fit"]
    table = []
    for run in args.runs:
        if not os.path.isfile(os.path.join(run, "per_sample.npz")):
            continue
        got = describe(*replay(run))
        if got["truly noisy rows"] > 0:  # a noise-free run has no AUROC
            table.append([got[k] for k in keys])
            print(run, " ".join(f"{v:.3f}" for v in table[-1]))
    t = np.array(table)
    print(f"{len(t)} runs; columns: {', '.join(keys)}")
    print("medians: " + " ".join(f"{v:.3f}" for v in np.median(t, axis=0)))
    print(f"largest gap of P(clean)'s AUROC below the loss's: {np.max(t[:, 0] - t[:, 1]):.3f} (log-loss fit "
          f"{np.max(t[:, 0] - t[:, 2]):.3f}); mean abs. error of the estimated rate: {np.mean(abs(t[:, 4] - t[:, 3])):.3f} "
          f"(log-loss fit {np.mean(abs(t[:, 5] - t[:, 3])):.3f})")


if __name__ == "__main__":
    main()
