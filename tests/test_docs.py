"""The Usage blocks of the modules run as written, so what they show is what the code does: the
doctests as doctests, the others executed line by line on a tiny model and batch."""

import argparse
from contextlib import nullcontext
import ast
import doctest
import importlib
import os
import re
import textwrap

import numpy as np
import pytest
import torch

from conftest import tiny_classifier
from batching import Batch

DOCTESTED = ["registry", "settings", "noise", "label_issues", "calibration", "config"]  # modules whose Usage block is a doctest
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


REAL = ["build", "hardware", "model", "speedups", "checkpoint", "noisy_split", "saved_run", "export", "peft", "data"]


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tiny_dataset, tmp_path_factory):
    """A finished LoRA run of the tiny model on the toy csv (what load_run reads)."""
    import train
    out = tmp_path_factory.mktemp("usage") / "run"
    train.main(["--model", str(tiny_model_dir), "--dataset", str(tiny_dataset), "--method", "lora", "--epochs", "1",
                "--max_len", "32", "--batch_size", "16", "--no_progress", "--out", str(out)])
    return out


def real_namespace(tmp_path, model_dir, run_dir):
    """namespace() plus what the other Usage blocks name: the packaged or tiny encoder, a dataset, a
    finished run, output folders - every file written under tmp_path, the working directory."""
    import build
    import checkpoint
    import config
    import data
    import export
    import peft
    import speedups
    from conftest import make_text_dataset
    from hardware import pick_device
    from mixture import LossDetector
    from model import Classifier, load_pretrained
    from noisy_split import make_noisy_split
    from saved_run import load_run
    ns = namespace()
    encoder, tokenizer = load_pretrained(model_dir)
    make_text_dataset(tmp_path / "my_reviews.csv", n=60)
    args = config.parse_args(["--method", "lora", "--dataset", str(tmp_path / "my_reviews.csv"), "--model", model_dir,
                              "--max_len", "16", "--out", str(tmp_path / "out")])
    peft.inject(ns["model"], peft.LoRA(lora_r=2))  # a run's model: a PEFT kind injected
    fresh = copy_of(ns["model"])
    stage = argparse.Namespace(opt=None, sched=None)
    stage.opt, stage.sched = ns["build_optimizer"](ns["model"], 1e-3, 0.01, 0.1, total_steps=10)
    ns.update(dict(args=args, encoder=encoder, tokenizer=tokenizer, num_classes=3, device=torch.device("cpu"),
                   ds=data.load_data(args.dataset), load_data=data.load_data, make_noisy_split=make_noisy_split,
                   build_model=build.build_model, build_hooks=build.build_hooks, pick_device=pick_device,
                   load_pretrained=load_pretrained, speedups=speedups, Classifier=Classifier, inject=peft.inject,
                   LoRA=peft.LoRA, param_summary=peft.param_summary, save_peft=checkpoint.save_peft,
                   load_peft=checkpoint.load_peft, prepare_out_dir=checkpoint.prepare_out_dir,
                   save_training_state=checkpoint.save_training_state, names=["a", "b", "c"], fresh_model=fresh,
                   out=str(tmp_path / "state"), resume=False, overwrite=False, config={"method": "lora"},
                   progress=checkpoint.Progress(next_epoch=1), stage=stage, detector=LossDetector(),
                   load_run=load_run, run_dir=str(run_dir), export_hf=export.export_hf,
                   load_exported=export.load_exported, model_dir=model_dir, out_dir=str(tmp_path / "hf"),
                   class_names=["a", "b", "c"]))
    return ns


def copy_of(model):
    import copy
    return copy.deepcopy(model)


def python_lines(code):
    """The Python of a Usage block: its shell lines (python script.py ...) are checked by test_usage_commands."""
    return "\n".join(line for line in code.split("\n") if not line.lstrip().startswith("python "))


@pytest.mark.parametrize("name", REAL)
def test_usage_block_runs_on_real_objects(name, tmp_path, monkeypatch, tiny_model_dir, finished_run):
    code = python_lines(usage_block(importlib.import_module(name)))
    assert code.strip(), f"{name} has no Python in its Usage block"
    monkeypatch.chdir(tmp_path)
    ns = real_namespace(tmp_path, str(tiny_model_dir), finished_run)
    if name == "build":  # its block builds the packaged MiniLM from the default settings
        ns["args"] = __import__("config").parse_args(["--method", "lora"])
    exec(compile(code, f"{name}.py Usage", "exec"), ns)


