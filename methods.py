"""
The table of training methods: one entry per method declares everything that differs
between them, so train.py, bench.py, experiments.py and report.py never name a method.

A method is a PEFT kind to train (peft.py's registry: its flags, default learning rate,
injection, parameter and FLOP counts) plus training hooks (routing.Routing: gates, loss,
per-epoch refits and metrics). The plain methods - full, lora, adapter, prefix, bitfit,
and any kind registered later with `standalone = True` - train their kind with the
plain hooks; the entries below add CleaR, LoRAMoE and Match-Tuning.

An entry declares:
    name, summary       --method NAME and its one-line description (--help, README)
    settings            a dataclass of the method's own flags (fields made with peft.setting)
    peft                the PEFT kind it trains, or None: --peft chooses, among allows(kind)
    default_lr          None: the PEFT kind's
    reads_all_tokens    True: the top layer computes every token (no [CLS]-only speed path)
    finalize(args)      defaults that depend on other flags, checked before anything is built
    build(model, args)  changes to the model after the PEFT kind is injected
    hooks(model, args, num_train) -> routing.Routing
    lr_overrides(args)  {parameter-name prefix: peak learning rate} for parameters that want their own
    extra_params(bert)  parameters the method adds beyond its kind (closed form)
    label(cfg)          the name report.py prints for a run's config dict

A new method is one such class with @register (see tests/test_registry.py).

Usage:
    method = get(args.method); kind = method.kind(args)
    hooks = method.hooks(model, args, num_train)
"""

from dataclasses import fields

import clear
import loramoe
import match_tuning
import peft
import routing


class Method:
    """Plain training of one PEFT kind: its name is the kind's (the entry behind --method lora)."""
    settings = None
    peft = None
    default_lr = None
    reads_all_tokens = False

    def __init__(self, name=None):
        if name is not None:  # a plain method, named after its PEFT kind
            self.name = self.peft = name
            self.summary = peft.KINDS[name].__doc__.split("(")[0].strip()

    def allows(self, kind):
        """Whether --peft may choose this PEFT kind class (when self.peft is None)."""
        return kind.standalone

    def kind(self, args):
        """The name of the PEFT kind a run of this method trains ("none" = full fine-tuning)."""
        return self.peft or ("full" if args.peft == "none" else args.peft)

    def config(self, args):
        """This method's settings dataclass filled from the parsed flags (None if it has none)."""
        return None if self.settings is None else self.settings(**{f.name: getattr(args, f.name)
                                                                    for f in fields(self.settings)})

    def finalize(self, args):
        pass

    def build(self, model, args):
        pass

    def hooks(self, model, args, num_train):
        return routing.Routing()

    def lr_overrides(self, args):
        return {}

    def extra_params(self, bert):
        return 0

    def label(self, cfg):
        return cfg["method"]


METHODS = {}  # name -> Method instance, in registration order (after the plain ones)


def register(cls):
    """Class decorator: add a Method subclass (instantiated once) to METHODS."""
    plain = cls.name in peft.KINDS and peft.KINDS[cls.name].standalone  # --method NAME is taken by the kind
    if cls.name in METHODS or plain:
        raise ValueError(f"a method named {cls.name!r} already exists")
    METHODS[cls.name] = cls()
    return cls


def names():
    """Every --method choice: the plain methods of the standalone PEFT kinds, then the registered ones."""
    return [k for k, kind in peft.KINDS.items() if kind.standalone] + list(METHODS)


def get(name):
    if name in METHODS:
        return METHODS[name]
    if name in peft.KINDS and peft.KINDS[name].standalone:
        return Method(name)
    raise KeyError(f"unknown method {name!r}; choose from {', '.join(names())}")


def label(cfg):
    """The method of a saved run's config as a reader names it: 'lora', 'clear (adapter)', ..."""
    return get(cfg["method"]).label(cfg)


# ----------------------------------------------------------------------------
# The entries


@register
class Clear(Method):
    name, summary = "clear", "CleaR: each sample goes through the PEFT modules as often as it looks clean"
    settings = clear.ClearConfig

    def allows(self, kind):
        return kind.standalone and kind.clear_base_rate is not None

    def finalize(self, args):
        if args.base_rate is None:
            args.base_rate = peft.KINDS[self.kind(args)].clear_base_rate
        if args.clear_eval is None and not args.eval_only:
            args.clear_eval = "expected"

    def hooks(self, model, args, num_train):
        L = model.encoder.config.num_hidden_layers
        return clear.ClearRouting(num_train, L, self.config(args), warmup_epochs=args.warmup_epochs, model=model)

    def label(self, cfg):
        return f"clear ({cfg['peft']})"


@register
class LoRAMoE(Method):
    name, summary = "loramoe", "LoRAMoE: LoRA experts in the FFN, a router, localized balancing"
    settings = loramoe.LoRAMoEConfig
    peft = "loramoe"
    reads_all_tokens = True  # the balance loss counts every real token of every layer, the top one too

    def hooks(self, model, args, num_train):
        return loramoe.LoRAMoERouting(model, num_train, self.config(args), warmup_epochs=args.warmup_epochs)

    def label(self, cfg):
        return f"loramoe (types {cfg['moe_types']})"


@register
class Match(Method):
    name, summary = "match", "Match-Tuning: each [CLS] state mixed with the batch's before the head"
    settings = match_tuning.MatchConfig

    def allows(self, kind):
        return kind.standalone  # any PEFT kind, or --peft none (full fine-tuning)

    def build(self, model, args):
        cfg = self.config(args)
        match_tuning.replace_head_with_match(model, cfg.match_tau, eval_mix=cfg.match_eval == "mix")

    def hooks(self, model, args, num_train):
        return match_tuning.MatchRouting(model)

    def lr_overrides(self, args):
        return {} if args.match_lr is None else {"head.match_dense.": args.match_lr}

    def extra_params(self, bert):  # match_dense, hidden -> hidden
        return bert.hidden_size ** 2 + bert.hidden_size

    def label(self, cfg):
        return f"match ({cfg['peft']}, tau {cfg['match_tau']:g})"
