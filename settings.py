"""
Settings that are also command-line flags. A PEFT kind (peft/) or a method (methods/) declares
its own settings as a dataclass whose fields are made with `setting`; train.py's parser gets one
--help group per dataclass (add_flags), and the method builds its config from the parsed flags.
An impossible value raises SettingError, which train.py prints as one line.

Usage:
    >>> import argparse
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class CoinConfig:
    ...     '''Coin-flip routing'''
    ...     coin_p: float = setting(0.5, "gate probability")
    >>> parser = argparse.ArgumentParser()
    >>> add_flags(parser, CoinConfig)
    >>> parser.parse_args(["--coin_p", "0.3"]).coin_p
    0.3
"""

from dataclasses import field, fields


class SettingError(ValueError):
    """An impossible setting of a method (base rate, temperature, expert count, ...): one clear line."""


def setting(default, help, choices=None):
    """A dataclass field that is also a train.py flag: `--<name>`, with this default and help.
    help and choices may be functions, asked when the parser is built - so a registry's
    entries (methods, noise models) registered after this module was read are offered too."""
    return field(default=default, metadata={"help": help, "choices": choices})


def add_flags(parser, cls):
    """An argparse group for a settings dataclass (a PEFT kind's or a method's): a flag per field."""
    if not fields(cls):
        return
    group = parser.add_argument_group(cls.__doc__.strip().splitlines()[0])
    for f in fields(cls):
        text, choices = (v() if callable(v) else v for v in (f.metadata["help"], f.metadata["choices"]))
        if f.type in (bool, "bool"):
            group.add_argument(f"--{f.name}", action="store_true", help=text)
        else:
            group.add_argument(f"--{f.name}", type=flag_type(f.type), default=f.default, choices=choices, help=text)


def flag_type(annotation):
    """The argparse type of a field annotated int, float, str or "X | None" (a flag whose default is None)."""
    if isinstance(annotation, str):
        annotation = {"int": int, "float": float, "str": str}.get(annotation.replace(" | None", ""), annotation)
    options = [a for a in getattr(annotation, "__args__", ()) if a is not type(None)]
    return options[0] if options else annotation
