"""experiments.py: a grid runs every cell once, skips finished cells, resumes partial ones,
and rewrites only the README text between its marker comments."""

import os

import experiments
import grids
from grids import Cell


def test_grid_runs_skips_and_resumes(tiny_model_dir, tiny_dataset, tmp_path, capsys):
    extra = ["--model", tiny_model_dir, "--epochs", "2", "--batch_size", "16", "--lr", "1e-2", "--max_len", "64"]
    grid = [Cell(tiny_dataset, "sym", 0.2, m, 0, extra) for m in ("lora", "full")]
    root = str(tmp_path / "runs")
    assert experiments.run_grid(grid, root, jobs=2, device="cpu", threads=1) == 0
    assert [experiments.status(c, root) for c in grid] == ["done", "done"]
    assert len(experiments.finished_runs(grid, root)) == 2
    assert len(experiments.finished_runs(grid, root, method="lora")) == 1

    capsys.readouterr()
    assert experiments.run_grid(grid, root, jobs=2, device="cpu", threads=1) == 0
    assert "2 of 2 cells done; running 0" in capsys.readouterr().out

    os.remove(os.path.join(grid[0].out_dir(root), "summary.json"))  # killed after its last checkpoint
    assert experiments.status(grid[0], root) == "partial"
    assert experiments.run_grid(grid, root, jobs=1, device="cpu", threads=1) == 0
    assert experiments.status(grid[0], root) == "done"
    assert "resumed from" in open(grid[0].out_dir(root) + ".log").read()


def test_write_readme_replaces_only_marked_blocks(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- grid:g:t -->\nold table\n<!-- /grid:g:t -->\nmiddle\n"
                      "<!-- grid:other:t -->\nkeep\n<!-- /grid:other:t -->\nend\n")
    assert experiments.write_readme(str(readme), "g", {"t": "| new |", "missing": "x"}) == {"t"}
    assert readme.read_text() == ("intro\n<!-- grid:g:t -->\n| new |\n<!-- /grid:g:t -->\nmiddle\n"
                                  "<!-- grid:other:t -->\nkeep\n<!-- /grid:other:t -->\nend\n")
    assert "wrote 1 block(s)" in capsys.readouterr().out


def test_readme_blocks_equal_what_the_committed_results_give(tmp_path):
    """Every marked block of README.md, RESULTS.md and docs/speed.md of a grid stored under results/ is what
    readme_blocks() makes of the committed cells - no number in them typed by hand; and the
    check sees a changed digit."""
    stored = []
    for name in ("README.md", "RESULTS.md", os.path.join("docs", "speed.md")):
        doc = os.path.join(grids.ROOT, name)
        assert experiments.check_readme(doc) == [], name
        text = open(doc).read()
        stored += [(text, k) for k in experiments.marked_blocks(text) if k[0] in experiments.RESULTS]
    assert stored, "no block is generated from results/"
    text, (grid, key) = next((t, k) for t, k in stored if k[1].startswith("table"))
    row = experiments.marked_blocks(text)[grid, key].splitlines()[2]  # the first data row, under the header
    assert "." in row
    copy = tmp_path / "README.md"
    copy.write_text(text.replace(row, row.replace(".", ",", 1), 1))  # one number altered in a copy
    assert experiments.check_readme(str(copy)) == [(grid, key, "differs from what the committed results give")]


def test_write_readme_draws_only_the_pictures_a_document_marks(monkeypatch, tmp_path):
    """--write_readme draws a grid's pictures only where some document shows them (no stray PNGs)."""
    drawn = []
    monkeypatch.setattr(experiments.report, "plot_memorisation", lambda runs, path: drawn.append(path))
    grid, root = experiments.GRIDS["methods"], os.path.join(grids.ROOT, experiments.RESULTS["methods"])
    blocks = experiments.readme_blocks(grid, root, str(tmp_path), draw={"memorisation-mr"})
    assert drawn == [os.path.join(str(tmp_path), "results_memorisation_mr.png")]
    assert {"memorisation-20ng", "memorisation-r8"} <= set(blocks)  # the markdown of every block, drawn or not
    drawn.clear()
    experiments.readme_blocks(grid, root, str(tmp_path))
    assert drawn == []


def test_committed_results_hold_no_machine_path():
    """Nothing committed under results/ names a folder of the machine it ran on (results are portable)."""
    import re
    absolute = re.compile(r"(?<![\w.])/(?:work|root|home|tmp|Users|mnt|data)/")
    found = []
    for folder, _, files in os.walk(os.path.join(grids.ROOT, "results")):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8", errors="replace") as f:
                if absolute.search(f.read()):
                    found.append(os.path.relpath(path, grids.ROOT))
    assert not found, found[:5]
