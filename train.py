"""
Fine-tune a pretrained BERT-style encoder on text classification with noisy labels.

The run: load the encoder (model.py) -> load and tokenize a dataset (data.py) -> corrupt
the training labels (noise.py) -> train with AdamW (warm-up + linear decay) -> every
epoch evaluate on the clean test split and measure memorisation on the training set
(which noisy labels the model has learned) -> write metrics.jsonl, an atomic checkpoint
and finally summary.json into --out.

Memorisation (evaluation.py) follows Arpit et al. 2017 / the CleaR paper (Kim et al. 2024,
Sec. 3): for each truly noisy training sample, is the prediction the noisy label
(memorised), the true label (corrected) or something else? Under torchrun the run is data
parallel (dist.py).

Usage:
    python train.py --method clear --max_train 2000              # CleaR on LoRA, a few minutes on a CPU
    python train.py --eval_only --load runs/mr-lora-sym0.4-s0    # reload the saved PEFT weights
"""

import argparse
import json
import os
import resource
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
import dist
import noise
import peft
import routing
from evaluation import memorisation, predict, sentence_embeddings
from model import Classifier, ModelLoadError, count_params, load_pretrained

METHODS = peft.METHODS + ("clear", "loramoe", "match")
PEFT_KINDS = ("adapter", "lora", "prefix", "bitfit")  # what CleaR routes
DEFAULT_LR = {"full": 3e-5, "lora": 2e-3, "adapter": 2e-3, "prefix": 2e-2, "bitfit": 5e-3,
              "loramoe": 5e-4}  # measured on clean mr, see README


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--method", choices=METHODS, default="clear", help="what to fine-tune (full = all weights)")
    p.add_argument("--peft", choices=PEFT_KINDS + ("none",), default="lora",
                   help="the PEFT kind under --method clear or match (none = full fine-tuning, match only)")
    p.add_argument("--dataset", default="mr", help="mr, 20ng, r8, or a .csv/.tsv/.jsonl file with text,label columns")
    p.add_argument("--test_file", default=None, help="test file for a user dataset (else a seeded 20%% split)")
    p.add_argument("--model", default=None, help="BERT directory (config.json, model.safetensors, tokenizer.json); "
                                                "default: the packaged all-MiniLM-L6-v2")
    p.add_argument("--noise", choices=noise.NOISE_KINDS, default="sym", help="label-noise model for the training split")
    p.add_argument("--noise_rate", type=float, default=0.4, help="noise rate r in [0, 1)")
    p.add_argument("--epochs", type=int, default=6, help="training epochs")
    p.add_argument("--batch_size", type=int, default=32, help="training batch size")
    p.add_argument("--eval_batch_size", type=int, default=128, help="batch size for evaluation passes")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: per method, see DEFAULT_LR)")
    p.add_argument("--weight_decay", type=float, default=0.01, help="AdamW weight decay (not on biases/LayerNorm)")
    p.add_argument("--warmup_ratio", type=float, default=0.1, help="fraction of steps with linear LR warm-up")
    p.add_argument("--grad_clip", type=float, default=1.0, help="max gradient norm (0 = off)")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout before the classifier head")
    p.add_argument("--max_len", type=int, default=128, help="truncate token sequences to this length")
    p.add_argument("--max_train", type=int, default=None, help="stratified, seeded subsample of N training examples")
    p.add_argument("--max_test", type=int, default=None,
                   help="stratified subsample of N test examples (the same for every seed)")
    p.add_argument("--seed", type=int, default=0, help="seed for noise, initialisation, dropout and batch order")
    p.add_argument("--out", default=None, help="output directory (default: runs/<dataset>-<method>-<noise><rate>-s<seed>)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto = cuda when available")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start over even if --out already holds a run")
    p.add_argument("--no_progress", action="store_true", help="no tqdm bars (for logs)")
    p.add_argument("--pad_to_max_len", action="store_true",
                   help="random batches padded to --max_len instead of length buckets (only to measure what "
                        "bucketing saves; the CleaR reference code feeds data this way)")
    p.add_argument("--grad_checkpointing", action="store_true",
                   help="recompute each layer's activations in backward: less memory, ~1/3 more compute")
    p.add_argument("--eval_only", action="store_true", help="only evaluate the run saved in --load on its test split")
    p.add_argument("--load", default=None, help="a finished run's directory (with peft.safetensors) for --eval_only")
    g = p.add_argument_group("PEFT (peft.py)")
    g.add_argument("--lora_r", type=int, default=8, help="LoRA rank r")
    g.add_argument("--lora_alpha", type=float, default=16, help="LoRA alpha; the update is scaled by alpha/r")
    g.add_argument("--lora_dropout", type=float, default=0.1, help="dropout on the LoRA input")
    g.add_argument("--lora_targets", default="query,value", help="comma list of query,key,value,attn_out,ffn_in,"
                                                                  "ffn_out, or all-linear")
    g.add_argument("--adapter_kind", choices=("houlsby", "pfeiffer"), default="houlsby",
                   help="houlsby: after attention and FFN; pfeiffer: after the FFN only")
    g.add_argument("--adapter_size", type=int, default=16, help="adapter bottleneck width")
    g.add_argument("--prefix_len", type=int, default=20, help="prefix length P (key/value vectors per layer)")
    g.add_argument("--prefix_mlp", action="store_true", help="train the prefix through a reparameterisation MLP")
    g = p.add_argument_group("CleaR (routing.py)")
    g.add_argument("--warmup_epochs", type=int, default=3, help="epochs with gates ~ Bernoulli(base rate) before the "
                                                                "loss GMM starts routing")
    g.add_argument("--base_rate", type=float, default=None, help="gate probability r of a surely clean sample "
                                                                 "(default per kind: adapter 0.7, lora/prefix 0.85, bitfit 0.9)")
    g.add_argument("--consistency_weight", type=float, default=1.0, help="weight of the KL term to the last epoch's "
                                                                         "training-set predictions")
    g.add_argument("--consistency_temp", type=float, default=1.0, help="temperature of that KL term")
    g.add_argument("--clear_eval", choices=routing.CLEAR_EVAL_MODES, default=None,
                   help="gates at evaluation (test and training-set passes): sample ~ Bernoulli(r) (official code), "
                        "all on, or their expected value r (default: expected, best measured, see README; "
                        "with --eval_only: the saved run's mode unless given)")
    g = p.add_argument_group("LoRAMoE (routing.py)")
    g.add_argument("--moe_experts", type=int, default=6, help="LoRA experts per FFN linear")
    g.add_argument("--moe_r", type=int, default=4, help="rank of each expert")
    g.add_argument("--moe_alpha", type=float, default=32, help="expert deltas are scaled by alpha/r")
    g.add_argument("--moe_dropout", type=float, default=0.05, help="dropout on the experts' input")
    g.add_argument("--moe_delta", type=float, default=0.1, help="localized balancing coefficients 1 -/+ delta")
    g.add_argument("--moe_beta", type=float, default=0.1, help="weight of the balance loss")
    g.add_argument("--moe_types", choices=("none", "clean"), default="none",
                   help="sample types for the balance: none = plain balance; clean = after --warmup_epochs, "
                        "loss-GMM clean samples to expert group 0, suspected noisy to group 1")
    g = p.add_argument_group("Match-Tuning (routing.py)")
    g.add_argument("--match_tau", type=float, default=3.0, help="temperature of the in-batch similarity z z^T / tau "
                   "(unpublished; 3 is a first guess from MiniLM [CLS] dot products, not yet tuned)")
    g.add_argument("--match_eval", choices=("plain", "mix"), default="plain",
                   help="evaluation: plain z (batch-independent) or the in-batch mix")
    args = p.parse_args(argv)
    if args.method == "clear" and args.peft == "none":
        p.error("--method clear needs a PEFT kind to route: --peft adapter|lora|prefix|bitfit")
    if args.method == "clear" and args.base_rate is None:
        args.base_rate = routing.BASE_RATE[args.peft]
    if args.clear_eval is None and not args.eval_only:
        args.clear_eval = "expected"
    if args.lr is None:
        args.lr = DEFAULT_LR[base_method(args)]
    if args.out is None:
        name = os.path.basename(args.dataset).split(".")[0]
        method = args.method if args.method == base_method(args) else f"{args.method}-{base_method(args)}"
        args.out = os.path.join("runs", f"{name}-{method}-{args.noise}{args.noise_rate:g}-s{args.seed}")
    return args


