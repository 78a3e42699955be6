"""Precomputed embeddings (`dnc measure features=<file>`): the NC metrics of an N x m matrix with its labels.

File formats (the names of the arrays / columns; the first one present is used):
* `.npz` (numpy.savez) or `.pt` (a dict of tensors, read with torch.load(weights_only=True)):
  features: `features` | `embeddings` | `x`  (N x m; more dims are flattened)
  labels:   `labels` | `label` | `y` | `targets`  (N integers in [0, K))
  optional: `split` (N strings or integers, e.g. train/test), `predictions` (N integers) or `logits` (N x K) for
            NC4, `classifier` (K x m, the final linear layer's weight) for NC3.
* `.parquet`: one row per sample; the label column as above, optional `split` and `predictions` columns, and the
  features either in one list-valued column (`features` | `embeddings` | `x`) or as every other numeric column.

The embeddings are layer 1 of the table (module `embeddings`), families nc and geometry: without weights there is
nothing to decompose and no AGOP.

Under torchrun every rank reads the whole file and measures its shard of each split (dnc_cli/distributed.py); the
Gram figure's sample is then from this rank's shard.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dnc_cli.distributed import shard
from dnc_cli.errors import UsageError, need, reading
from dnc_cli.guards import load_safely
from dnc_cli.measure.api import Measured, as_table
from dnc_cli.measure.inputs import TRAIN_SPLIT, check_labels
from dnc_cli.measure.layers import LayerInfo
from dnc_cli.measure.stats import SplitStats, gram_sample, gram_sample_rows
from dnc_cli.metrics.collapse import nc3
from dnc_cli.metrics.geometry import unc3

FEATURE_KEYS = ("features", "embeddings", "x")
LABEL_KEYS = ("labels", "label", "y", "targets")
SPLIT_KEY = "split"
FORMATS = (".npz", ".pt", ".parquet")
LAYER_NAME = "embeddings"


@dataclass
class Embeddings:
    features: torch.Tensor  # (N, m)
    labels: torch.Tensor  # (N,) int64
    split: list[str] | None = None  # (N,) split names
    predictions: torch.Tensor | None = None  # (N,) int64
    classifier: torch.Tensor | None = None  # (K, m)


def load_embeddings(path) -> Embeddings:
    """An embeddings file (module docstring); UsageError when it lacks labels or its arrays disagree on N."""
    path = Path(path)
    where = f"features={path}"
    if path.suffix not in FORMATS:
        raise UsageError(f"{where}: unknown format '{path.suffix}'; valid: {', '.join(FORMATS)}")
    if not path.is_file():
        raise UsageError(f"{where} does not exist")
    arrays = _read(path, where)
    features = _first(arrays, FEATURE_KEYS)
    labels = _first(arrays, LABEL_KEYS)
    if features is None:
        raise UsageError(f"{where} has no features (an array named {' or '.join(FEATURE_KEYS)}); it holds: "
                         f"{', '.join(arrays) or 'nothing'}")
    if labels is None:
        raise UsageError(f"{where} has no labels (an array named {' or '.join(LABEL_KEYS)}); it holds: "
                         f"{', '.join(arrays)}")
    features = _tensor(features, where, "features")
    if features.ndim < 2:
        raise UsageError(f"{where}: features must be N x m, got shape {tuple(features.shape)}")
    features = features.reshape(len(features), -1)
    if not features.is_floating_point():
        features = features.to(torch.float32)
    require_finite_features(features, where)
    num_samples = len(features)
    labels = _integers(_tensor(labels, where, "labels"), where, "labels")
    _same_length(where, num_samples, "labels", labels)
    split = arrays.get(SPLIT_KEY)
    if split is not None:
        split = [str(s.decode() if isinstance(s, bytes) else s) for s in np.asarray(split).tolist()]
        _same_length(where, num_samples, "split", split)
    predictions = arrays.get("predictions")
    if predictions is not None:
        predictions = _integers(_tensor(predictions, where, "predictions"), where, "predictions")
    elif arrays.get("logits") is not None:
        predictions = _tensor(arrays["logits"], where, "logits").argmax(1)
    if predictions is not None:
        _same_length(where, num_samples, "predictions", predictions)
    classifier = arrays.get("classifier")
    if classifier is not None:
        classifier = _tensor(classifier, where, "classifier").to(torch.float64)
        if classifier.ndim != 2 or classifier.shape[1] != features.shape[1]:
            raise UsageError(f"{where}: classifier has shape {tuple(classifier.shape)}; expected K x "
                             f"{features.shape[1]} (classes x features)")
    return Embeddings(features, labels, split, predictions, classifier)


def require_finite_features(features: torch.Tensor, where: str) -> None:
    """Refuse features with NaN or Inf, and features so large that the sums of their squares (the scatter, in
    float64) overflow: no metric of them would be a number."""
    finite = torch.isfinite(features)
    if not bool(finite.all()):
        rows = (~finite).any(1).nonzero().flatten()
        raise UsageError(f"{where}: features hold NaN or Inf in {len(rows)} row(s), the first row {int(rows[0])}; "
                         "no metric of them is a number")
    largest = float(features.abs().max()) if features.numel() else 0.0
    limit = math.sqrt(torch.finfo(torch.float64).max / (4 * max(features.numel(), 1)))
    if largest > limit:
        raise UsageError(f"{where}: features reach {largest:.3g}; the sums of their squares would overflow float64 "
                         f"(above {limit:.3g} is refused): rescale them")


def _read(path: Path, where: str) -> dict:
    with reading(path, library=True):  # missing, truncated, corrupt or hostile: one line naming the file
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                return {key: npz[key] for key in npz.files}
        if path.suffix == ".pt":
            data = load_safely(path)
            need(isinstance(data, dict), path, f"a dict of arrays expected, found {type(data).__name__}")
            return dict(data)
        return _read_parquet(path, where)


def _read_parquet(path: Path, where: str) -> dict:
    import pandas as pd

    frame = pd.read_parquet(path)
    arrays = {}
    for column in (*LABEL_KEYS, SPLIT_KEY, "predictions"):
        if column in frame.columns:
            arrays[column] = frame.pop(column).to_numpy()
    listed = next((c for c in FEATURE_KEYS if c in frame.columns and frame[c].dtype == object), None)
    if listed is not None:
        arrays["features"] = np.stack([np.asarray(v, dtype=np.float64) for v in frame[listed]])
    else:
        numeric = frame.select_dtypes("number")
        if numeric.shape[1]:
            arrays["features"] = numeric.to_numpy()
    return arrays


def _first(arrays: dict, keys: tuple[str, ...]):
    return next((arrays[key] for key in keys if key in arrays), None)


def _tensor(value, where: str, name: str) -> torch.Tensor:
    try:
        return value if isinstance(value, torch.Tensor) else torch.as_tensor(np.array(value))
    except (TypeError, ValueError, RuntimeError):
        raise UsageError(f"{where}: {name} is not a numeric array") from None


def _integers(values: torch.Tensor, where: str, name: str) -> torch.Tensor:
    values = values.reshape(-1) if values.ndim > 1 and values.shape[1:].numel() == 1 else values
    if values.is_floating_point() and bool((values == values.round()).all()):
        values = values.to(torch.int64)
    if values.ndim != 1 or values.is_floating_point() or values.dtype == torch.bool:
        raise UsageError(f"{where}: {name} must be N integer class indices, got {values.dtype} of shape "
                         f"{tuple(values.shape)}")
    return values.to(torch.int64)


def _same_length(where: str, num_samples: int, name: str, values) -> None:
    if len(values) != num_samples:
        raise UsageError(f"{where}: features has {num_samples} rows but {name} has {len(values)}")


def default_num_classes(labels: torch.Tensor) -> int:
    """K when not given: the largest label + 1 (at least 2)."""
    return max(int(labels.max()) + 1 if len(labels) else 0, 2)


def measure_embeddings(embeddings: Embeddings, num_classes: int | None = None, *, splits: list[str] | None = None,
                       batch_size: int = 4096, global_mean: str = "unweighted", official_scaling: bool = False,
                       device=None, epoch: int | None = None, gram_samples_per_class: int = 0,
                       geometry: bool = True) -> Measured:
    """NC1-NC4, NCC and CDNV of the embeddings per split (two streaming sweeps over row blocks, as `measure`);
    nc3 with a classifier, nc4 with predictions; with `geometry`, the geometry family (unc3 with a classifier).
    `splits`: which of the file's splits (default all; a file without a split column is all "train").
    num_classes: default max(label) + 1."""
    labels = embeddings.labels
    given = num_classes is not None
    num_classes = num_classes or default_num_classes(labels)
    if num_classes > len(labels):  # before the num_classes x m sums are allocated (a label of 10^12: 64 TB)
        raise UsageError(f"num_classes={num_classes}{'' if given else ' (the largest label + 1)'} but the embeddings "
                         f"have {len(labels)} samples: labels must be class indices 0..K-1")
    device = torch.device(device or "cpu")
    names = embeddings.split or [TRAIN_SPLIT] * len(labels)
    present = list(dict.fromkeys(sorted(set(names), key=lambda s: (s != TRAIN_SPLIT, s))))
    wanted = present if splits is None else [s for s in present if s in splits]
    missing = [s for s in (splits or []) if s not in present]
    if missing or not wanted:
        raise UsageError(f"splits={list(splits or [])}: the embeddings have split(s) {', '.join(present)}")
    check_labels(labels, wanted[0], len(labels), num_classes, "cpu")
    split_of = np.asarray(names)
    rows, gram, sizes = [], {}, {}
    for split in wanted:
        index = torch.from_numpy(np.flatnonzero(split_of == split))
        sizes[split] = len(index)
        index = index[shard(len(index))]  # this rank's samples (all of them in one process)
        stats = SplitStats(split, num_classes, global_mean, official_scaling, geometry)
        blocks = [index[i:i + batch_size] for i in range(0, len(index), batch_size)]
        key = (1, "")
        for block in blocks:  # sweep 1: class means
            stats.add_means(key, embeddings.features[block].to(device), labels[block].to(device))
        stats.finish_means()
        stats.start_collapse()
        for block in blocks:  # sweep 2: scatter, NCC, NC4
            predictions = None if embeddings.predictions is None else embeddings.predictions[block].to(device)
            stats.add_collapse(key, embeddings.features[block].to(device), labels[block].to(device), predictions)
        results = stats.results()[key]
        rows += [(None, split, 1, "", name, value, LAYER_NAME) for name, value in results.items()]
        if geometry:
            rows += [(None, split, 1, "", name, value, LAYER_NAME)
                     for name, value in stats.geometry_results()[key].items()]
        if embeddings.classifier is not None and embeddings.classifier.shape[0] == num_classes:
            for name, metric in [("nc3", nc3)] + [("unc3", unc3)] * geometry:
                rows.append((None, split, 1, "", name, metric(embeddings.classifier, stats.means[key], global_mean),
                             LAYER_NAME))
        if split == TRAIN_SPLIT and gram_samples_per_class > 0:
            chosen = index[gram_sample_rows(labels[index], num_classes, gram_samples_per_class)]
            gram = {"labels": labels[chosen].numpy(), "layer_1": gram_sample(embeddings.features[chosen])}
    width = embeddings.features.shape[1]
    info = LayerInfo(1, LAYER_NAME, "embeddings", (width,), width,
                     nc3="''" if embeddings.classifier is not None else "")
    return Measured(as_table(rows, epoch), [info], gram, split_sizes=sizes)
