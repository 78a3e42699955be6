"""Data parallelism under `torchrun`: the process group, each rank's shard of a split, the all-reduce of streaming
sums, the one rank that writes, and the check that every rank is doing the same work.

Why summing is enough. Everything a streaming analysis accumulates is a sum over samples: class sums and counts,
the within-class scatter and its projection on span(Σ_B), nearest-class-centre hits (PAPER.md, NC1-NC4) and the
per-layer Grams of the AGOP (PAPER.md, "AGOP and the NFA"). A sum over the N samples is the sum over the ranks of
the sums over each rank's shard. So every rank accumulates its own shard, `all_reduce_sum` adds the ranks' states
(torchmetrics' `dist_reduce_fx="sum"`), and afterwards every rank holds exactly what one process would hold (up to
the order of float64 additions). Metrics computed from the synchronised sums are the same on every rank; rank 0
alone writes them (`is_writer`). Sums keep their dtype across the reduce: float64 stays float64, counts int64.

Outside torchrun (no WORLD_SIZE, or WORLD_SIZE=1) this module does nothing: one process is a world of one, `shard`
is every sample, `all_reduce_sum` returns at once and `is_writer()` is true.

How a command uses it (`dnc analyze`: dnc_cli/analyze/command.py, network.py, deep_rfm.py):

    with process_group(acfg.distributed.timeout_s, device) as device:   # NCCL on GPUs, gloo on CPU
        require_agreement("the config and the runs", plain_config, runs)  # refuse before any work
        index = shard(len(x)); x, y = x[index], y[index]                  # this rank's samples
        ...accumulate...; sync_all(accumulators)                          # before each compute()
        require_agreement("the checkpoint", path)                         # ranks never mix checkpoints
        if is_writer(): save_table(...)                                   # rank 0 writes, atomically

Failures end every rank rather than leaving one waiting: a group that cannot form raises UsageError; ranks that
disagree raise `RanksDisagree`, and a collective that fails because a rank died, or timed out because one hangs,
`CollectiveFailed`: both are `GroupBroken`, which the command reports in one line (exit status 2).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import socket
import time

import torch
from torch import Tensor

from dnc_cli.errors import UsageError

# the environment torchrun gives every rank (and that a hand-started rank must have)
RENDEZVOUS_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# every rank deals the same permutation: the shards depend on N and the world size only
SHARD_SEED = 0


class GroupBroken(Exception):
    """The ranks cannot go on together. Not a UsageError, so that no command records it as one run's problem and
    goes on: every rank stops, and the command reports the message in one line."""


class CollectiveFailed(GroupBroken):
    """A collective did not complete on this rank: another rank died (its sockets closed) or hung past the timeout."""


class RanksDisagree(GroupBroken):
    """The ranks were about to do different work (other options, runs or checkpoints)."""


def world_size() -> int:
    """The number of ranks: 1 outside torchrun."""
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def rank() -> int:
    """This process's rank: 0 outside torchrun."""
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def is_writer() -> bool:
    """Whether this rank writes files: rank 0 alone (every rank holds the same synchronised results)."""
    return rank() == 0


def launched_as_ranks() -> bool:
    """Whether this process is one of several ranks (torchrun sets WORLD_SIZE; a world of one is no group)."""
    return int(os.environ.get("WORLD_SIZE", "1") or "1") > 1


# ---------------------------------------------------------------------------------------------------- the group
@contextlib.contextmanager
def process_group(timeout_s: float, device: torch.device):
    """Form the process group from torchrun's environment (env://) and yield this rank's device; tear it down after.

    The backend follows the device: NCCL for CUDA (each rank on GPU LOCAL_RANK), gloo on the CPU. `timeout_s` bounds
    the wait for the other ranks, when forming and in every collective. Outside torchrun it yields `device` as is."""
    if not launched_as_ranks():
        yield device
        return
    missing = [name for name in RENDEZVOUS_VARIABLES if not os.environ.get(name)]
    if missing:
        raise UsageError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set: start the ranks "
                         "with torchrun (or set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT for each)")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    backend = "nccl" if device.type == "cuda" else "gloo"
    address, port = os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]
    where = f"MASTER_ADDR={address} MASTER_PORT={port}"
    timeout = datetime.timedelta(seconds=timeout_s)
    try:
        if backend == "nccl":
            torch.cuda.set_device(device)  # fails for a LOCAL_RANK beyond this node's GPUs
        # checked in Python first: torch's own retries print C++ stack traces on stderr
        if os.environ["RANK"] != "0" or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            _wait_for_store(address, int(port), timeout_s)
        else:
            _check_local(address)
        torch.distributed.init_process_group(backend, init_method="env://", timeout=timeout,
                                             device_id=device if backend == "nccl" else None)
    except (RuntimeError, ValueError, OSError) as exc:
        raise UsageError(f"could not form the process group of WORLD_SIZE={os.environ['WORLD_SIZE']} ranks at "
                         f"{where} ({backend}, rank {os.environ['RANK']}): {_first_line(exc)}") from None
    try:
        yield device
        # no rank leaves before all are done: under torchrun the first rank to exit ends the others, perhaps while
        # rank 0 is still writing
        _collective(torch.distributed.barrier)
    finally:
        with contextlib.suppress(Exception):  # after a failed collective the group may not tear down cleanly
            torch.distributed.destroy_process_group()


