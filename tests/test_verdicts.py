"""verdicts.py: each claim's numbers come from seed means per setting, A - B."""

import train
import verdicts


def run(method, dataset, rate, seed, selected, last, memorised):
    cfg = vars(train.parse_args(["--method", method, "--dataset", dataset, "--noise_rate", str(rate),
                                 "--seed", str(seed)]))
    return ({"config": cfg, "selected_test_acc": selected, "last_test_acc": last, "noisy_memorized": memorised}, [])


def test_a_comparison_averages_seeds_then_settings():
    runs = [run("lora", "mr", 0.4, 0, 0.60, 0.58, 0.30), run("lora", "mr", 0.4, 1, 0.62, 0.60, 0.40),
            run("clear", "mr", 0.4, 0, 0.65, 0.61, 0.10),                      # one seed: its setting counts once
            run("lora", "r8", 0.2, 0, 0.90, 0.90, 0.20), run("clear", "r8", 0.2, 0, 0.88, 0.91, 0.05),
            run("full", "r8", 0.2, 0, 0.95, 0.95, 0.50),                       # no clear-vs-full comparison
            run("lora", "mr", 0.0, 0, 0.80, 0.80, None), run("clear", "mr", 0.0, 0, 0.79, 0.80, None)]  # no noise
    means = verdicts.setting_means(runs)
    n, wins, memorised_less, diffs = verdicts.compare(means, "clear (lora)", "lora")
    # selected: mr 0.4 65 > 61 (the lora seeds' mean), r8 88 < 90, mr none 79 < 80; memorised: only the noisy two
    assert (n, wins, memorised_less) == (3, 1, (2, 2))
    assert abs(diffs["selected_test_acc"] - ((65 - 61) + (88 - 90) + (79 - 80)) / 3) < 1e-9
    assert abs(diffs["noisy_memorized"] - ((10 - 35) + (5 - 20)) / 2) < 1e-9
    assert verdicts.compare(means, "clear (lora)", "lora", dataset="mr")[:3] == (2, 1, (1, 1))
    text = verdicts.table(runs)
    assert "| CleaR beats its plain PEFT kind | clear (lora) vs lora | all | 3 | 1 of 3 | 2 of 2 | +0.3 | +1.0 | -20.0 |" in text
    assert "| lora vs full | r8 | 1 | 0 of 1 | 1 of 1 | -5.0 | -5.0 | -30.0 |" in text
    assert "| full vs probe |" not in text  # no probe ran
    short = verdicts.table(runs, overall_only=True)
    assert "| clear (lora) vs lora | all | 3 | 1 of 3 |" in short and "| mr |" not in short and "| r8 |" not in short


def test_moe_groups_average_the_last_epoch_of_typed_runs_only():
    def moe(dataset, types, g0_clean, g0_noisy):
        cfg = vars(train.parse_args(["--method", "loramoe", "--dataset", dataset, "--moe_types", types]))
        first = {"moe_g0_clean": 0.5, "moe_g0_noisy": 0.5}  # an earlier epoch: ignored
        last = {"moe_g0_clean": g0_clean, "moe_g0_noisy": g0_noisy, "moe_g0_typed_clean": g0_clean,
                "moe_g0_typed_noisy": None}
        return {"config": cfg}, [first, last]
    runs = [moe("mr", "clean", 0.60, 0.40), moe("mr", "clean", 0.50, 0.30), moe("mr", "none", 0.9, 0.9),
            run("lora", "mr", 0.4, 0, 0.6, 0.6, 0.3)]
    text = verdicts.moe_groups_table(runs)
    assert "| mr | 2 | 0.550 | 0.350 | 0.550 | - |" in text  # plain-balance run and LoRA run left out


def test_a_control_that_differs_in_one_setting_is_its_own_row():
    """A control (LoRAMoE with --moe_beta 0) shares its method label with the method; the verdicts split
    it off by that setting, as report.table's rows do, instead of pooling it with the method's seeds."""
    def moe(beta, seed, selected):
        cfg = vars(train.parse_args(["--method", "loramoe", "--moe_types", "clean", "--moe_beta", str(beta),
                                     "--noise_rate", "0.4", "--seed", str(seed)]))
        return ({"config": cfg, "selected_test_acc": selected, "last_test_acc": selected, "noisy_memorized": 0.5}, [])
    runs = [moe(0.1, 0, 0.60), moe(0.1, 1, 0.62), moe(0.0, 0, 0.50), moe(0.0, 1, 0.52)]
    means = verdicts.setting_means(runs)
    assert set(m for _, _, m in means) == {"loramoe (types clean)", "loramoe (types clean), moe_beta 0.0"}
    n, wins, _, diffs = verdicts.compare(means, "loramoe (types clean)", "loramoe (types clean), moe_beta 0.0")
    assert (n, wins) == (1, 1) and abs(diffs["selected_test_acc"] - 10.0) < 1e-9
