"""tools/accuracy.py: the recovered gap, the comparisons and the targets compare rows on the seeds
they share (a grid still running compares like with like); references are never candidates for the
best method."""

import accuracy
import train


def run(argv, dataset, noise, seed, selected):
    cfg = vars(train.parse_args([*argv, "--dataset", dataset, "--noise", noise, "--noise_rate", "0.4",
                                 "--seed", str(seed)]))
    return ({"config": cfg, "selected_test_acc": selected, "best_test_acc": selected, "last_test_acc": selected,
             "noisy_memorized": 0.1, "det_auroc": 0.9, "wall_s": 100.0}, [])


LORA, CLEAN, FREE = ["--method", "lora"], ["--method", "lora", "--oracle", "clean-subset"], \
    ["--method", "lora", "--oracle", "noise-free"]


def grid():
    return [run(LORA, "20ng", "sym", 0, 0.60), run(LORA, "20ng", "sym", 1, 0.62),      # LoRA 61
            run(FREE, "20ng", "sym", 0, 0.71), run(CLEAN, "20ng", "sym", 0, 0.65),
            run(["--method", "far"], "20ng", "sym", 0, 0.66),                          # recovers 5 / 10
            run(["--method", "gce"], "20ng", "sym", 0, 0.59),
            run(["--method", "practitioner"], "20ng", "sym", 0, 0.63),
            run(LORA, "20ng", "asym", 0, 0.50), run(FREE, "20ng", "asym", 0, 0.505),     # under a point: no gap
            run(["--method", "far"], "20ng", "asym", 0, 0.49)]


def test_gap_share_pairs_seeds_and_needs_a_gap():
    means = accuracy.setting_means(grid())
    far = "far (lora, unlabelled, class-norm)"
    assert abs(accuracy.gap_share(means, ("20ng", "sym 0.4"), far) - (66 - 60) / (71 - 60)) < 1e-9  # seed 0 only
    assert means[("20ng", "sym 0.4", "lora")]["selected_test_acc"] == 0.61  # the row's own mean: both seeds
    more = grid() + [run(["--method", "far"], "20ng", "sym", 1, 0.70), run(FREE, "20ng", "sym", 1, 0.73)]
    means = accuracy.setting_means(more)
    assert abs(accuracy.gap_share(means, ("20ng", "sym 0.4"), far) - (68 - 61) / (72 - 61)) < 1e-9
    assert accuracy.gap_share(means, ("20ng", "asym 0.4"), far) is None
    assert accuracy.compare(means, far, accuracy.LORA, [("20ng", "sym 0.4"), ("20ng", "asym 0.4")])[:2] == (2, 1)


def test_targets_pick_the_best_method_never_a_reference():
    text = accuracy.targets_table(grid())
    row = next(line for line in text.splitlines() if "| sym 0.4 |" in line)
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[2] == "far (lora, unlabelled, class-norm)" and cells[3] == "66.0"  # not the noise-free 71
    assert cells[8:] == ["+6.0", "yes", "yes", "55% no"]  # seed 0: +3 needed (gap 11 >= 4) and met; 75%: not met
    asym = next(line for line in text.splitlines() if "| asym 0.4 |" in line)
    assert asym.rstrip(" |").endswith("n/a") and "(n/a)" in asym  # LoRA within 4 of noise-free: no +3 target


def test_verdicts_and_setting_tables_name_every_row():
    runs = grid()
    verdicts = accuracy.verdicts_table(runs)
    assert "| far (lora, unlabelled, class-norm) | 2 of 2" not in verdicts  # it loses on asym
    assert "| gce (lora) | 0 of 1, -1.0 |" in verdicts  # against LoRA's seed 0
    table = accuracy.setting_table(runs, "20ng")
    assert table.index("| sym 0.4 | lora |") < table.index("| sym 0.4 | far") < \
        table.index("| sym 0.4 | lora [oracle: noise-free]")
    assert "| 55% |" in table and "| 45% |" in table  # far, and what the clean-subset oracle recovers


def test_pilot_means_cover_the_settings_every_variant_ran():
    def far(rows, dataset, val):
        summary, _ = run(["--method", "far", "--far_rows", rows], dataset, "sym", 0, 0.5)
        summary["selected_val_acc"] = val
        last = {"val_acc": val, "far_flagged": 0.4}
        return summary, [last, last, last]
    runs = [far("drop", "20ng", 0.30), far("drop", "r8", 0.50), far("unlabelled", "20ng", 0.40)]
    text = accuracy.pilot_table(runs)
    assert "| far (lora, drop, class-norm) | mean of 1 | 0.300 | 0.300 |" in text  # r8: the other did not run it
    assert "| far (lora, unlabelled, class-norm) | mean of 1 | 0.400 | 0.400 |" in text
