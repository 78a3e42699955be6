"""What `measure` is given, checked and put in shape: the splits' data as re-iterable (x, y) batches, the labels,
the device and dtype, and the model, prepared for the measurement and afterwards left as it was found.

Every bad input raises UsageError with a one-line message (dnc_cli/errors.py).

Under torchrun (an initialised process group, dnc_cli/distributed.py) every rank is given the same data and measures
its part: an (x, y) pair of tensors is cut into the ranks' shards (`shard`: every sample in exactly one), a
re-iterable of batches (a DataLoader) is read by every rank, which measures the batches i with i % P == rank, so it
must have len() >= P batches. A caller that gives each rank its own part already says `sharded=True`.
"""

from __future__ import annotations

import collections.abc

import torch
from torch import nn

from dnc_cli.config import SPLITS, Precision
from dnc_cli.data import MIN_PER_CLASS
from dnc_cli.distributed import rank, shard, world_size
from dnc_cli.errors import UsageError, short

PRECISIONS = tuple(precision.value for precision in Precision)  # the dtypes a measurement runs in, by name
# the split whose AGOPs `measure` computes (else the first split) and whose samples the Gram figure shows
TRAIN_SPLIT = SPLITS[0]


class Source:
    """One split's data, iterable again for every sweep, as (x, y) batches: an (x, y) pair of tensors cut into
    `batch_size` batches, or a re-iterable of (x, y) batches (a DataLoader)."""

    def __init__(self, name: str, data, batch_size: int, sharded: bool = False):
        self.name = name
        self.every = 1 if sharded else world_size()  # a loader's batches: this rank's are i % every == rank
        if isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data[0], (tuple, list, dict)):
            x, y = (v if isinstance(v, torch.Tensor) else torch.as_tensor(v) for v in data)
            if len(x) != len(y):
                raise UsageError(f"split '{name}': x has {len(x)} samples but y has {len(y)}")
            self.num_samples = None if sharded else len(y)  # every rank's samples (a rank's own part: not known)
            if not sharded:
                index = shard(len(y))  # this rank's samples (every sample in one process)
                x, y = x[index], y[index]
            self.tensors, self.loader = (x, y), None
            self.num_batches = -(-len(y) // batch_size)
            self.batch_size = batch_size
        elif isinstance(data, collections.abc.Iterator):
            raise UsageError(f"split '{name}': a one-shot iterator cannot be swept twice; pass a DataLoader or an "
                             "(x, y) pair")
        elif isinstance(data, collections.abc.Iterable):
            self.tensors, self.loader = None, data
            dataset = getattr(data, "dataset", None)  # a DataLoader's (at most that many samples); else not known
            self.num_samples = len(dataset) if isinstance(dataset, collections.abc.Sized) else None
            self.num_batches = len(data) if hasattr(data, "__len__") else None
            if self.every > 1:
                if self.num_batches is None or self.num_batches < self.every:
                    raise UsageError(f"split '{name}': {self.every} ranks share a loader's batches, so it needs a "
                                     f"len() of at least {self.every} batches (it has "
                                     f"{'none' if self.num_batches is None else self.num_batches}); pass (x, y) "
                                     "tensors, or give each rank its own part (sharded=True)")
                self.num_batches = len(range(rank(), self.num_batches, self.every))
        else:
            raise UsageError(f"split '{name}': data must be an (x, y) pair or an iterable of (x, y) batches, got a "
                             f"{type(data).__name__}")

    def __iter__(self):
        if self.tensors is not None:
            x, y = self.tensors
            for start in range(0, len(y), self.batch_size):
                yield x[start:start + self.batch_size], y[start:start + self.batch_size]
            return
        for number, item in enumerate(self.loader):
            if number % self.every != rank() % self.every:
                continue
            if not isinstance(item, (tuple, list)) or len(item) < 2:
                raise UsageError(f"split '{self.name}': each batch must be an (x, y) pair, got a "
                                 f"{type(item).__name__}")
            yield item[0], item[1]


def named_splits(data, splits, batch_size: int, sharded: bool = False) -> dict[str, Source]:
    """{split name: Source}, the AGOP split first. `data`, when given, is the train split."""
    if splits is not None and not isinstance(splits, dict):
        raise UsageError(f"splits must be a dict {{name: data}}, got a {type(splits).__name__}")
    named = dict(splits or {})
    if data is not None:
        if TRAIN_SPLIT in named and named[TRAIN_SPLIT] is not data:
            raise UsageError("data and splits['train'] are both given and differ: pass the train split once")
        named = {TRAIN_SPLIT: data, **named}
    if not named:
        raise UsageError("no data: pass data=(x, y) or a DataLoader, or splits={'train': ...}")
    order = sorted(named, key=lambda name: name != TRAIN_SPLIT)
    return {str(name): Source(str(name), named[name], batch_size, sharded) for name in order}


def require_classes_fit(num_classes: int, sources: dict[str, Source]) -> None:
    """Refuse more classes than the largest split has samples, before anything is allocated (the class sums are
    num_classes x m): a label of 10^12 would make the sums 64 TB. Skipped when a split's size is not known."""
    sizes = [source.num_samples for source in sources.values()]
    if None not in sizes and sizes and num_classes > max(sizes):
        raise UsageError(f"num_classes={num_classes} but the largest split has {max(sizes)} samples: labels must be "
                         f"class indices 0..K-1 with at least {MIN_PER_CLASS} samples of each class present")


def check_labels(labels, split: str, batch_size: int, num_classes: int, device) -> torch.Tensor:
    """A batch's labels as int64 class indices on `device`; UsageError for one-hot or float labels, a count that is
    not the batch's, or a label outside [0, num_classes)."""
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise UsageError(f"split '{split}': labels must be integer class indices of shape (batch,), got "
                         f"{labels.dtype} of shape {tuple(labels.shape)} (one-hot labels: pass y.argmax(1))")
    if len(labels) != batch_size:
        raise UsageError(f"split '{split}': a batch has {batch_size} inputs but {len(labels)} labels")
    labels = labels.to(device=device, dtype=torch.int64)
    if len(labels):
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            raise UsageError(f"split '{split}': labels range over [{low}, {high}] but num_classes={num_classes} "
                             f"(labels must lie in [0, {num_classes - 1}])")
    return labels


def to_device(value, device: torch.device, dtype: torch.dtype):
    """Inputs onto the device; floating-point tensors into the measurement's dtype (containers recursively)."""
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=dtype if value.is_floating_point() else None)
    if isinstance(value, dict):
        return {key: to_device(v, device, dtype) for key, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device, dtype) for v in value)
    return value