# ----------------------------------------------------------------------------
# checkpoints: written to a temp file and renamed, so a kill never leaves half a file


def save_checkpoint(path, state):
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def trainable_state(model):
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


RESUME_IGNORED = ("resume", "overwrite", "device", "no_progress", "eval_batch_size")


def prepare_out_dir(args):
    """The checkpoint to resume from, or None; refuses to clobber an existing run."""
    ckpt_path = os.path.join(args.out, "checkpoint.pt")
    if args.resume:
        if not os.path.isfile(ckpt_path):
            raise RunError(f"--resume: no checkpoint at {ckpt_path}")
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        old = {k: v for k, v in ckpt["config"].items() if k not in RESUME_IGNORED}
        new = {k: v for k, v in vars(args).items() if k not in RESUME_IGNORED}
        diff = {k: (old.get(k), new.get(k)) for k in set(old) | set(new) if old.get(k) != new.get(k)}
        if diff:
            raise RunError(f"--resume: settings differ from the checkpoint's (old, new): {diff}")
        return ckpt
    if os.path.exists(ckpt_path) or os.path.exists(os.path.join(args.out, "summary.json")):
        if not args.overwrite:
            raise RunError(f"{args.out} already holds a run: pass --resume to continue it or --overwrite to start over")
    os.makedirs(args.out, exist_ok=True)
    for f in ("metrics.jsonl", "summary.json", "checkpoint.pt"):
        if os.path.exists(os.path.join(args.out, f)):
            os.remove(os.path.join(args.out, f))
    return None


