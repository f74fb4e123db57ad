"""Token ids and batches: tokenization, length-bucketed (or random) batching, padding.

A training epoch shuffles the rows, sorts them by length within chunks of BUCKET_BATCHES batches
and shuffles the batches again, so each batch holds similar lengths and little compute goes to
padding; `--batch_order random` feeds random batches as the reference codes do (CleaR, SelfMix,
Match-Tuning), `--pad_to_max_len` also pads each to --max_len. The true labels never enter a Batch.

Usage:
    ids = encode(tokenizer, texts, max_len=64)                          # N arrays of token ids
    for batch in iterate_batches(ids, observed, BatchPlan(batch_size=32, seed=0), epoch=0):
        batch.input_ids, batch.attention_mask, batch.index, batch.label  # (B, T), (B, T), (B,), (B,)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, NamedTuple

import numpy as np
import torch

from data import DataError

BATCH_ORDERS = ("bucketed", "random")  # --batch_order
BUCKET_BATCHES = 50  # a length bucket is this many batches of random rows, sorted by length


def encode(tokenizer, texts: list[str], max_len: int) -> list[np.ndarray]:
    """Token ids per text, each [CLS] ... [SEP] and at most max_len long."""
    if max_len < 2:
        raise DataError(f"max_len must be >= 2 to hold [CLS] and [SEP], got {max_len}")
    if tokenizer.padding is not None or tokenizer.truncation is not None:
        # Padding here would defeat length bucketing; we truncate ourselves below.
        raise DataError("call tokenizer.no_padding() and tokenizer.no_truncation() before encode()")
    out = []
    for enc in tokenizer.encode_batch(list(texts)):
        ids = enc.ids
        if len(ids) > max_len:
            ids = ids[: max_len - 1] + ids[-1:]  # keep the closing [SEP]
        out.append(np.asarray(ids, dtype=np.int64))
    return out


# --------------------------------------------------------------------- batching
def length_bucketed_batches(lengths, batch_size: int, seed: int, epoch: int,
                            shuffle: bool = True, bucket_factor: int = BUCKET_BATCHES) -> list[np.ndarray]:
    """Index batches grouping similar lengths, so little compute is spent on padding."""
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    lengths = np.asarray(lengths)
    if not shuffle:  # evaluation: one global sort, fully deterministic
        order = np.argsort(lengths, kind="stable")
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(len(lengths))
    # Sorting only within large random chunks keeps batches varied between epochs.
    chunk = bucket_factor * batch_size
    batches = []
    for start in range(0, len(perm), chunk):
        part = perm[start:start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]  # no long-to-short drift


def collate(token_ids: list[np.ndarray], index, pad_id: int = 0,
            pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad the selected sequences to the longest one (or to `pad_to`); mask is 1 on real tokens."""
    seqs = [token_ids[i] for i in index]
    width = max(max(len(s) for s in seqs), pad_to or 0)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for row, s in enumerate(seqs):
        ids[row, :len(s)] = s
        mask[row, :len(s)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


class Batch(NamedTuple):
    """What a training step sees. The true labels are not in it: only the per-epoch metrics
    (evaluation.py) receive them, so no method can peek."""
    input_ids: torch.Tensor       # (B, T) token ids, right-padded
    attention_mask: torch.Tensor  # (B, T) 1 = real token, 0 = padding
    index: torch.Tensor           # (B,) position of each example in the training split
    label: torch.Tensor           # (B,) observed, possibly noisy label


@dataclass(frozen=True)
class BatchPlan:
    """How an epoch's training rows become batches (train.py builds it from the flags)."""
    batch_size: int
    seed: int                 # with the epoch, the seed of the epoch's order
    order: str = "bucketed"   # one of BATCH_ORDERS
    pad_to: int | None = None  # pad every batch to this width, in random order (fixed-length pipelines)
    pad_id: int = 0


def iterate_batches(token_ids: list[np.ndarray], observed_labels, plan: BatchPlan, epoch: int,
                    rows=None, share=None) -> Iterator[Batch]:
    """Yield one epoch's shuffled Batches over the whole split, or over its `rows` (positions; a
    method's kept set) - a batch's index is always the position in the whole split. `share` picks
    this process's part of the epoch's index batches before any is collated (torchrun, see
    dist.shard); None = all of them."""
    observed = torch.as_tensor(np.asarray(observed_labels), dtype=torch.long)
    if len(token_ids) != len(observed):
        raise DataError("token_ids and observed_labels differ in length")
    if plan.order not in BATCH_ORDERS:
        raise DataError(f"unknown batch order {plan.order!r}; choose from {', '.join(BATCH_ORDERS)}")
    rows = np.arange(len(token_ids)) if rows is None else np.asarray(rows, dtype=np.int64)
    lengths = np.array([len(token_ids[i]) for i in rows])
    grouped = plan.order == "bucketed" and plan.pad_to is None
    bucket = BUCKET_BATCHES if grouped else 1  # 1: a chunk is one batch, so nothing is grouped by length
    batches = [rows[b] for b in length_bucketed_batches(lengths, plan.batch_size, plan.seed, epoch, True, bucket)]
    for idx in batches if share is None else share(batches):
        ids, mask = collate(token_ids, idx, plan.pad_id, plan.pad_to)
        idx_t = torch.from_numpy(np.asarray(idx, dtype=np.int64))
        yield Batch(ids, mask, idx_t, observed[idx_t])


def padding_fraction(token_ids: list[np.ndarray], batches: list[np.ndarray]) -> float:
    """Share of positions in the padded batches that are padding."""
    total = real = 0
    for idx in batches:
        lens = [len(token_ids[i]) for i in idx]
        total += max(lens) * len(lens)
        real += sum(lens)
    return (total - real) / total if total else 0.0
