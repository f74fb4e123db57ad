"""
The training engine: one optimizer step, one epoch of steps, the optimizer with its
learning-rate schedule, and the stages a method's run goes through (Stages: a fresh model and
optimizer where the method starts one). train.py runs them; tools/bench_jobs.py times train_step itself,
so what is measured is what trains.

A step: the method's step_loss (Hooks: by default its gates -> forward under
autocast -> its loss on the model outputs, which returns its extra terms explicitly) ->
backward -> gradient clipping -> AdamW -> scheduler. A batch carries the observed labels
only (batching.Batch).

Usage:
    opt, sched = build_optimizer(model, lr=2e-3, weight_decay=0.01, warmup_ratio=0.1, total_steps=600)
    loss, extra = train_step(Step(model, hooks), batch, opt, sched, params=list(model.parameters()))
    stats = train_epoch(model, Step(model, hooks), stage, batches, torch.device("cpu"))  # stage: a Stages
"""

import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

import checkpoint
import dist


def lr_lambda(warmup_steps, total_steps, schedule="linear"):
    """linear: warm-up to the peak, then linear decay to zero (Devlin et al. 2019, Sec. A.2);
    constant: the peak from the first step to the last (the official CleaR code)."""
    def f(step):
        if schedule == "constant":
            return 1.0
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return f


def build_optimizer(model, lr, weight_decay, warmup_ratio, total_steps, lr_overrides=None, schedule="linear"):
    """AdamW over the trainable parameters (no decay on biases and LayerNorm gains), and its schedule.
    lr_overrides {name prefix: peak lr}: parameters whose names start with a prefix get that rate."""
    groups = {}  # (peak lr, weight decay) -> parameters
    for name, p in model.named_parameters():
        if p.requires_grad:
            own = [v for k, v in (lr_overrides or {}).items() if name.startswith(k)]
            key = (own[0] if own else lr, 0.0 if p.dim() < 2 else weight_decay)
            groups.setdefault(key, []).append(p)
    order = sorted(groups, key=lambda k: (k[0] != lr, k[1] == 0.0))  # the plain lr's decay group first
    groups = [{"params": groups[k], "lr": k[0], "weight_decay": k[1]} for k in order]
    try:  # one fused kernel for the whole update (torch >= 2.4; docs/speed.md)
        opt = torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, TypeError):
        opt = torch.optim.AdamW(groups, lr=lr)
    warmup = int(warmup_ratio * total_steps)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(warmup, total_steps, schedule))


@dataclass
class Step:
    """What every optimizer step needs beside its batch and optimizer. step_model: what the step calls
    (the model, wrapped in DistributedDataParallel under torchrun); hooks: the method's (hooks.Hooks)."""
    step_model: torch.nn.Module
    hooks: object
    grad_clip: float = 1.0  # max gradient norm over the trainable parameters (0 = off)
    autocast: object = nullcontext


def train_step(step, batch, opt, sched, params):
    """One optimizer step on one batch: the method's step_loss (hooks.Hooks: its gates, forward
    passes and loss on the model outputs) -> backward -> clipping -> AdamW -> scheduler.
    params: the trainable parameters (clipped together). Returns (loss, {extra term: value})."""
    loss, extra = step.hooks.step_loss(step.step_model, batch, step.autocast)
    extra = {k: v.item() for k, v in extra.items()}
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if step.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, step.grad_clip)
    opt.step()
    sched.step()
    return loss.item(), extra


LOSS_SHOWN_OVER = 20  # the progress bar shows the mean loss of the last this many steps


def train_epoch(model, step, stage, batches, device, bar=None):
    """train_step over every batch (model in train mode) with the stage's optimizer and schedule
    (Stages). bar: (title, number of batches) of a tqdm bar, or None for none. Returns
    {"train_loss", "train_<extra>"...: means over steps (and ranks), "train_pass_s": seconds}."""
    model.train()
    t0, losses, extra_sums = time.time(), [], {}
    params = [p for p in model.parameters() if p.requires_grad]
    title, total = bar or (None, None)
    progress = tqdm(batches, total=total, desc=title, leave=False, disable=bar is None)
    for batch in progress:
        batch = type(batch)(*(t.to(device) for t in batch))
        loss, extra = train_step(step, batch, stage.opt, stage.sched, params)
        for k, v in extra.items():
            extra_sums[k] = extra_sums.get(k, 0.0) + v
        losses.append(loss)
        progress.set_postfix(loss=f"{np.mean(losses[-LOSS_SHOWN_OVER:]):.3f}")
    return {"train_loss": dist.mean(np.mean(losses), device),
            **{f"train_{k}": dist.mean(v / len(losses), device) for k, v in extra_sums.items()},
            "train_pass_s": time.time() - t0}


class Stages:
    """The optimizer, schedule and training rows of the stage an epoch belongs to. A method's
    stage_starts() (Hooks) are epochs where a fresh model starts: the trainable weights
    go back to their initial values and the optimizer and schedule start again, over the rows and
    labels the method gives (epoch_data) - a warm-up detector, then a fresh model on the kept set.
    steps_of(rows) -> batches per epoch over those rows (None: all); optim: build_optimizer's settings."""

    def __init__(self, model, hooks, observed, steps_of, epochs, optim):
        self.model, self.hooks, self.observed, self.steps_of = model, hooks, observed, steps_of
        self.epochs, self.optim = epochs, optim
        self.initial = {k: v.detach().clone() for k, v in checkpoint.peft_state_dict(model).items()}
        self.starts = sorted(set(hooks.stage_starts()) | {0})
        self.start = self.opt = self.sched = None

    def enter(self, epoch, fresh):
        """Build the optimizer for the stage of `epoch` unless it is the current one (returns whether it
        did); fresh: a new stage begins (weights back to their initial values), not a resumed one."""
        start = max(s for s in self.starts if s <= epoch)
        if start == self.start:
            return False
        if fresh and start > 0:
            self.model.load_state_dict(self.initial, strict=False)
        end = min([s for s in self.starts if s > start] + [self.epochs])
        _, keep = self.hooks.epoch_data(epoch, self.observed)
        rows = None if keep is None else np.flatnonzero(keep)
        self.opt, self.sched = build_optimizer(self.model, total_steps=self.steps_of(rows) * (end - start),
                                               **self.optim)
        self.start = start
        return True
