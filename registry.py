"""
The one registry shape of the project: a name -> entry table filled by a decorator, whose
entries describe themselves. Noise models (noise.py), datasets (data.py), label-issue scores
(label_issues.py), PEFT kinds (peft/), methods (methods/) and speed paths (speedups.py) are
each one Registry; a new entry of any of them is one decorated function or class in one file,
and its --help line comes from the entry (its `summary`, else the first line of its docstring).

Usage:
    >>> SHAPES = Registry("shape")
    >>> @SHAPES.register("square")
    ... def square(side):
    ...     '''a square: four equal sides'''
    ...     return side * side
    >>> SHAPES["square"](3), SHAPES.help()
    (9, 'square: a square: four equal sides')
    >>> SHAPES.get("circle")
    Traceback (most recent call last):
    ...
    KeyError: "unknown shape 'circle'; choose from square"
"""


class Registry(dict):
    """name -> entry, in registration order. what: the kind of entry, for messages; make: what
    register stores for a decorated object (default: the object itself)."""

    def __init__(self, what, make=None):
        super().__init__()
        self.what, self.make = what, make or (lambda obj: obj)

    def register(self, name=None):
        """Decorator: store the object under `name` (default: its `name` attribute); a name
        registered twice is an error. The object is returned unchanged."""
        def add(obj):
            key = name or getattr(obj, "name", None)
            if not key:
                raise ValueError(f"a {self.what} needs a name")
            if key in self:
                raise ValueError(f"a {self.what} named {key!r} already exists")
            self[key] = self.make(obj)
            return obj
        return add

    def copy(self):
        """A Registry with the same entries (a test registers into its copy, the original stays)."""
        twin = Registry(self.what, self.make)
        twin.update(self)
        return twin

    def get(self, name):
        """The entry behind `name`, or KeyError saying which names exist."""
        if name not in self:
            raise KeyError(f"unknown {self.what} {name!r}; choose from {', '.join(self)}")
        return self[name]

    def help(self, names=None):
        """'name: summary; ...' of these entries (default: all), for an argparse help text."""
        return "; ".join(f"{n}: {summary_of(self[n])}" for n in (self if names is None else names))


def summary_of(entry):
    """An entry's description: its `summary` attribute, else its docstring's first paragraph on one line."""
    text = getattr(entry, "summary", None) or (entry.__doc__ or "").strip().split("\n\n")[0]
    return " ".join(text.split()).rstrip(".")