def _wait_for_store(address: str, port: int, timeout_s: float) -> None:
    """Until rank 0's (or torchrun's) rendezvous store accepts a connection, or `timeout_s` has passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((address, port), timeout=min(5.0, timeout_s)).close()
            return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise OSError(f"nothing accepts connections there after {timeout_s:g} s ({exc})") from None
            time.sleep(0.5)


def _check_local(address: str) -> None:
    """Rank 0 hosts the rendezvous store at MASTER_ADDR: it must be an address of this machine."""
    for family, kind, _, _, socket_address in socket.getaddrinfo(address, None, type=socket.SOCK_STREAM):
        with socket.socket(family, kind) as probe:
            try:
                probe.bind((socket_address[0], 0))
                return
            except OSError:
                continue
    raise OSError(f"{address} is not an address of this machine, where rank 0 hosts the rendezvous")


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


# ---------------------------------------------------------------------------------------------------- sharding
def shard(num_samples: int) -> Tensor | slice:
    """The indices of this rank's samples of a split of `num_samples`: a permutation of range(N) seeded by
    SHARD_SEED, dealt round-robin (rank r takes positions r, r + P, r + 2P, ...), then sorted so a shard reads the
    data in its own order. Every sample is in exactly one shard and shard sizes differ by at most one (N need not be
    divisible by P). The permutation spreads each class over the shards whatever the data's order; a class may still
    be absent from a shard, which the sum of the ranks' counts handles. One process: every sample, as a slice."""
    size = world_size()
    if size == 1:
        return slice(None)
    if num_samples < size:
        raise UsageError(f"a split of {num_samples} samples cannot be shared by {size} ranks: start fewer ranks")
    return shard_indices(num_samples, rank(), size)


def shard_indices(num_samples: int, shard_rank: int, num_shards: int) -> Tensor:
    """`shard`'s indices for rank `shard_rank` of `num_shards`."""
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(SHARD_SEED))
    return order[shard_rank::num_shards].sort().values


# ---------------------------------------------------------------------------------------------------- collectives
def all_reduce_sum(tensors: list[Tensor]) -> None:
    """In place, every tensor becomes its sum over the ranks. One collective per dtype: the tensors of a dtype are
    flattened into one buffer (on the backend's device), reduced, and copied back. The shapes must be the same on
    every rank, which a deterministic analysis of the same model guarantees."""
    if world_size() == 1 or not tensors:
        return
    device = _collective_device()
    for dtype in dict.fromkeys(t.dtype for t in tensors):
        group = [t for t in tensors if t.dtype == dtype]
        buffer = torch.cat([t.reshape(-1).to(device) for t in group])
        _collective(torch.distributed.all_reduce, buffer)
        for tensor, part in zip(group, buffer.split([t.numel() for t in group])):
            tensor.copy_(part.view_as(tensor))


def sync_all(accumulators) -> None:
    """`sync()` of several streaming accumulators (dnc_cli/metrics) in one collective per dtype: each lists the
    tensors that are sums in `sum_states()`."""
    all_reduce_sum([tensor for accumulator in accumulators for tensor in accumulator.sum_states()])


def require_agreement(what: str, *values) -> None:
    """Raise RanksDisagree on every rank unless every rank passes equal `values` (JSON-able): a digest of them is
    gathered from all ranks and compared, so ranks that would do different work stop before doing it."""
    if world_size() == 1:
        return
    text = json.dumps(values, sort_keys=True, default=str)
    digest = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little", signed=True)
    device = _collective_device()
    gathered = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world_size())]
    _collective(torch.distributed.all_gather, gathered, torch.tensor([digest], dtype=torch.int64, device=device))
    digests = [int(g) for g in gathered]
    if len(set(digests)) > 1:
        differing = [r for r, d in enumerate(digests) if d != digests[0]]
        raise RanksDisagree(f"the ranks disagree on {what}: rank(s) {', '.join(map(str, differing))} differ from "
                            "rank 0 (start every rank with the same command on the same files)")


def _collective_device() -> torch.device:
    """Where a collective's tensors live: NCCL reduces on this rank's GPU, gloo on the CPU."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _collective(operation, *args) -> None:
    """Run a collective; a failure (gloo raises RuntimeError when a peer's sockets close, DistError on a timeout)
    becomes CollectiveFailed, naming this rank."""
    try:
        operation(*args)
    except RuntimeError as exc:
        raise CollectiveFailed(f"rank {rank()} of {world_size()}: a collective failed, so another rank died or hung "
                               f"({_first_line(exc)}); what was in progress was not written: rerun the same command "
                               "to finish") from None
