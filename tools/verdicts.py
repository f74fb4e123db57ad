"""
The verdicts of the methods grid as numbers: for each claim, method A against method B in
every (dataset, noise) setting both ran - how often A's validation-selected test accuracy is
higher and how often A memorises fewer of the wrong labels, and the mean differences (A - B,
in points) of selected accuracy, last-epoch accuracy and memorised share, per dataset and over
all settings. Seeds are averaged within a setting
first, so every setting counts once. blocks.readme_blocks writes the table into
RESULTS.md (block `verdicts`), so no verdict's number is typed by hand.

Usage:
    python tools/verdicts.py results/methods      # print the table
"""

import sys
from collections import defaultdict

import numpy as np

import report

# (A, B, the claim A against B tests), by report.py's method labels
COMPARISONS = [
    ("lora", "full", "PEFT memorises less than full fine-tuning"),
    ("adapter", "full", "PEFT memorises less than full fine-tuning"),
    ("clear (lora)", "lora", "CleaR beats its plain PEFT kind"),
    ("clear (adapter)", "adapter", "CleaR beats its plain PEFT kind"),
    ("match (lora, tau 3, identity init)", "lora", "Match-Tuning helps"),
    ("loramoe (types clean)", "lora", "LoRAMoE against plain LoRA"),
    ("lora", "probe", "against the linear probe"),
    ("clear (lora)", "probe", "against the linear probe"),
    ("full", "probe", "against the linear probe"),
]
KEYS = ("selected_test_acc", "last_test_acc", "noisy_memorized")


def setting_means(runs):
    """{(dataset, noise, method label): {key: mean over seeds}} of the finished runs; a label names the
    settings that tell a row's variants apart exactly as report.table's rows do, so variants (a control
    with --moe_beta 0, another batch order) are never pooled as seeds."""
    groups, configs = defaultdict(list), [s["config"] for s, _ in runs]
    short = report.short_variants(configs, report.variant_keys(configs))
    for summary, _ in runs:
        cfg = summary["config"]
        groups[report.group_key(cfg, variant=short[report.group_key(cfg)](cfg))].append(summary)
    return {k: {key: (np.mean([s[key] for s in ss]) if all(s.get(key) is not None for s in ss) else None)
                for key in KEYS} for k, ss in groups.items()}


def compare(means, a, b, dataset=None):
    """(settings, settings where A's selected accuracy is higher, (settings where A memorised less,
    settings with noisy labels), {key: mean A - B in points, or None})."""
    pairs = [(means[(d, n, a)], means[(d, n, b)]) for (d, n, m) in means
             if m == a and (d, n, b) in means and dataset in (None, d)]
    wins = sum(x["selected_test_acc"] > y["selected_test_acc"] for x, y in pairs)
    noisy = [(x, y) for x, y in pairs if x["noisy_memorized"] is not None and y["noisy_memorized"] is not None]
    memorised_less = (sum(x["noisy_memorized"] < y["noisy_memorized"] for x, y in noisy), len(noisy))
    diffs = {}
    for key in KEYS:
        d = [100 * (x[key] - y[key]) for x, y in pairs if x[key] is not None and y[key] is not None]
        diffs[key] = float(np.mean(d)) if d else None
    return len(pairs), wins, memorised_less, diffs


def table(runs, overall_only=False, comparisons=COMPARISONS):
    """Markdown: one row per comparison (A, B, claim) and dataset, then over every setting
    (overall_only: that row alone, the README's short form)."""
    means = setting_means(runs)
    datasets = [] if overall_only else sorted({d for d, _, _ in means})
    head = ["claim", "A vs B", "data", "settings", "A selected higher", "A memorised less", "selected A - B",
            "last A - B", "memorised A - B"]
    rows = []
    signed = lambda v: "-" if v is None else f"{v:+.1f}"
    for a, b, claim in comparisons:
        for dataset in datasets + ([None] if len(datasets) != 1 else []):
            n, wins, memorised_less, diffs = compare(means, a, b, dataset)
            if n:
                rows.append([claim, f"{a} vs {b}", dataset or "all", str(n), f"{wins} of {n}",
                             "{} of {}".format(*memorised_less), *(signed(diffs[key]) for key in KEYS)])
    return report.markdown_table(head, rows)


MOE_SHARES = ("moe_g0_clean", "moe_g0_noisy", "moe_g0_typed_clean", "moe_g0_typed_noisy")


def moe_groups_table(runs):
    """Markdown: does LoRAMoE's expert group 0 (the clean group) serve clean samples more? Per
    dataset, group 0's routing share in the last epoch for truly clean / truly noisy samples and for
    samples the detector typed clean / noisy, mean over settings and seeds (1/2 = no specialisation;
    the balance loss's optimum is (1 + delta) / 2 for the serving group)."""
    shares = defaultdict(lambda: defaultdict(list))
    for summary, metrics in runs:
        last = metrics[-1] if metrics else {}
        if summary["config"].get("moe_types") == "clean" and last.get("moe_g0_clean") is not None:
            for key in MOE_SHARES:
                if last.get(key) is not None:
                    shares[summary["config"]["dataset"]][key].append(last[key])
    head = ["data", "runs", "truly clean", "truly noisy", "typed clean", "typed noisy"]
    rows = [[dataset, str(len(shares[dataset]["moe_g0_clean"])),
             *(f"{np.mean(shares[dataset][k]):.3f}" if shares[dataset][k] else "-" for k in MOE_SHARES)]
            for dataset in sorted(shares)]
    return report.markdown_table(head, rows)


if __name__ == "__main__":
    print(table(report.load_runs(sys.argv[1:] or ["results/methods"])))
