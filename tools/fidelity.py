"""
The fidelity issue's studies as tables: Match-Tuning as published (tau chosen in a pilot, an
identity-init ablation, a no-mixing control) and LoRAMoE against four controls (constraint off,
no types, true noisy flags as types, a capacity-matched FFN LoRA) and with types the text shows
(--moe_types label, the balance on and off), each beside the results
grid's plain LoRA / full fine-tuning cells of the same settings. blocks.readme_blocks
writes them into RESULTS.md (blocks grid:match:* and grid:loramoe:*), so no number is typed by hand.

Usage:
    blocks = match_blocks(pilot_runs, main_runs, baseline_runs)   # {marker key: markdown}
    blocks = loramoe_blocks(control_runs, baseline_runs)
"""

import report
import verdicts

# (A, B, the question A against B answers), by report.py's method labels
MATCH_COMPARISONS = [
    ("match (lora, tau 10)", "lora", "Match-Tuning (as published) on LoRA"),
    ("match (full, tau 1)", "full", "Match-Tuning (as published) on full fine-tuning"),
    ("match (lora, tau 10)", "match (lora, no mixing)", "the mixing, beyond its dense layer (LoRA)"),
    ("match (full, tau 1)", "match (full, no mixing)", "the mixing, beyond its dense layer (full)"),
    ("match (lora, tau 10, identity init)", "match (lora, tau 10)", "identity init against the published init"),
    ("match (full, tau 1, identity init)", "match (full, tau 1)", "identity init against the published init"),
    ("match (lora, tau 10, mixed evaluation)", "match (lora, tau 10)", "mixing at evaluation too (LoRA)"),
    ("match (lora, tau 10, mixed evaluation)", "lora", "Match-Tuning evaluated with the mix, against LoRA"),
]
LORAMOE_COMPARISONS = [
    ("loramoe (types clean)", "loramoe (types clean), moe_beta 0.0", "the constraint against none (official default)"),
    ("loramoe (types clean)", "loramoe (types none)", "label-noise types against no types"),
    ("loramoe (types truth) [oracle: true noisy flags as types]", "loramoe (types clean)",
     "perfect types against the detector's"),
    ("loramoe (types clean)", "lora, lora_r 27, lora_targets ffn_in,ffn_out, lr 0.0005",
     "experts against one LoRA of the same size, place and rate"),
    ("loramoe (types label)", "loramoe (types label), moe_beta 0.0", "visible types: the constraint against none"),
]
MATCH_COLUMNS = ["match_diag@1", "match_diff_label@1", "match_diag", "val_last3", "det_auroc"]
LORAMOE_COLUMNS = ["moe_typed_gap", "moe_typed_gap_max", "moe_shift", "moe_blind_shift", "moe_typed_noisy"]


def match_blocks(pilot, main, baseline):
    """The pilot's table (every tau: the epoch-1 self-share and other-label share, noisy-validation accuracy
    over the last three epochs), the main table beside LoRA and full fine-tuning, and the verdicts."""
    blocks = {}
    if pilot:
        blocks["match-pilot"] = report.table(pilot, MATCH_COLUMNS)
    if main:
        blocks["match-table"] = report.table(main + baseline, MATCH_COLUMNS)
        blocks["match-verdicts"] = verdicts.table(main + baseline, comparisons=MATCH_COMPARISONS)
    return blocks


def loramoe_blocks(controls, baseline):
    """LoRAMoE and its controls beside plain LoRA: the per-run specialisation (typed gap against its maximum,
    the shift against a type-blind router's) and the verdicts."""
    if not controls:
        return {}
    runs = controls + baseline
    return {"loramoe-table": report.table(runs, LORAMOE_COLUMNS),
            "loramoe-verdicts": verdicts.table(runs, comparisons=LORAMOE_COMPARISONS)}
