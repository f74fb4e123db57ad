"""
Every file a run writes and reads back, in formats that cannot execute code: safetensors
for tensors, JSON for everything else, each written to a temporary file and renamed, so a
killed run never leaves half a file.

- PEFT weights (`peft.safetensors` + `peft_config.json`): the PEFT tensors and the head,
  with the kind and its settings; loading onto a freshly loaded pretrained model
  reproduces the trained model's logits exactly (tests/test_peft.py).
- The training checkpoint (`checkpoint.safetensors`): model, optimizer and method-hook tensors,
  with the rest of the state (config, epoch, history, scheduler, RNG) as JSON in the
  file's metadata - one file, so it is replaced in one atomic rename. torch.load is never
  called: a pickle runs code on load, even a "weights only" one has had holes.

Usage:
    save_peft(model, "runs/x", extra={"class_names": names}); load_peft(fresh_model, "runs/x")
    ckpt = prepare_out_dir(out, resume, overwrite, config)   # None, or the state to resume from
    save_training_state(out, config, progress, model, stage, hooks, detector)   # progress: a Progress
"""

import json
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from peft import KINDS, is_peft_param, kind_config

WEIGHTS_NAME, CONFIG_NAME = "peft.safetensors", "peft_config.json"
CHECKPOINT_NAME = "checkpoint.safetensors"
RESUME_IGNORED = ("resume", "overwrite", "device", "no_progress", "eval_batch_size", "out")  # may change on --resume (a moved run folder resumes)


class CheckpointError(ValueError):
    """A file that cannot be read back: missing, corrupt, truncated, or not ours. Names the file."""


def _config_of(model):
    cfg = getattr(model, "peft_config", None)
    if cfg is None:
        raise CheckpointError("the model has no PEFT kind injected; call peft.inject(model, cfg) first")
    return cfg


def peft_state_dict(model):
    """The tensors a PEFT checkpoint holds: PEFT parameters + head (everything for full fine-tuning)."""
    state = model.state_dict()
    if _config_of(model).trains_base:
        return state
    return {k: v for k, v in state.items() if is_peft_param(k)}


def atomic_write(path, write):
    """write(tmp_path), then rename over `path`, so a crash never leaves a half-written file."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path, obj):
    """JSON, indented, written atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"

    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    atomic_write(path, write)


def save_peft(model, out_dir, extra=None):
    """Write out_dir/peft.safetensors and out_dir/peft_config.json (kind, settings, num_classes, extra)."""
    from safetensors.torch import save_file
    cfg = _config_of(model)
    meta = {"kind": cfg.name, **asdict(cfg), "num_classes": model.head.out_features}
    clash = sorted(set(extra or {}) & set(meta))
    if clash:
        raise CheckpointError(f"extra keys {clash} would overwrite PEFT config fields")
    meta.update(extra or {})
    try:
        json.dumps(meta)
    except TypeError as e:
        raise CheckpointError(f"extra is not JSON-serialisable ({e})") from None
    state = {k: v.detach().cpu().contiguous() for k, v in peft_state_dict(model).items()}
    os.makedirs(out_dir, exist_ok=True)
    atomic_write(os.path.join(out_dir, WEIGHTS_NAME), lambda tmp: save_file(state, tmp, metadata={"kind": cfg.name}))
    write_json(os.path.join(out_dir, CONFIG_NAME), meta)
    return out_dir


def read_peft_config(out_dir):
    """The dict saved in out_dir/peft_config.json (kind, its settings, num_classes, extras)."""
    path = os.path.join(out_dir, CONFIG_NAME)
    try:
        with open(path) as f:
            d = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found (not a PEFT checkpoint directory?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict) or d.get("kind") not in KINDS:
        raise CheckpointError(f"{path}: no valid 'kind' entry (registered kinds: {', '.join(KINDS)})")
    return d