class RunError(RuntimeError):
    """A run that cannot start as asked (output directory, resume mismatch)."""


# ----------------------------------------------------------------------------


def lr_lambda(warmup_steps, total_steps):
    """Linear warm-up to the peak, then linear decay to zero (Devlin et al. 2019, Sec. A.2)."""
    def f(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return f


def build_optimizer(model, args, total_steps):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.dim() < 2 else decay).append(p)  # biases and LayerNorm gains: no decay
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:  # one fused kernel for the whole update: ~5x faster optimizer step on this CPU (torch >= 2.4)
        opt = torch.optim.AdamW(groups, lr=args.lr, fused=True)
    except (RuntimeError, TypeError):
        opt = torch.optim.AdamW(groups, lr=args.lr)
    warmup = int(args.warmup_ratio * total_steps)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(warmup, total_steps))


def base_method(args):
    """The PEFT kind (or full) underneath: CleaR and Match-Tuning sit on top of --peft."""
    if args.method in ("clear", "match"):
        return "full" if args.peft == "none" else args.peft
    return args.method


def peft_config(args):
    fields = {f for f in vars(peft.PeftConfig()) if f != "method"}
    return peft.PeftConfig(method=base_method(args), **{k: getattr(args, k) for k in fields if hasattr(args, k)})


def build_router(args, model, num_train):
    """The method's per-sample routing (routing.py); plain methods get the no-op Routing."""
    if args.method == "clear":
        cfg = routing.ClearConfig(base_rate=args.base_rate, warmup_epochs=args.warmup_epochs,
                                  consistency_weight=args.consistency_weight,
                                  consistency_temp=args.consistency_temp, eval_mode=args.clear_eval)
        return routing.ClearRouting(num_train, model.encoder.config.num_hidden_layers, cfg)
    if args.method == "loramoe":
        return routing.LoRAMoERouting(model, num_train, model.peft_config)
    if args.method == "match":
        return routing.MatchRouting(model)
    return routing.Routing()


def build_model(args, num_classes):
    """Pretrained encoder (+ tokenizer) -> classifier -> PEFT modules injected and everything else frozen."""
    encoder, tokenizer = load_pretrained(args.model)
    model = Classifier(encoder, num_classes, dropout=args.dropout)
    if args.method == "loramoe":
        routing.inject_loramoe(model, routing.LoRAMoEConfig(
            n_experts=args.moe_experts, r=args.moe_r, alpha=args.moe_alpha, dropout=args.moe_dropout,
            delta=args.moe_delta, beta=args.moe_beta, types=args.moe_types, warmup_epochs=args.warmup_epochs))
    else:
        peft.inject(model, peft_config(args))
    if args.method == "match":
        routing.replace_head_with_match(model, args.match_tau, eval_mix=args.match_eval == "mix")
    return model, tokenizer


