"""
From the raw timings of tools/bench.py's jobs (bench_jobs.py) to its figures: the FLOPs of one
training step (train_flops), the medians per job, the comparisons between jobs, the table and the
lines printed under it. Every figure goes into one dict, the JSON line bench.py prints last; its keys:

    <job>_tok_s, _ms_step, _gflops, _peak_mb, _before_mb   per training-step job; <job> is the job name
                                    with @ -> _, @- -> _no_, +bf16 -> _bf16 (lora@-dropout+bf16 ->
                                    lora_no_dropout_bf16); medians over rounds, the peaks their maximum
    <m>_vs_hf[_bf16|_compile], _vs_hf_peak..., _vs_hf_paired...   ours / Hugging Face's (tokens/s, peak
                                    memory, the ratio within each round: robust to drift between rounds)
    <job>_bf16_vs_fp32              bf16 autocast over fp32, tokens/s of the same job
    <m>_ckpt_act_mb_ratio, _ckpt_speed_ratio   gradient checkpointing: activation memory, tokens/s
    <m>_speedup_<path>, _speedup_plain   tokens/s with every speed path over with one off / with none
    <m>_vs_<kind>_step              time per step of a method over plain training of the kind it sits on
    <m>[_bf16]_epoch_over_train_pass, _epoch_s   one train.py epoch over its training pass
    epoch_over_train_pass           the same for the first --time_epoch_of method, at this device's default precision
    <m>_eval_pays_<path>, _pays_<path>   --paths_ab: time with the path off over on (median of the pairs)
    <m>_infer_tok_s, _merged_infer_tok_s, _merge_speedup, _merged_max_abs_diff   merged inference;
                                    merge_speedup and merged_max_abs_diff: the first such method's
    tokens_bucketed, tokens_pad128, ... the mr padding figure (bench_jobs.data_side)
"""

import statistics

from bench_jobs import NUM_CLASSES  # first: it puts the project on sys.path
import methods
import peft
import speedups
import train
from hardware import pick_device, resolve_precision


def job_key(job):
    """The figure prefix of a job: lora@-dropout+bf16 -> lora_no_dropout_bf16."""
    return job.replace("+bf16", "_bf16").replace("@-", "_no_").replace("@", "_")


def job_method(job):
    """The method a training-step job times: hf_lora@compile -> lora."""
    return job.partition("@")[0].removesuffix("+bf16").removeprefix("hf_")


def sits_on(method):
    """The plain method training the PEFT kind `method` trains, when that is another method, else None."""
    kind = methods.get(method).kind_name(train.parse_args(["--method", method]))
    return None if kind == method else kind


def train_flops(method, cfg, B, T, cls_only):
    """FLOPs of one training step, 2 per multiply-add (softmax, LayerNorm, GELU, optimizer not counted).
    Per sample and layer, with C = hidden, I = FFN width, T tokens, T_kv = T (+ P prefix positions) and
    t_q query-side tokens (T, or 1 in the top layer when only [CLS] is computed there, cls_only):
      forward    2 * 2C^2 * T              key and value projections
               + 2 * (2C^2 + 2CI) * t_q    query, attention output, FFN in and out
               + 4 * t_q * T_kv * C        attention: scores q k^T and the weighted sum of values
               + E * T                     the PEFT branch's own matmuls (its kind's branch_flops: LoRA
                                           A and B, adapter down and up, experts and router), counted
                                           on every token
      backward, activation gradients, through every layer the loss reaches (all L here: every method
               trains something in every layer): dX = dY W^T is 1x each weight matmul's forward - except
               layer 0's q/k/v when the embeddings are frozen (their input needs no gradient) - 2x the
               attention matmuls (both operands are activations), 1x E;
      backward, weight gradients dW = dY^T X (another 1x the matmul's forward) ONLY for trainable
               weights: the base matmuls when the kind trains them (trains_base), E for the PEFT branches.
    Plus the head: 2 * C * K per sample forward, 3x that in all (layers a method adds beyond its kind,
    and mixing within the batch, are not counted). Training every weight comes to 3x forward."""
    C, I, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    targs = train.parse_args(["--method", method])
    kind = peft.kind_config(methods.get(method).kind_name(targs), vars(targs))  # the registry entry counts E and P
    E, T_kv, full = kind.branch_flops(cfg), T + kind.extra_keys(), kind.trains_base
    t_q = [T] * (L - 1) + [1 if cls_only else T]
    weights = sum(2 * 2 * C * C * T + 2 * (2 * C * C + 2 * C * I) * t for t in t_q)
    attn = sum(4 * t * T_kv * C for t in t_q)
    forward = weights + attn + E * T
    act_grad = weights - (0 if full else 2 * 3 * C * C * T) + 2 * attn + E * T
    weight_grad = (weights if full else 0) + E * T
    return (forward + act_grad + weight_grad) * B + 3 * 2 * C * NUM_CLASSES * B


