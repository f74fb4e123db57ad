"""
Take a trained run out of this repository: fold its PEFT modules into plain BERT weights and
write the Hugging Face layout that `BertForSequenceClassification.from_pretrained(DIR)` reads:

    DIR/config.json       the encoder's config + architectures, id2label, label2id
    DIR/model.safetensors bert.* (BERT tensor names, model.hf_name_map), bert.pooler.*, classifier.*
    DIR/tokenizer.json    (and the tokenizer/special-token configs the source model has)

What folds (PeftKind.fold): full fine-tuning (nothing to do), LoRA (W0 + s B A; Hu et al. 2021,
Sec. 4.1), BitFit (b0 + delta), each also under CleaR with gates that are one constant at
evaluation (`--clear_eval expected`: the branch scaled by r; `all`: by 1) and Match-Tuning's
evaluation head (two linears compose into one). What cannot: adapters (a GELU bottleneck), prefix
tuning (extra key/value positions), LoRAMoE (an input-dependent router), CleaR with sampled gates
and Match-Tuning with --match_eval mix (a prediction that depends on random draws or on the batch).

The pooler. BertForSequenceClassification classifies tanh(W_p h_cls + b_p), our Classifier the
[CLS] state h_cls itself. The export sets W_p = eps I, b_p = 0 and divides the classifier by eps:
tanh(eps x) / eps = x - eps^2 x^3 / 3 + ..., so the Hugging Face logits match ours to ~eps^2 |x|^3
(eps = 2^-14; the README quotes the measured gap). eps is a power of two, so our loader
(load_exported) multiplies it back exactly: every weight equals the folded model's bit for bit.

Usage:
    export_hf(model, hooks, class_names, model_dir, out_dir)   # model_dir: the pretrained BERT folder
    model, tokenizer, class_names = load_exported(out_dir)
"""

import copy
import json
import os
import shutil

import torch
from torch import nn

import speedups
from model import BertConfig, Classifier, Encoder, ModelLoadError, hf_name_map, load_encoder_weights, \
    load_tokenizer, read_safetensors

def foldable_kinds():
    """The PEFT kinds whose modules fold into plain BERT weights (they define fold): the one source for
    train.py's and predict.py's --help, the README and the export itself."""
    import methods  # noqa: F401  (registers every kind: LoRAMoE's lives in loramoe.py)
    import peft
    return ["full" if c.trains_base else k for k, c in peft.KINDS.items() if c.fold is not peft.PeftKind.fold]


def what_folds():
    """One sentence of which runs export, for --help and the README (a test holds the README to it)."""
    import peft
    folds = foldable_kinds()
    cannot = [k for k in peft.KINDS if k not in folds]
    return (f"{', '.join(foldable_kinds())} fold into plain BERT weights (CleaR on them at its expected gates, "
            f"Match-Tuning's evaluation head too); {', '.join(cannot)} cannot")


POOLER_EPS = 2.0 ** -14  # the pooler's near-linear scale; a power of two, so x / eps * eps == x
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


class ExportError(ValueError):
    """A model that cannot be written as plain BERT, or an export folder that cannot be read."""


def fold_model(model, hooks):
    """A copy of `model` as a plain Classifier (encoder with no PEFT module, a linear head) that
    computes the same evaluation logits; ExportError says why not when it cannot."""
    cfg = getattr(model, "peft_config", None)
    gate = hooks.constant_eval_gate()
    if gate is None:
        raise ExportError("the evaluation gates are sampled per example (CleaR --clear_eval sample), so no "
                          "fixed weights reproduce the predictions; use --clear_eval expected or all")
    head = model.head if type(model.head) is nn.Linear else getattr(model.head, "as_linear", lambda: None)()
    if head is None:
        raise ExportError(f"the head ({type(model.head).__name__}) mixes the examples of a batch at evaluation, "
                          "which a per-example classifier cannot express")
    plain = copy.deepcopy(model)
    plain.head = copy.deepcopy(head)
    if cfg is not None:
        try:
            for layer in plain.encoder.layers:
                cfg.fold(layer, gate)
        except Exception as e:  # PeftError from a kind that does not fold
            raise ExportError(str(e)) from None
    plain.peft_config, plain.prefix = None, None
    leftover = set(plain.encoder.state_dict()) - set(hf_name_map(plain.encoder.config))
    if leftover:
        raise ExportError(f"after folding, tensors outside plain BERT remain, e.g. {sorted(leftover)[:3]}")
    return plain.eval()


def export_hf(model, hooks, class_names, model_dir, out_dir):
    """Write `model` (folded) in the Hugging Face BertForSequenceClassification layout; returns out_dir."""
    plain = fold_model(model, hooks)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    config.update({"architectures": ["BertForSequenceClassification"], "model_type": "bert",
                   "id2label": {str(k): name for k, name in enumerate(class_names)},
                   "label2id": {name: k for k, name in enumerate(class_names)},
                   "problem_type": "single_label_classification",
                   "noisy_peft_pooler_eps": POOLER_EPS})
    enc = {k: v.detach().float().cpu().contiguous() for k, v in plain.encoder.state_dict().items()}
    C = plain.encoder.config.hidden_size
    tensors = {f"bert.{hf}": enc[ours] for ours, hf in hf_name_map(plain.encoder.config).items()}
    tensors["bert.pooler.dense.weight"] = torch.eye(C) * POOLER_EPS
    tensors["bert.pooler.dense.bias"] = torch.zeros(C)
    tensors["classifier.weight"] = (plain.head.weight.detach().float().cpu() / POOLER_EPS).contiguous()
    tensors["classifier.bias"] = plain.head.bias.detach().float().cpu().contiguous()
    from safetensors.torch import save_file
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(model_dir, name)):
            shutil.copyfile(os.path.join(model_dir, name), os.path.join(out_dir, name))
    return out_dir


def load_exported(out_dir, fast=True):
    """(Classifier in eval mode, tokenizer, class names) from a folder export_hf wrote; fast: with the
    speed paths train.py uses (speedups.py)."""
    path = os.path.join(out_dir, "config.json")
    try:
        with open(path) as f:
            raw = json.load(f)
        class_names = [raw["id2label"][str(k)] for k in range(len(raw["id2label"]))]
        eps = float(raw["noisy_peft_pooler_eps"])
    except FileNotFoundError:
        raise ExportError(f"{path}: not found; is {out_dir} a folder written by --export_hf?") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ExportError(f"{path}: not a config written by --export_hf ({e!r})") from None
    encoder = Encoder(BertConfig.from_json(path))
    weights = os.path.join(out_dir, "model.safetensors")
    state = read_safetensors(weights)  # read once: the encoder, the pooler and the classifier
    load_encoder_weights(encoder, weights, state)
    C = encoder.config.hidden_size
    if not torch.equal(state.get("bert.pooler.dense.weight", torch.empty(0)), torch.eye(C) * eps):
        raise ModelLoadError(f"{weights}: the pooler is not the export's eps * identity; a trained pooler "
                             "(a BertForSequenceClassification fine-tuned elsewhere) is not supported")
    model = Classifier(encoder, len(class_names))
    with torch.no_grad():
        model.head.weight.copy_(state["classifier.weight"] * eps)
        model.head.bias.copy_(state["classifier.bias"])
    if fast:
        speedups.enable(model, cls_only=True)
    return model.eval(), load_tokenizer(out_dir), class_names