def pick_device(name):
    device = torch.device("cuda" if name == "auto" and torch.cuda.is_available() else
                          "cpu" if name == "auto" else name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError("--device cuda: no CUDA device is available")
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else nullcontext
    return device, autocast


def evaluate_saved(args):
    """--eval_only: rebuild a finished run from its saved config and PEFT weights, report its test accuracy."""
    summary_path = os.path.join(args.load or "", "summary.json")
    if not os.path.isfile(summary_path):
        raise RunError(f"--eval_only needs --load DIR of a finished run; {summary_path} not found")
    with open(summary_path) as f:
        saved = json.load(f)
    # the saved run's settings, except how to evaluate: device and (for CleaR) the gate mode may be changed
    cfg = argparse.Namespace(**{**vars(args), **saved["config"], "device": args.device})
    if args.clear_eval is not None:
        cfg.clear_eval = args.clear_eval
    device, autocast = pick_device(cfg.device)
    ds = data.load_data(cfg.dataset, test_file=cfg.test_file, max_train=cfg.max_train, seed=cfg.seed,
                          max_test=cfg.max_test)
    model, tokenizer = build_model(cfg, len(ds.class_names))
    peft.load_peft(model, args.load)
    router = build_router(cfg, model, len(ds.train.labels))
    test_ids = data.encode(tokenizer, ds.test.texts, cfg.max_len)
    acc = float((predict(model.to(device), test_ids, args.eval_batch_size, device, autocast, router).argmax(1)
                 == ds.test.labels).mean())
    print(f"{args.load}: test acc {acc:.4f} (the run reported {saved['last_test_acc']:.4f} after its last epoch)")
    return {"test_acc": acc, "saved_last_test_acc": saved["last_test_acc"]}


def run(args):
    t_start = time.time()
    device, autocast = pick_device(args.device)
    rank, world, dist_device = dist.setup(args.device)  # (0, 1, None) unless launched by torchrun
    device = dist_device or device
    main_rank = rank == 0
    log = print if main_rank else (lambda *a, **k: None)
    ckpt = prepare_out_dir(args) if main_rank else None
    dist.barrier()
    if not main_rank and args.resume:
        ckpt = torch.load(os.path.join(args.out, "checkpoint.pt"), map_location="cpu", weights_only=False)
    torch.manual_seed(args.seed)  # the same on every rank: identical initial PEFT weights

    ds = data.load_data(args.dataset, test_file=args.test_file, max_train=args.max_train, seed=args.seed,
                          max_test=args.max_test)
    K = len(ds.class_names)
    model, tokenizer = build_model(args, K)
    train_ids = data.encode(tokenizer, ds.train.texts, args.max_len)
    test_ids = data.encode(tokenizer, ds.test.texts, args.max_len)
    true = ds.train.labels
    if min(len(train_ids), len(test_ids)) < world:
        raise RunError(f"{min(len(train_ids), len(test_ids))} examples cannot be shared by {world} ranks")
    features = None
    if args.noise == "idn":  # before training: the pretrained encoder's view of each sample
        features = sentence_embeddings(model.encoder.to(device), train_ids, args.eval_batch_size, device)
    observed = noise.add_noise(true, args.noise, args.noise_rate, K, seed=args.seed, features=features)
    report = noise.noise_report(true, observed, K)
    log(f"data: {ds.name}, {len(true)} train / {len(ds.test.labels)} test, {K} classes; "
        f"noise {args.noise} r={args.noise_rate}: realised flip rate {report['realized_rate']:.3f}")
    for note in ds.notes:
        log(f"data: {note}")

    model.to(device)
    model.encoder.grad_checkpointing = args.grad_checkpointing
    pad_to = args.max_len if args.pad_to_max_len else None
    router = build_router(args, model, len(true))
    trainable, total = count_params(model)
    log(f"{args.method}: {peft.param_summary(model)}" + (f"; {world} ranks" if world > 1 else ""))

    share = lambda batches: dist.shard(batches, rank, world)  # this rank's batches (all of them in one process)
    steps_per_epoch = len(share(data.length_bucketed_batches([len(t) for t in train_ids], args.batch_size,
                                                              args.seed, 0)))
    opt, sched = build_optimizer(model, args, steps_per_epoch * args.epochs)
    history, start_epoch, wall_before = [], 0, 0.0
    sample_losses = []  # per epoch, each training sample's loss on its observed label (for plots)
    if ckpt is not None:
        model.load_state_dict(ckpt["trainable"], strict=False)
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["torch_rng"])
        router.load_state_dict(ckpt["router"])
        history, start_epoch, wall_before = ckpt["history"], ckpt["epoch"] + 1, ckpt["wall_s"]
        sample_losses = ckpt["sample_losses"]
        log(f"resumed from {args.out} after epoch {start_epoch}")
    if main_rank:
        with open(os.path.join(args.out, "metrics.jsonl"), "w") as f:  # rewritten from the checkpoint's history
            f.writelines(json.dumps(m) + "\n" for m in history)
    # under torchrun, DistributedDataParallel averages the gradients of the ranks' batches
    forward = model if world == 1 else torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)

    train_seen, train_time = 0, 0.0
    for epoch in range(start_epoch, args.epochs):
        model.train()
        t0, losses, aux_sums = time.time(), [], {}
        batches = data.iterate_batches(train_ids, observed, true, args.batch_size, args.seed, epoch, shuffle=True,
                                       pad_to=pad_to, share=share)
        if world > 1:  # each rank its own dropout / gate draws
            torch.manual_seed(args.seed * 100_003 + epoch * 1_009 + rank)
        bar = tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{args.epochs}",
                   leave=False, disable=args.no_progress or not main_rank)
        for batch in bar:
            batch = data.Batch(*(t.to(device) for t in batch))
            with autocast():
                logits = forward(batch.input_ids, batch.attention_mask, gates=router.gates(batch))
            aux = router.aux_loss(logits, batch)  # the method's extra losses, returned explicitly
            loss = F.cross_entropy(logits.float(), batch.label) + sum(aux.values())
            for k, v in aux.items():
                aux_sums[k] = aux_sums.get(k, 0.0) + v.item()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if args.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], args.grad_clip)
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        train_pass_s = time.time() - t0
        train_time += train_pass_s
        train_seen += len(train_ids)

        test_pred = predict(model, test_ids, args.eval_batch_size, device, autocast, router, pad_to,
                            rank, world).argmax(1)
        # one pass over the training set serves both the memorisation metrics and CleaR's loss GMM
        train_logits = predict(model, train_ids, args.eval_batch_size, device, autocast, router, pad_to,
                               rank, world)
        m = {"epoch": epoch + 1, "train_loss": dist.mean(np.mean(losses), device),
             **{f"train_{k}": dist.mean(v / len(losses), device) for k, v in aux_sums.items()},
             "test_acc": float((test_pred == ds.test.labels).mean()),
             **memorisation(train_logits.argmax(1), observed, true),
             **router.after_epoch(epoch, train_logits, observed, true),
             "lr": sched.get_last_lr()[0], "train_pass_s": train_pass_s, "epoch_s": time.time() - t0}
        history.append(m)
        sample_losses.append(F.cross_entropy(torch.from_numpy(train_logits), torch.from_numpy(observed),
                                             reduction="none").numpy())
        mem = "" if m["noisy_memorized"] is None else f", noisy memorised {m['noisy_memorized']:.3f}"
        log(f"epoch {epoch + 1}: train loss {m['train_loss']:.4f}, test acc {m['test_acc']:.4f}, "
            f"train clean acc {m['train_clean_acc']:.4f}{mem}")
        if not main_rank:
            continue
        with open(os.path.join(args.out, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(m) + "\n")
        save_checkpoint(os.path.join(args.out, "checkpoint.pt"), {
            "config": vars(args), "epoch": epoch, "trainable": trainable_state(model),
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "torch_rng": torch.get_rng_state(), "router": router.state_dict(), "history": history, "sample_losses": sample_losses,
            "wall_s": wall_before + time.time() - t_start})

    dist.barrier()  # every rank has finished before rank 0 writes the results
    if not main_rank:
        return None
    peft.save_peft(model, args.out, extra={"class_names": ds.class_names})
    np.savez_compressed(os.path.join(args.out, "per_sample.npz"), loss=np.stack(sample_losses),
                        observed=observed, true=true)
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:  # ru_maxrss is in KiB on Linux
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    accs = [m["test_acc"] for m in history]
    summary = {
        "best_test_acc": max(accs), "best_epoch": int(np.argmax(accs)) + 1, "last_test_acc": accs[-1],
        "noisy_memorized": history[-1]["noisy_memorized"], "train_clean_acc": history[-1]["train_clean_acc"],
        "realized_noise_rate": report["realized_rate"], "num_train": len(true), "num_test": len(test_ids),
        "num_classes": K, "trainable_params": trainable, "total_params": total,
        "wall_s": wall_before + time.time() - t_start,
        "samples_per_s": train_seen / train_time if train_time else None,
        "peak_mem_mb": peak_mb, "device": device.type, "ranks": world,
        **({"gmm_auroc": history[-1]["gmm_auroc"]} if "gmm_auroc" in history[-1] else {}),
        "config": vars(args),
    }
    write_json(os.path.join(args.out, "summary.json"), summary)
    print(f"done: best test acc {summary['best_test_acc']:.4f} (epoch {summary['best_epoch']}), "
          f"last {summary['last_test_acc']:.4f}; results in {args.out}")
    return summary


EXPECTED_ERRORS = (ModelLoadError, data.DataError, dist.DistError, noise.NoiseError, peft.PeftError, routing.RoutingError, RunError)


def main(argv=None):
    args = parse_args(argv)
    try:
        return evaluate_saved(args) if args.eval_only else run(args)
    except EXPECTED_ERRORS as e:  # bad input: one clear line, no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"\ninterrupted: continue with the same command plus --resume (checkpoint in {args.out})",
              file=sys.stderr)
        sys.exit(130)
    finally:
        dist.teardown()  # leaves the torchrun process group, if any


if __name__ == "__main__":
    main()
