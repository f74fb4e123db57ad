"""The Usage blocks of the modules run as written, so what they show is what the code does: the
doctests as doctests, the others executed line by line on a tiny model and batch."""

import argparse
from contextlib import nullcontext
import ast
import doctest
import importlib
import textwrap

import numpy as np
import pytest
import torch

from conftest import tiny_classifier
from batching import Batch

DOCTESTED = ["registry", "settings", "noise", "label_issues"]  # modules whose Usage block is a doctest
EXECUTED = ["hooks", "methods", "mixture", "clear", "loramoe", "match_tuning", "engine"]  # run on `namespace()`


def usage_block(module):
    """The indented code lines after 'Usage...:' in a module's docstring."""
    doc = ast.get_docstring(ast.parse(open(module.__file__).read()))
    lines = doc[doc.index("Usage"):].split("\n")[1:]
    code = []
    for line in lines:
        if line and not line.startswith("    "):
            break
        code.append(line)
    return textwrap.dedent("\n".join(code))


def namespace():
    """The names the Usage blocks use: a tiny model, a batch, parsed arguments, logits and labels."""
    import checkpoint
    import engine
    import methods
    import train
    from clear import ClearConfig, ClearHooks
    from loramoe import LoRAMoE, LoRAMoEConfig, LoRAMoEHooks
    from match_tuning import MatchConfig, MatchHooks, replace_head_with_match
    from mixture import LossDetector, detector_metrics
    import peft
    model, n, rng = tiny_classifier(3), 12, np.random.default_rng(0)
    ids = torch.randint(5, 100, (4, 6))
    mask = torch.ones_like(ids)
    batch = Batch(ids, mask, torch.arange(4), torch.tensor([0, 1, 2, 0]))
    args = train.parse_args(["--method", "lora"])
    stage = argparse.Namespace(opt=None, sched=None)
    stage.opt, stage.sched = engine.build_optimizer(model, 1e-3, 0.01, 0.1, total_steps=10)
    return dict(model=model, batch=batch, args=args, num_train=n, ids=ids, mask=mask, input_ids=ids,
                attention_mask=mask, autocast=nullcontext, num_layers=model.encoder.config.num_hidden_layers,
                train_logits=rng.normal(size=(n, 3)).astype(np.float32), observed=rng.integers(0, 3, n),
                true=rng.integers(0, 3, n), hooks=methods.get("lora").hooks(model, args, n), methods=methods,
                peft=peft, engine=engine, checkpoint=checkpoint, torch=torch, stage=stage, batches=[batch],
                ClearHooks=ClearHooks, ClearConfig=ClearConfig, LoRAMoE=LoRAMoE, LoRAMoEHooks=LoRAMoEHooks,
                LoRAMoEConfig=LoRAMoEConfig, MatchHooks=MatchHooks, MatchConfig=MatchConfig, replace_head_with_match=replace_head_with_match,
                LossDetector=LossDetector, detector_metrics=detector_metrics, get=methods.get,
                Step=engine.Step, train_step=engine.train_step, train_epoch=engine.train_epoch,
                build_optimizer=engine.build_optimizer)


@pytest.mark.parametrize("name", DOCTESTED)
def test_doctest_usage_block_runs(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("name", EXECUTED)
def test_usage_block_runs_on_a_tiny_model(name):
    code = usage_block(importlib.import_module(name))
    assert code.strip(), f"{name} has no Usage block"
    exec(compile(code, f"{name}.py Usage", "exec"), namespace())