def summarise(a, cfg, runs, out, notes):
    """Per job, its medians into `out` (the first five keys above), then the comparisons; returns the table rows."""
    rows, tok = [], a.batch_size * a.max_len
    for job, results in runs.items():
        ok = [r for r in results if "error" not in r]
        notes += [f"{job} failed: {r['error']}" for r in results if "error" in r]
        if not ok:
            continue
        if job.startswith("epoch@"):  # a whole epoch over its training pass
            key = job_key(job.partition("@")[2])
            out[f"{key}_epoch_over_train_pass"] = statistics.median(r["epoch_s"] / r["train_pass_s"] for r in ok)
            out[f"{key}_epoch_s"] = statistics.median(r["epoch_s"] for r in ok)
            continue
        key, method = job_key(job), job_method(job)
        roof = out["matmul_bf16_gflops" if job.endswith("+bf16") else "matmul_gflops"]
        secs = [s for r in ok for s in r["s_step"]]
        plain = job.startswith("hf_") or job.endswith(("@plain", "@-cls_only"))  # the top layer in full
        cls_only = not plain and not methods.get(method).reads_all_tokens  # speedups.py's cls_only path
        s, flops = statistics.median(secs), train_flops(method, cfg, a.batch_size, a.max_len, cls_only)
        out.update({f"{key}_tok_s": tok / s, f"{key}_ms_step": 1000 * s, f"{key}_gflops": flops / s / 1e9,
                    f"{key}_peak_mb": max(r["peak_mb"] for r in ok), f"{key}_before_mb": max(r["before_mb"] for r in ok)})
        rows.append(f"| {key} | {tok / s:,.0f} | {tok / max(secs):,.0f}-{tok / min(secs):,.0f} | {1000 * s:.0f} "
                    f"| {flops / 1e9:.1f} | {flops / s / 1e9:.1f} | {100 * flops / s / 1e9 / roof:.0f}% "
                    f"| {out[f'{key}_peak_mb']:.0f} | {out[f'{key}_before_mb']:.0f} |")
    compare(a, runs, out)
    return rows


