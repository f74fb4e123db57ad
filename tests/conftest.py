"""Shared fixtures: a tiny random BERT directory and a tiny learnable text dataset."""

import json
import os
import random
import shutil
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
from model import BertConfig, Classifier, Encoder, default_model_dir, save_encoder_weights

# the packaged tokenizer's 30,522-id vocabulary, in a model small enough to train in seconds
TINY_CONFIG = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64)


def tiny_classifier(num_classes, seed=0):
    """A tiny random 'pretrained' classifier in eval mode; the same seed gives the same weights."""
    torch.manual_seed(seed)
    return Classifier(Encoder(TINY_CONFIG), num_classes).eval()


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny tensors: fanning each op out to several threads costs more than it saves
    (and a lot when the cores are busy), so the tests run single-threaded."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True, scope="session")
def fp32_by_default():
    """Parity and equivalence are asked of fp32: --precision auto means fp32 in the tests (in this
    process; a train.py subprocess picks as a user's run does). bf16 runs are tested by name."""
    import hardware
    before, hardware.CPU_AUTO_PRECISION = hardware.CPU_AUTO_PRECISION, "fp32"
    yield
    hardware.CPU_AUTO_PRECISION = before


def make_model_dir(path, cfg=TINY_CONFIG, seed=0, encoder=None):
    """Write config.json, model.safetensors (Hugging Face names) and tokenizer.json."""
    torch.manual_seed(seed)
    os.makedirs(path, exist_ok=True)
    save_encoder_weights(encoder or Encoder(cfg), os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({**vars(cfg), "model_type": "bert"}, f)
    shutil.copy(os.path.join(default_model_dir(), "tokenizer.json"), path)
    return str(path)


POSITIVE = ["great", "wonderful", "superb", "moving", "brilliant", "delightful"]
NEGATIVE = ["awful", "boring", "dull", "terrible", "clumsy", "tedious"]
FILLER = ["the", "film", "plot", "cast", "was", "quite", "and", "a", "story", "ending"]


def make_text_dataset(path, n=240, seed=0):
    """A csv where the label is carried by one sentiment word among filler words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = rng.choices(FILLER, k=rng.randint(3, 12))
        words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if label else NEGATIVE))
        rows.append((" ".join(words), "pos" if label else "neg"))
    with open(path, "w") as f:
        f.write("text,label\n")
        f.writelines(f"{t},{y}\n" for t, y in rows)
    return str(path)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    return make_text_dataset(tmp_path_factory.mktemp("data") / "toy.csv")


@pytest.fixture(scope="session")
def tiny_pretrained_dir(tiny_model_dir, tiny_dataset, tmp_path_factory):
    """The tiny model after full fine-tuning on the clean toy task: an encoder whose [CLS]
    state already carries the keyword, standing in for a pretrained one where a test needs
    a frozen encoder that PEFT can build on (a random frozen encoder gives PEFT nothing)."""
    import train
    from safetensors.torch import load_file
    out = tmp_path_factory.mktemp("pretraining")
    train.main(["--model", tiny_model_dir, "--dataset", tiny_dataset, "--out", str(out / "run"), "--method", "full",
                "--noise", "none", "--lr", "1e-2", "--warmup_ratio", "0", "--batch_size", "16", "--epochs", "3",
                "--max_len", "64", "--no_progress", "--keep", "last"])  # the fully trained encoder
    state = load_file(out / "run" / "peft.safetensors")
    encoder = Encoder(TINY_CONFIG)
    encoder.load_state_dict({k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")})
    return make_model_dir(out / "model", encoder=encoder)
