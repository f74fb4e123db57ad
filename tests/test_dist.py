"""A 2-process torchrun job (gloo, CPU) on the tiny model: CleaR's per-sample losses are
gathered from both ranks, every training example exactly once, and one summary is written."""

import json
import os
import subprocess
import sys
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

import checkpoint
import batching
import data
import evaluation
import build
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_two_rank_clear_run_gathers_every_example_once(tiny_pretrained_dir, tiny_dataset, tmp_path):
    out = tmp_path / "run"
    argv = ["--method", "clear", "--model", tiny_pretrained_dir, "--dataset", tiny_dataset, "--out", str(out),
            "--noise", "sym", "--noise_rate", "0.3", "--epochs", "2", "--warmup_epochs", "1", "--batch_size", "16",
            "--lr", "1e-2", "--max_len", "64", "--val_fraction", "0", "--device", "cpu", "--no_progress",
            "--precision", "fp32"]  # an equivalence: fp32
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "train.py", *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("done: test acc") == 1  # rank 0 alone reports and writes
    summary = json.load(open(out / "summary.json"))
    assert summary["ranks"] == 2 and summary["det_auroc"] is not None
    assert len(open(out / "metrics.jsonl").readlines()) == 2

    # the saved last-epoch losses, gathered from two ranks, equal one process's losses for every example
    cfg = train.parse_args(argv)
    ds = data.load_data(cfg.dataset)
    model, tokenizer = build.build_model(cfg, len(ds.class_names))
    checkpoint.load_peft(model, str(out))
    hooks = build.build_hooks(cfg, model, len(ds.train.labels))
    ids = batching.encode(tokenizer, ds.train.texts, cfg.max_len)
    logits = evaluation.Evaluator(64, torch.device("cpu"), nullcontext, hooks).logits(model, ids)
    saved = np.load(out / "per_sample.npz")
    want = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(saved["observed"]), reduction="none").numpy()
    assert saved["loss"].shape == (2, len(ids))
    np.testing.assert_allclose(saved["loss"][-1], want, atol=1e-5)