def compare(a, runs, out):
    """The ratios between jobs of this run, into `out`."""
    for hf in [j for j in runs if j.startswith("hf_")]:  # ours / theirs: > 1 is faster; < 1 is less memory
        ours, m = hf[len("hf_"):], job_method(hf)
        sfx = job_key(hf)[len(f"hf_{m}"):]  # "", "_bf16", "_compile"
        if f"{job_key(ours)}_tok_s" not in out or f"{job_key(hf)}_tok_s" not in out:
            continue
        out[f"{m}_vs_hf{sfx}"] = out[f"{job_key(ours)}_tok_s"] / out[f"{job_key(hf)}_tok_s"]
        out[f"{m}_vs_hf_peak{sfx}"] = out[f"{job_key(ours)}_peak_mb"] / out[f"{job_key(hf)}_peak_mb"]
        # the same ratio within each round (the two jobs ran back to back), median over rounds:
        # robust to the machine speeding up or slowing down between rounds
        pairs = [statistics.median(h["s_step"]) / statistics.median(o["s_step"])
                 for o, h in zip(runs[ours], runs[hf]) if "error" not in o and "error" not in h]
        if pairs:
            out[f"{m}_vs_hf_rounds{sfx}"] = pairs
            out[f"{m}_vs_hf_paired{sfx}"] = statistics.median(pairs)
    for m in a.methods:
        if f"{m}_ckpt_tok_s" in out and f"{m}_tok_s" in out:  # activation memory (peak - before), speed
            out[f"{m}_ckpt_act_mb_ratio"] = ((out[f"{m}_ckpt_peak_mb"] - out[f"{m}_ckpt_before_mb"])
                                            / (out[f"{m}_peak_mb"] - out[f"{m}_before_mb"]))
            out[f"{m}_ckpt_speed_ratio"] = out[f"{m}_ckpt_tok_s"] / out[f"{m}_tok_s"]
        for off in tuple(speedups.PATHS) + ("plain",):  # what each speed path pays: all on / that one off (or all off)
            key = f"{m}_plain" if off == "plain" else f"{m}_no_{off}"
            if f"{key}_tok_s" in out and f"{m}_tok_s" in out:
                out[f"{m}_speedup_{off}"] = out[f"{m}_tok_s"] / out[f"{key}_tok_s"]
        kind = sits_on(m)  # a method's step over the plain step of the PEFT kind it sits on
        if kind and f"{m}_ms_step" in out and f"{kind}_ms_step" in out:
            out[f"{m}_vs_{kind}_step"] = out[f"{m}_ms_step"] / out[f"{kind}_ms_step"]
    for job in [j for j in runs if j.endswith("+bf16") and not j.startswith("epoch@")]:  # same job, bf16 / fp32
        key = job_key(job.removesuffix("+bf16"))
        if f"{key}_bf16_tok_s" in out and f"{key}_tok_s" in out:
            out[f"{key}_bf16_vs_fp32"] = out[f"{key}_bf16_tok_s"] / out[f"{key}_tok_s"]
    default = "_bf16" if resolve_precision(pick_device(a.device)[0], "auto") == "bf16" else ""
    headline = f"{a.time_epoch_of[0]}{default}_epoch_over_train_pass" if a.time_epoch_of else None
    if headline in out:  # the first --time_epoch_of method at this device's default precision
        out["epoch_over_train_pass"] = out[headline]


def add_paths_ab(m, res, out):
    """--paths_ab's alternating pairs into `out` (> 1: the path makes it faster); returns the lines to print."""
    lines = []
    for path, r in res.items():
        for what, pre in (("training step", ""), ("eval forward", "eval_")):
            pairs = [off / on for on, off in zip(r[f"{pre}on_s"], r[f"{pre}off_s"])]
            out[f"{m}_{pre}pays_{path}"] = statistics.median(pairs)
            lines.append(f"{m}, speed path {path}, {what}: time off / on, median of {len(pairs)} alternating "
                         f"pairs {statistics.median(pairs):.2f}x (pairs {', '.join(f'{x:.2f}' for x in pairs)})")
    return lines


def add_infer(a, m, res, out):
    """The merged vs unmerged inference job of method m into `out`."""
    out[f"{m}_infer_tok_s"] = a.eval_batch_size * a.max_len / statistics.median(res["unmerged_s"])
    out[f"{m}_merged_infer_tok_s"] = a.eval_batch_size * a.max_len / statistics.median(res["merged_s"])
    out[f"{m}_merge_speedup"] = out[f"{m}_merged_infer_tok_s"] / out[f"{m}_infer_tok_s"]
    out[f"{m}_merged_max_abs_diff"] = res["max_abs_diff"]
    out.setdefault("merge_speedup", out[f"{m}_merge_speedup"])
    out.setdefault("merged_max_abs_diff", res["max_abs_diff"])


