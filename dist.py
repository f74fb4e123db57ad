"""
Data parallelism with PyTorch's own engine: `torchrun --nproc_per_node=N train.py ...`.

torchrun starts N copies of train.py and sets RANK / WORLD_SIZE / LOCAL_RANK; this file holds
the few collective steps train.py needs, so a single-process run never touches
torch.distributed. How the work is split:

* training: every rank builds the same length-bucketed batch list for the epoch (same seed)
  and takes a disjoint share, batches rank, rank + N, ... (the last len % N batches of an
  epoch are skipped so every rank takes the same number of steps); DistributedDataParallel
  averages the gradients, so one optimizer step sees N batches;
* evaluation passes (test set, and the per-epoch training-set pass that feeds memorisation
  metrics and CleaR's loss mixture): each rank predicts a share of the batches and
  `gather_rows` sums the zero-filled (N_examples, K) arrays, so every rank holds every
  example's logits, checked to be covered exactly once;
* per-batch method terms stay per rank: LoRAMoE's balance loss and Match-Tuning's in-batch
  mix see only the rank's own batch;
* rank 0 alone writes logs, checkpoints and the summary.

Backend: NCCL with one GPU per rank when CUDA is available, else gloo on the CPU.
"""

import os

import numpy as np
import torch
import torch.distributed as dist


class DistError(ValueError):
    """A data-parallel setting that cannot work (e.g. fewer batches than ranks)."""


def setup(device_name):
    """(rank, world_size, device); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if world == 1:
        return 0, 1, None
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return dist.get_rank(), world, torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")


def teardown():
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier():
    if dist.is_initialized():
        dist.barrier()


def rank_seed(seed, epoch, rank):
    """The torch seed of one rank's epoch: distinct for every (seed, epoch, rank) of a run, so each rank
    draws its own dropout masks and gates (two primes spread the three numbers apart)."""
    return seed * 100_003 + epoch * 1_009 + rank


def shard(batches, rank, world):
    """This rank's disjoint share of a list of batches, the same count on every rank."""
    if world == 1:
        return batches
    if len(batches) < world:
        raise DistError(f"{len(batches)} batches cannot be shared by {world} ranks: use a smaller --batch_size")
    keep = len(batches) // world * world
    return batches[rank:keep:world]


def gather_rows(rows, filled, device):
    """Every rank's rows of an (N, K) array, summed into the whole array on every rank.

    rows: float32 (N, K), zero outside this rank's examples; filled: bool (N,) marking them.
    Raises if any example was computed by no rank or by more than one."""
    if not dist.is_initialized():
        return rows
    t = torch.from_numpy(np.concatenate([rows, filled[:, None].astype(np.float32)], axis=1)).to(device)
    dist.all_reduce(t)
    out = t.cpu().numpy()
    count = out[:, -1]
    if not np.all(count == 1):
        raise RuntimeError(f"gathered rows: {int((count == 0).sum())} examples missing, "
                           f"{int((count > 1).sum())} computed twice")
    return out[:, :-1]


def mean(value, device):
    """The average of a float over ranks (the value itself in a single process)."""
    if not dist.is_initialized():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / dist.get_world_size()
