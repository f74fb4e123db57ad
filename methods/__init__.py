"""
The registry of training methods: one entry per method declares everything that differs
between them, so train.py, bench.py, experiments.py and report.py find every method here.

A method is a PEFT kind to train (peft/'s registry: its flags, default learning rate,
injection, parameter and FLOP counts) plus training hooks (Hooks: gates, the
training step's loss on the model outputs, per-epoch refits, stages, metrics). The plain
methods - full, lora, adapter, prefix, bitfit, and any kind registered later with
`standalone = True` - train their kind with the plain hooks. Every other method is one file
that registers itself with @register: the three seed methods at the top level (clear.py,
loramoe.py, match_tuning.py) and the noisy-label methods in this folder (gce.py, elr.py,
small_loss.py, filter_retrain.py, selfmix.py, practitioner.py). Importing this package
imports them all, so a new file in methods/ is a new --method for every entry point; a
method defined elsewhere (a test, a user's module) is found again by the module name a run
records (config["method_module"], see get()).

An entry declares:
    name, summary       --method NAME and its one-line description (--help, README)
    settings            a dataclass of the method's own flags (fields made with settings.setting)
    peft                the PEFT kind it trains, or None: --peft chooses, among can_sit_on(kind class)
    default_lr          None: the PEFT kind's
    reads_all_tokens    True: the top layer computes every token (no [CLS]-only speed path)
    reference           True: an oracle or a baseline outside fine-tuning, shown beside the methods
    reads_truth(cfg)    None, or the oracle's name where the hooks read the true labels (Hooks.read_truth)
    finalize(args)      defaults that depend on other flags, checked before anything is built
    build(model, args)  changes to the model after the PEFT kind is injected
    hooks(model, args, num_train) -> Hooks
    run(args)           None, or the method's own whole run instead of train.py's loop (practitioner.py)
    lr_overrides(args)  {parameter-name prefix: peak learning rate} for parameters that want their own
    extra_params(bert)  parameters the method adds beyond its kind (closed form)
    label(cfg)          the name report.py prints for a run's config dict

A new method is one such class with @register (see tests/test_registry.py).

Usage:
    method = get(args.method); kind = method.kind_name(args)
    hooks = method.hooks(model, args, num_train)
"""

import importlib
import os
import pkgutil
import sys
from dataclasses import fields

import peft
from registry import Registry
from hooks import Hooks


class Method:
    """Plain training of one PEFT kind: its name is the kind's (the entry behind --method lora)."""
    settings = None
    peft = None
    default_lr = None
    reads_all_tokens = False
    reference = False
    run = None  # or a function run(args) -> summary dict: the method's own run (no fine-tuning loop)

    def __init__(self, name=None):
        if name is not None:  # a plain method, named after its PEFT kind
            self.name = self.peft = name
            self.summary = peft.KINDS[name].__doc__.split("(")[0].strip()

    def can_sit_on(self, kind_class):
        """Whether --peft may choose this PEFT kind class (when self.peft is None)."""
        return kind_class.standalone

    def kind_name(self, args):
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
        return Hooks()

    def lr_overrides(self, args):
        return {}

    def extra_params(self, bert):
        return 0

    def label(self, cfg):
        return cfg["method"]

    def reads_truth(self, cfg):
        """None, or the name of the oracle this configuration (a config dict) is: its hooks read the true
        training labels by construction (Hooks.read_truth), so it is a reference, never a method."""
        return None


METHODS = Registry("method", make=lambda cls: cls())  # name -> Method instance, after the plain ones


def register(cls):
    """Class decorator: add a Method subclass (instantiated once) to METHODS, recording the module
    that defines it (a run's config keeps it, so a fresh process can find the entry again)."""
    if cls.name in peft.KINDS and peft.KINDS[cls.name].standalone:  # --method NAME is taken by the kind
        raise ValueError(f"a method named {cls.name!r} already exists")
    cls.module = cls.__module__
    if cls.module == "__main__":  # a script run directly (python coin.py ...): importable by its file name
        script = getattr(sys.modules["__main__"], "__file__", None) or ""
        cls.module = os.path.splitext(os.path.basename(script))[0] or None
    return METHODS.register()(cls)


def names():
    """Every --method choice: the plain methods of the standalone PEFT kinds, then the registered ones."""
    return [k for k, kind in peft.KINDS.items() if kind.standalone] + list(METHODS)


def get(name, module=None):
    """The entry behind --method NAME; `module` (a run's config["method_module"]): import it first
    if NAME is not registered yet - a method defined outside this package."""
    if name not in METHODS and module:
        try:
            importlib.import_module(module)
        except ImportError:
            pass  # reported as an unknown method below
    if name in METHODS:
        return METHODS[name]
    if name in peft.KINDS and peft.KINDS[name].standalone:
        return Method(name)
    raise KeyError(f"unknown method {name!r}; choose from {', '.join(names())}")


def module_of(name):
    """The module that defines method NAME (recorded in a run's config), or None for a plain method."""
    return getattr(METHODS[name], "module", None) if name in METHODS else None


def label(cfg):
    """The method of a saved run's config as a reader names it: 'lora', 'clear (adapter)', ...; a
    reference run that trains on true labels says so: 'lora [oracle: clean-subset]'."""
    method = get(cfg["method"], cfg.get("method_module"))
    oracle = cfg.get("oracle") or "none"
    oracle = method.reads_truth(cfg) or oracle
    return method.label(cfg) if oracle == "none" else f"{method.label(cfg)} [oracle: {oracle}]"


# The method files register themselves when imported: the seed methods, then every module of this package.
import clear  # noqa: E402,F401
import loramoe  # noqa: E402,F401
import match_tuning  # noqa: E402,F401

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")