def read_config(out_dir):
    """The PeftKind config a save_peft() directory was written with."""
    d = read_peft_config(out_dir)
    return kind_config(d["kind"], d)


def load_peft(model, out_dir):
    """Copy a save_peft() checkpoint into a model that has the same PEFT kind injected."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    cfg = _config_of(model)
    saved = read_peft_config(out_dir)
    cpath, wpath = os.path.join(out_dir, CONFIG_NAME), os.path.join(out_dir, WEIGHTS_NAME)
    if saved["kind"] != cfg.name:
        raise CheckpointError(f"{cpath}: saved with kind {saved['kind']!r}, but the model has {cfg.name!r} "
                        f"injected; inject the saved config (peft.read_config(dir)) first")
    diffs = [f"{k}={saved.get(k)!r} in the file but {getattr(cfg, k)!r} in the model"
             for k in cfg.must_match if saved.get(k) != getattr(cfg, k)]
    if saved.get("num_classes", model.head.out_features) != model.head.out_features:
        diffs.append(f"num_classes={saved['num_classes']} in the file but {model.head.out_features} in the model")
    if diffs:
        raise CheckpointError(f"{cpath}: settings differ: " + "; ".join(diffs))
    if any(getattr(m, "merged", False) for m in model.modules()):  # a PEFT module folded into its base weight
        raise CheckpointError("cannot load into a model whose PEFT weights are merged; unmerge them first "
                              "(peft.unmerge_lora(model))")
    if not os.path.isfile(wpath):
        raise CheckpointError(f"{wpath}: not found")
    try:
        state = load_file(wpath)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{wpath}: cannot read safetensors ({e})") from None
    ours = peft_state_dict(model)  # tensors sharing storage with the model's parameters
    for name, t in state.items():
        if name not in ours:
            raise CheckpointError(f"{wpath}: tensor {name} {tuple(t.shape)} is not a PEFT tensor of the model")
        if t.shape != ours[name].shape:
            raise CheckpointError(f"{wpath}: tensor {name} has shape {tuple(t.shape)} in the file "
                            f"but {tuple(ours[name].shape)} in the model")
    missing = [k for k in ours if k not in state]
    if missing:
        raise CheckpointError(f"{wpath}: {len(missing)} PEFT tensors of the model are missing, e.g. {missing[:3]}")
    with torch.no_grad():
        for name, t in state.items():
            ours[name].copy_(t)
    return model


# ----------------------------------------------------------------------------
# The training checkpoint: nested dicts/lists of tensors, arrays and JSON values

def _split(obj, tensors, path):
    """obj with every tensor (and numpy array) replaced by {"tensor": key}; the tensors go to `tensors`."""
    if isinstance(obj, np.ndarray):
        obj = torch.from_numpy(obj)
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous()
        return {"tensor": path}
    if isinstance(obj, dict):  # keys may be ints (optimizer state): keep them as [key, value] pairs
        return {"items": [[k, _split(v, tensors, f"{path}/{k}")] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"list": [_split(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]}
    return {"value": obj}


def _join(skeleton, tensors):
    """The inverse of _split."""
    if "tensor" in skeleton:
        return tensors[skeleton["tensor"]]
    if "items" in skeleton:
        return {k: _join(v, tensors) for k, v in skeleton["items"]}
    if "list" in skeleton:
        return [_join(v, tensors) for v in skeleton["list"]]
    return skeleton["value"]


def save_state(path, state):
    """Write a nested dict of tensors, arrays and JSON values as one safetensors file, atomically."""
    from safetensors.torch import save_file
    tensors = {}
    skeleton = json.dumps(_split(state, tensors, "state"))
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"noisy_peft_state": skeleton}))


def load_state(path):
    """Read a save_state() file back; CheckpointError naming the file if it is not one."""
    from safetensors import SafetensorError, safe_open
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: not found")
    try:
        with safe_open(path, framework="pt") as f:
            skeleton = (f.metadata() or {}).get("noisy_peft_state")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if skeleton is None:
            raise CheckpointError(f"{path}: a safetensors file, but not a checkpoint written by train.py")
        return _join(json.loads(skeleton), tensors)
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{path}: cannot read the checkpoint ({type(e).__name__}: {e}); "
                              "the file is corrupt, truncated or not ours") from None


# ----------------------------------------------------------------------------
# train.py's output directory


def prepare_out_dir(out, resume, overwrite, config, ignored=()):
    """The checkpoint state to resume from, or None for a fresh start; refuses to clobber a run. --resume
    needs the same settings, except RESUME_IGNORED, `ignored` (settings the run does not use) and settings
    the checkpoint does not know (added to the code since it was written: they take this command's value)."""
    path = os.path.join(out, CHECKPOINT_NAME)
    if resume:
        if not os.path.isfile(path):
            raise CheckpointError(f"--resume: no checkpoint at {path}")
        state = load_state(path)
        skip = set(RESUME_IGNORED) | set(ignored)
        old = {k: v for k, v in state["config"].items() if k not in skip}
        new = {k: v for k, v in config.items() if k not in skip and k in old}
        diff = {k: (old.get(k), new.get(k)) for k in set(old) | set(new) if old.get(k) != new.get(k)}
        if diff:
            raise CheckpointError(f"--resume: settings differ from the checkpoint's (old, new): {diff}")
        return state
    files = (CHECKPOINT_NAME, "summary.json", "metrics.jsonl")
    if any(os.path.exists(os.path.join(out, f)) for f in files[:2]) and not overwrite:
        raise CheckpointError(f"{out} already holds a run: pass --resume to continue it or --overwrite to start over")
    os.makedirs(out, exist_ok=True)
    for f in files:
        if os.path.exists(os.path.join(out, f)):
            os.remove(os.path.join(out, f))
    return None


@dataclass
class Progress:
    """Where a run stands: the metrics of its finished epochs, each epoch's per-sample losses, the
    next epoch to run and the wall seconds so far - what --resume restores beside the tensors."""
    history: list = field(default_factory=list)        # one metrics dict per finished epoch
    sample_losses: list = field(default_factory=list)  # one (N,) array per finished epoch
    next_epoch: int = 0
    wall_s: float = 0.0


def save_training_state(out, config, progress, model, stage, hooks, detector):
    """Everything --resume needs after progress.next_epoch - 1, in out/checkpoint.safetensors. stage:
    engine.Stages (its optimizer and schedule); hooks: the method's; detector: mixture.LossDetector."""
    save_state(os.path.join(out, CHECKPOINT_NAME), {
        "config": config, "epoch": progress.next_epoch - 1, "history": progress.history,
        "sample_losses": progress.sample_losses,
        "trainable": peft_state_dict(model),  # the PEFT tensors + head, frozen ones too (--clear_freeze)
        "optimizer": stage.opt.state_dict(), "scheduler": stage.sched.state_dict(),
        "torch_rng": torch.get_rng_state(), "hooks": hooks.state_dict(), "detector": detector.state_dict(),
        "wall_s": progress.wall_s})


def restore(state, model, hooks, detector):
    """The Progress of a checkpoint's run, its tensors loaded into model, hooks and detector; a fresh
    Progress for None. The optimizer follows with restore_optimizer, once the run has built the one of
    the resumed stage."""
    if state is None:
        return Progress()
    model.load_state_dict(state["trainable"], strict=False)
    torch.set_rng_state(state["torch_rng"])
    hooks.load_state_dict(state["hooks"])
    detector.load_state_dict({k: None if v is None else v.numpy() for k, v in state["detector"].items()})
    return Progress(state["history"], [t.numpy() for t in state["sample_losses"]], state["epoch"] + 1,
                    state["wall_s"])


def restore_optimizer(state, opt, sched):
    """AdamW's moments and the schedule's position from the checkpoint (nothing for a fresh start)."""
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
