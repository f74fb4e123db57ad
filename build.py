"""
The model and hooks a run trains, built from its settings (train.py's flags or a saved run's
config): the pretrained encoder and tokenizer (model.py), the classifier, the method's PEFT kind
injected with everything else frozen (peft/), the method's own changes (methods/), the speed
paths (speedups.py) unless --no_speedups; and the method's hooks (hooks.Hooks).

Usage:
    model, tokenizer = build_model(args, num_classes)
    hooks = build_hooks(args, model, num_train)
"""

import methods
import peft
import speedups
from config import RunError
from model import Classifier, load_pretrained


def build_model(args, num_classes):
    """Pretrained encoder (+ tokenizer) -> classifier -> the method's PEFT kind injected, everything
    else frozen -> the method's own changes -> the speed paths (speedups.py) unless --no_speedups."""
    method = methods.get(args.method)
    encoder, tokenizer = load_pretrained(args.model)
    if args.max_len > encoder.config.max_position_embeddings:
        raise RunError(f"--max_len {args.max_len} exceeds the model's {encoder.config.max_position_embeddings} "
                       "positions (max_position_embeddings in its config.json)")
    model = Classifier(encoder, num_classes, dropout=args.dropout)
    peft.inject(model, peft.kind_config(method.kind_name(args), vars(args)))
    method.build(model, args)
    if not args.no_speedups:
        speedups.enable(model, cls_only=not method.reads_all_tokens)
    return model, tokenizer


def build_hooks(args, model, num_train):
    return methods.get(args.method).hooks(model, args, num_train)
