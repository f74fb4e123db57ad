"""
Regenerate the README's results with one command: run a named grid of `train.py` cells
(method x dataset x noise kind x rate x seed), then write the tables and pictures.

* Every cell is one `train.py` run in `<runs>/<dataset>/[<size>/]<noise><rate>/<method>/s<seed>` (grids.py).
  A cell whose `summary.json` exists is skipped; one with a checkpoint is resumed
  (`train.py --resume`), so an interrupted sweep continues where it stopped.
* Cells run in the order the grid lists them (most important first), `--jobs` at a time,
  each with `cores // jobs` threads (or `--threads`).
* The README's results live between marker comments (`<!-- grid:NAME:KEY -->` ...
  `<!-- /grid:NAME:KEY -->`); `--write_readme` replaces exactly those blocks with tables
  built by blocks.py from the runs on disk, so nothing there is typed by hand. A cell
  that has not run yet shows up as fewer seeds, never as a made-up number.

Usage:
    python tools/experiments.py --grid quick --jobs 2              # ~20 min on a 2-core CPU
    python tools/experiments.py --grid methods --jobs 2 --write_readme # RESULTS.md's methods grid (many hours on a CPU)
    python tools/experiments.py --grid paper --device cuda         # whole datasets, 8 epochs: one GPU (not yet run)
    python tools/experiments.py --grid methods --dry_run           # list the cells and what is done
"""

import argparse
import os
import subprocess
import sys
import time

sys.path[:0] = [os.path.dirname(os.path.abspath(__file__))]  # tools/: grids.py puts the project on the path too
from grids import GRIDS, RESULTS, finished_runs, status  # noqa: E402
from blocks import check_readme, marked_blocks, readme_blocks, write_readme  # noqa: E402
import report  # noqa: E402


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
