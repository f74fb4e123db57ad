"""Shared fixtures: a tiny random BERT directory and a tiny learnable text dataset."""

import json
import os
import random
import shutil

import pytest
import torch

from model import BertConfig, Encoder, default_model_dir, save_encoder_weights

# the packaged tokenizer's 30,522-id vocabulary, in a model small enough to train in seconds
TINY_CONFIG = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64)


def make_model_dir(path, cfg=TINY_CONFIG, seed=0):
    """Write config.json, model.safetensors (Hugging Face names) and tokenizer.json."""
    torch.manual_seed(seed)
    os.makedirs(path, exist_ok=True)
    save_encoder_weights(Encoder(cfg), os.path.join(path, "model.safetensors"))
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