def batch_size_of(x) -> int:
    """The number of samples in a batch of inputs: a tensor, or a tuple / dict of them (model(*x), model(**x))."""
    if isinstance(x, torch.Tensor):
        return x.shape[0]
    if isinstance(x, dict) and x:
        return batch_size_of(next(iter(x.values())))
    if isinstance(x, (tuple, list)) and x:
        return batch_size_of(x[0])
    raise UsageError(f"inputs of type {type(x).__name__} are not a tensor, a tuple or a dict of tensors")


class ForwardFailed(UsageError):
    """The model's forward pass raised on the data's inputs (a model that does not read this dataset)."""


def call_model(model: nn.Module, x):
    """model(x), model(*x) for a tuple of inputs, model(**x) for a dict. What the model's own code raises on the
    inputs is ForwardFailed, one line with the cause (kept as __cause__); our hooks' UsageErrors pass through."""
    try:
        if isinstance(x, dict):
            return model(**x)
        if isinstance(x, (tuple, list)):
            return model(*x)
        return model(x)
    except UsageError:
        raise
    except Exception as exc:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ForwardFailed(f"the model's forward pass failed on inputs of shape {shape} ({short(exc)})") from exc


def device_and_dtype(model: nn.Module, device, dtype) -> tuple[torch.device, torch.dtype]:
    """Where and in which precision the model runs: the given ones (a device or its name; torch.float32 /
    torch.float64 or their names), by default the model's own."""
    tensors = [*model.parameters(), *model.buffers()]
    floating = [t for t in tensors if t.is_floating_point()]
    if device is None:
        device = tensors[0].device if tensors else torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"device={device!r} is not a device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device={device} but no CUDA device is available")
    if dtype is None:
        dtype = floating[0].dtype if floating else torch.float32
    elif isinstance(dtype, str):
        if dtype not in PRECISIONS:
            raise UsageError(f"dtype={dtype!r}; valid: {', '.join(PRECISIONS)}")
        dtype = getattr(torch, dtype)
    elif dtype not in {getattr(torch, name) for name in PRECISIONS}:
        raise UsageError(f"dtype={dtype}; valid: {', '.join(f'torch.{name}' for name in PRECISIONS)}")
    return device, dtype


class PreparedModel:
    """`with PreparedModel(model, device, dtype):` the model in eval mode on `device` in `dtype` for the
    measurement; afterwards the same parameter and buffer tensors as before (and its train/eval mode), so the
    caller's model is unchanged."""

    def __init__(self, model: nn.Module, device: torch.device, dtype: torch.dtype):
        self.model, self.device, self.dtype = model, device, dtype

    def __enter__(self) -> nn.Module:
        model = self.model
        self.was_training = model.training
        self.params = [(p, p.data) for p in model.parameters()]
        self.buffers = [(m, name, b) for m in model.modules() for name, b in m._buffers.items() if b is not None]
        model.to(device=self.device, dtype=self.dtype)
        model.eval()
        return model

    def __exit__(self, *exc) -> bool:
        for param, data in self.params:
            param.data = data
        for module, name, buffer in self.buffers:
            module._buffers[name] = buffer
        self.model.train(self.was_training)
        return False