def print_report(a, out, rows, notes):
    """The table of training-step jobs, then one line per comparison, figure and note."""
    bf16_roof = f", bf16 {out['matmul_bf16_gflops']:.1f}" if "matmul_bf16_gflops" in out else ""
    print(f"\ntorch {out['torch']}, {out['device']}, {a.threads} threads, batch {a.batch_size} x max_len "
          f"{a.max_len}; median of {a.repeats} rounds x {a.steps} steps; matmul roof fp32 {out['matmul_gflops']:.1f}"
          f"{bf16_roof} GFLOP/s (a job's share is of its own precision's roof)\n\n"
          "| job | tok/s | range | ms/step | GFLOP/step | GFLOP/s | of roof | peak MB | before MB |\n"
          "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    for m in a.methods:
        if f"{m}_vs_hf" in out:
            rounds = ", ".join(f"{r:.2f}" for r in out.get(f"{m}_vs_hf_rounds", []))
            print(f"ours / Hugging Face, {m}: {out[f'{m}_vs_hf']:.2f}x the tokens/s (medians); per round "
                  f"{rounds}, median {out.get(f'{m}_vs_hf_paired', float('nan')):.2f}x; "
                  f"{out[f'{m}_vs_hf_peak']:.2f}x the peak memory")
        if f"{m}_ckpt_act_mb_ratio" in out:
            print(f"{m} with grad checkpointing: {out[f'{m}_ckpt_act_mb_ratio']:.2f}x the activation memory "
                  f"(peak - before), {out[f'{m}_ckpt_speed_ratio']:.2f}x the tokens/s")
        if f"{m}_vs_hf_bf16" in out:
            print(f"ours / Hugging Face, {m}, both under bf16 autocast: {out[f'{m}_vs_hf_bf16']:.2f}x the tokens/s "
                  f"(per-round median {out.get(f'{m}_vs_hf_paired_bf16', float('nan')):.2f}x); "
                  f"{out[f'{m}_vs_hf_peak_bf16']:.2f}x the peak memory")
    for key in [k.removesuffix("_bf16_vs_fp32") for k in out if k.endswith("_bf16_vs_fp32")]:
        print(f"{key}: bf16 autocast {out[f'{key}_bf16_vs_fp32']:.2f}x the tokens/s of fp32")
    for m, sfx in [(m, sfx) for m in a.time_epoch_of for sfx in ("", "_bf16")]:
        if f"{m}{sfx}_epoch_over_train_pass" in out:
            print(f"{m}{sfx}: one epoch ({a.max_train} mr snippets, the whole test split) "
                  f"{out[f'{m}{sfx}_epoch_s']:.1f} s = {out[f'{m}{sfx}_epoch_over_train_pass']:.2f}x its training pass")
    for m in a.methods:
        kind = sits_on(m)
        if f"{m}_vs_{kind}_step" in out:
            print(f"{m} ({kind}) / {kind}: {out[f'{m}_vs_{kind}_step']:.2f}x the time per step")
        paid = {p: out[f"{m}_speedup_{p}"] for p in tuple(speedups.PATHS) + ("plain",) if f"{m}_speedup_{p}" in out}
        one_off = ", ".join(f"{p} {v:.2f}x" for p, v in paid.items() if p != "plain")
        parts = ([f"with every speed path / with one off: {one_off}"] if one_off else []) \
            + ([f"with all of them / none (plain path) {paid['plain']:.2f}x"] if "plain" in paid else [])
        if parts:
            print(f"{m}: tokens/s " + "; ".join(parts))
        if f"{m}_merge_speedup" in out:
            print(f"{m} inference, batch {a.eval_batch_size}: unmerged {out[f'{m}_infer_tok_s']:,.0f} tok/s, "
                  f"merged {out[f'{m}_merged_infer_tok_s']:,.0f} tok/s ({out[f'{m}_merge_speedup']:.2f}x; "
                  f"max |logit diff| {out[f'{m}_merged_max_abs_diff']:.1e})")
    if "tokens_ratio_pad128" in out:
        print(f"mr epoch, {out['mr_examples']} examples: bucketed {out['tokens_bucketed']:,} tokens "
              f"({100 * out['pad_frac_bucketed']:.1f}% padding), random batches {out['tokens_unbucketed']:,} "
              f"({100 * out['pad_frac_unbucketed']:.1f}%), all padded to 128 {out['tokens_pad128']:,} "
              f"({100 * out['pad_frac_pad128']:.1f}%): pad-to-128 costs {out['tokens_ratio_pad128']:.2f}x the tokens")
    for note in notes:
        print(f"note: {note}")