def shell_lines(path):
    """The `python script.py --flags` lines of a file's Usage block, [..] alternatives and comments dropped."""
    doc = ast.get_docstring(ast.parse(open(path).read())) or ""
    if "Usage" not in doc:
        return []
    lines = [re.sub(r"\[[^\]]*\]|#.*", "", line).strip() for line in doc[doc.index("Usage"):].split("\n")]
    return [line.split()[1:] for line in lines if re.match(r"^python [\w/]+\.py", line)]


def doc_commands(path):
    """The `python script.py ...` lines of a Markdown file's code blocks (a `$ ` prompt and backslash
    continuations allowed, `# comments` and [..] alternatives dropped), as argv lists."""
    out, block = [], None
    for line in open(path).read().replace("\\\n", " ").split("\n"):
        if line.startswith("```"):
            block = None if block is not None else []
            continue
        if block is None:
            continue
        line = re.sub(r"\[[^\]]*\]|\s#.*", "", line).strip()
        line = re.sub(r"^\$ ", "", line)
        line = re.sub(r"^(OMP_NUM_THREADS=\S+ )?(torchrun .*?)?(?=python |train\.py)", "", line)
        if re.match(r"^python [\w/]+\.py", line):
            out.append(line.split()[1:])
        elif re.match(r"^train\.py", line):  # torchrun --nproc_per_node 2 train.py ...
            out.append(line.split())
    return out


def test_usage_commands_use_existing_flags():
    """Every command a Usage block, the README, RESULTS.md or docs/ shows names a script that exists and
    flags its parser knows (and, where --help lists choices, a value among them)."""
    import glob
    import subprocess
    import sys
    helps, checked = {}, 0
    docs = ["README.md", "RESULTS.md"] + sorted(glob.glob("docs/*.md"))
    code = sorted(glob.glob("*.py") + glob.glob("peft/*.py") + glob.glob("methods/*.py") + glob.glob("tools/*.py"))
    for path in code + docs:
        for script, *argv in (doc_commands(path) if path.endswith(".md") else shell_lines(path)):
            argv = [a for a in argv if a not in ("|", ">")]
            assert os.path.isfile(script), f"{path}: Usage runs {script}, which does not exist"
            checked += 1
            if script not in helps:
                helps[script] = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True,
                                               timeout=120).stdout
            for flag, value in zip(argv, argv[1:] + [""]):
                if not flag.startswith("--"):
                    continue
                assert flag in helps[script], f"{path}: Usage passes {flag} to {script}, whose --help lacks it"
                choices = re.search(re.escape(flag) + r" \{([^}]*)\}", helps[script])
                if choices and not value.startswith("--") and "$" not in value:
                    assert value in choices.group(1).split(","), f"{path}: {flag} {value} is not a choice of {script}"
    assert checked >= 60  # the Usage blocks' and the Markdown files' commands were all found  # the tools' Usage blocks were found


def test_one_source_for_what_folds():
    """Which kinds export is written once (export.what_folds): --help of train.py and predict.py and the
    README say exactly that, and every kind it names really folds."""
    import subprocess
    import sys
    import export
    import peft
    from conftest import tiny_classifier
    from hooks import Hooks
    said = export.what_folds()
    squeeze = lambda text: "".join(text.split())  # noqa: E731  (--help wraps lines, at hyphens too)
    assert squeeze(said) in squeeze(open("README.md").read())
    for script in ("train.py", "predict.py"):
        out = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=120).stdout
        assert squeeze(said) in squeeze(out), script
    for name in export.foldable_kinds():
        model = tiny_classifier(2)
        kind = peft.KINDS[name]
        peft.inject(model, kind())
        export.fold_model(model, Hooks())  # raises ExportError where it cannot
    for name in set(peft.KINDS) - set(export.foldable_kinds()):
        model = tiny_classifier(2)
        peft.inject(model, peft.KINDS[name]())
        with pytest.raises(export.ExportError):
            export.fold_model(model, Hooks())


def troubles():
    """(command argv after 'python train.py', the error line) of every block in docs/troubleshooting.md."""
    text = open("docs/troubleshooting.md").read()
    found = re.findall(r"^\$ python train\.py ?(.*)\n(error: .*)$", text, flags=re.M)
    return [(cmd.split(), line) for cmd, line in found]


@pytest.mark.parametrize("argv,line", troubles())
def test_troubleshooting_prints_what_it_says(argv, line, tmp_path, monkeypatch, capsys):
    """Each error of docs/troubleshooting.md, produced by its command in a folder set up as the text says."""
    import model
    import train
    from conftest import make_text_dataset
    monkeypatch.chdir(tmp_path)
    make_text_dataset(tmp_path / "reviews.csv", n=40)
    (tmp_path / "my_reviews.csv").write_text("review,sentiment\na fine film,pos\n")
    os.makedirs("runs/mine")
    (tmp_path / "runs/mine/summary.json").write_text("{}")
    if argv == []:  # the packaged model missing
        monkeypatch.setattr(model, "MODEL_PACKAGE", "no_such_model_package")
    if "--device" in argv and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit) as stop:
        train.main(argv + ["--no_progress"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == line
    assert not os.path.exists("exported")  # nothing written


def test_troubleshooting_covers_five_errors():
    assert len(troubles()) >= 5


def readme_block_after(heading):
    """The first ```bash block after a README heading, as argv lists (shell quotes respected)."""
    import shlex
    text = open("README.md").read()
    block = text[text.index(heading):].split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(re.sub(r"\s#.*", "", line)) for line in block.strip().split("\n")]


def test_your_own_data_walkthrough_runs_as_written(tmp_path, monkeypatch, tiny_model_dir, capsys):
    """A newcomer with a CSV of their own, the README's "Your own data" commands alone (the tiny model and
    one short epoch for speed): a trained run, label_issues.csv over every row of the file, predictions of
    new texts, and a Hugging Face export."""
    import csv
    import predict
    import train
    from conftest import make_text_dataset
    commands = readme_block_after("## Your own data")
    monkeypatch.chdir(tmp_path)
    make_text_dataset(tmp_path / "reviews.csv", n=60)
    (tmp_path / "new.csv").write_text("text\ngood good film\na bad one\n")
    assert [c[:2] for c in commands] == [["python", "train.py"], ["python", "predict.py"], ["python", "predict.py"],
                                         ["python", "train.py"]]
    fast = ["--model", str(tiny_model_dir), "--epochs", "1", "--max_len", "32", "--no_progress"]
    for _, script, *argv in commands:
        if script == "train.py":
            train.main(argv + (fast if "--eval_only" not in argv else []))
        else:
            predict.main(argv)
    log = capsys.readouterr().out
    assert "noise: none - training on the labels as given" in log
    assert "train acc (labels as given)" in log and "train clean acc" not in log  # no truth to call clean
    rows = list(csv.DictReader(open("runs/mine/label_issues.csv")))
    assert len(rows) == 60 and {r["split"] for r in rows} == {"train", "validation", "test"}
    assert len(list(csv.DictReader(open("predictions.csv")))) == 2
    assert os.path.isfile("runs/mine-hf/config.json") and os.path.isfile("runs/mine-hf/model.safetensors")


def test_readme_troubleshooting_lines_are_the_checked_ones():
    """The README's troubleshooting bullets quote lines docs/troubleshooting.md's test produces."""
    said = re.findall(r"^- `(error: [^`]*)`", open("README.md").read(), flags=re.M)
    assert len(said) >= 5 and set(said) <= {line for _, line in troubles()}


def test_readme_fits_a_few_screens_with_a_picture_early():
    lines = open("README.md").read().split("\n")
    assert len(lines) <= 201  # 200 lines and the final newline
    assert any(".png)" in line for line in lines[:40])


# numbers in the README's prose that are settings or citations, not results
README_SETTINGS = {"1000", "2000", "20", "40", "64"}
NUMBER = re.compile(r"(?<![\w.])[-+]?\d[\d,]*(?:\.\d+)?(?![\w])")


def test_every_figure_in_the_readme_prose_is_a_generated_one():
    """A number written into the README's prose (not a marked block, code or the Methods table's paper
    years) must appear in some generated block of README.md, RESULTS.md or docs/speed.md, or be a grid's
    cell count - so a regenerated grid that moves a figure fails here until the prose follows."""
    import blocks
    import grids
    generated = set()
    for doc in ("README.md", "RESULTS.md", os.path.join("docs", "speed.md")):
        bodies = blocks.marked_blocks(open(doc).read()).values()
        generated |= {n.lstrip("+-").replace(",", "") for body in bodies for n in NUMBER.findall(body)}
    generated |= {str(len(grids.GRIDS[name])) for name in ("methods", "accuracy")}
    prose = blocks.MARKED_BLOCK.sub("", open("README.md").read())
    prose = re.sub(r"```.*?```", "", prose, flags=re.S)
    lines = [line for line in prose.splitlines() if " et al." not in line and "Kim, Kim, Lee" not in line]
    stray = [(n, line[:60]) for line in lines for n in NUMBER.findall(line)
             if n.lstrip("+-").replace(",", "") not in generated | README_SETTINGS]
    assert stray == []
