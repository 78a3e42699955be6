"""The statistics `measure` accumulates per split: the two streaming sweeps' accumulators of every representation
(`SplitStats`: PAPER.md, "The four neural-collapse metrics", with dnc_cli/metrics/collapse.py's ClassMeans and
NeuralCollapse), and a class-stratified feature sample for `dnc plot`'s Gram figure (`GramSample`).

Under torchrun each rank accumulates its shard and the ranks' sums are added (dnc_cli/distributed.py) when a sweep
ends: in `finish_means`, so that sweep 2 measures the scatter around the global class means, and in `results`.
"""

from __future__ import annotations

import dataclasses

import torch

from dnc_cli.data import MIN_PER_CLASS
from dnc_cli.distributed import require_agreement, sync_all
from dnc_cli.errors import UsageError
from dnc_cli.metrics.collapse import ClassMeans, ClassMeansResult, NeuralCollapse
from dnc_cli.metrics.geometry import ERANK_MAX_FEATURES, WithinScatter, geometry_of_means


class SplitStats:
    """The two sweeps' accumulators of one split, per representation key (layer, stage): ClassMeans in sweep 1,
    then, given the class means, NeuralCollapse in sweep 2; with `geometry`, also the within-class scatter of the
    layers' own representations (stage "", m <= ERANK_MAX_FEATURES) for dnc_cli/metrics/geometry.py's effective
    ranks."""

    def __init__(self, split: str, num_classes: int, global_mean: str, official_scaling: bool,
                 geometry: bool = False):
        self.split, self.num_classes = split, num_classes
        self.global_mean, self.official_scaling = global_mean, official_scaling
        self.geometry = geometry
        self.mean_sums: dict = {}
        self.means: dict[tuple[int, str], ClassMeansResult] = {}
        self.collapse: dict = {}
        self.scatter: dict = {}

    def add_means(self, key, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.mean_sums.setdefault(key, ClassMeans(self.num_classes)).update(features, labels)

    def finish_means(self) -> None:
        """After sweep 1: the class means, of every rank's samples under torchrun."""
        require_agreement(f"the representations of split '{self.split}'",  # the same sums, else no all-reduce
                          self.split, [[*key, list(acc.sums.shape)] for key, acc in self.mean_sums.items()])
        sync_all(self.mean_sums.values())
        self.means = {key: acc.compute() for key, acc in self.mean_sums.items()}
        for (layer, stage), result in self.means.items():  # checked before anything is computed from them
            if not bool(torch.isfinite(result.means[result.present]).all()):
                where = f"layer {layer}" + (f" ({stage})" if stage else "")
                raise UsageError(f"split '{self.split}': the features of {where} are not finite (NaN or Inf, or so "
                                 "large that their sums overflow float64)")
        if self.means:
            require_per_class(next(iter(self.means.values())).counts, self.split)

    def start_collapse(self) -> None:
        try:
            self.collapse = {key: NeuralCollapse(means, global_mean=self.global_mean,
                                                 official_scaling=self.official_scaling)
                             for key, means in self.means.items()}
        except ValueError as exc:  # fewer than 2 classes present
            raise UsageError(f"split '{self.split}': {exc}") from None
        if self.geometry:
            self.scatter = {key: WithinScatter(means) for key, means in self.means.items()
                            if key[1] == "" and means.means.shape[1] <= ERANK_MAX_FEATURES}

    def add_collapse(self, key, features: torch.Tensor, labels: torch.Tensor, predictions) -> None:
        accumulator = self.collapse.get(key)
        if accumulator is not None:
            accumulator.update(features, labels, predictions)
        if key in self.scatter:
            self.scatter[key].update(features, labels)

    def geometry_results(self) -> dict[tuple[int, str], dict[str, float]]:
        """After `results()`: the geometry family's metrics of the class means (stage "" keys), with the effective
        ranks where the representation is narrow enough (dnc_cli/metrics/geometry.py)."""
        found = {}
        for key, means in self.means.items():
            if key[1] == "":
                found[key] = geometry_of_means(means.centred_means(self.global_mean))
                if key in self.scatter:
                    found[key].update(self.scatter[key].compute(self.global_mean, self.official_scaling))
        return found

    def results(self) -> dict[tuple[int, str], dict[str, float]]:
        sync_all([*self.collapse.values(), *self.scatter.values()])
        try:
            return {key: acc.compute() for key, acc in self.collapse.items()}
        except ValueError as exc:  # the sweeps saw different data
            raise UsageError(f"split '{self.split}': {exc}") from None


def require_per_class(counts: torch.Tensor, split: str) -> None:
    """A class present with a single sample is an error, not a number: its within-class scatter is 0, so NC1 would
    report collapse (data.require_classes, for a whole dataset). Absent classes are allowed: measure() counts only
    the classes present."""
    thin = [k for k, count in enumerate(counts.tolist()) if 0 < count < MIN_PER_CLASS]
    if thin:
        raise UsageError(f"split '{split}' has fewer than {MIN_PER_CLASS} samples of class(es) "
                         f"{', '.join(map(str, thin[:10]))}{' ...' if len(thin) > 10 else ''}; neural-collapse "
                         f"metrics need {MIN_PER_CLASS} per class")


def transformed_means(result: ClassMeansResult, matrix: torch.Tensor) -> ClassMeansResult:
    """Class means of h @ matrixᵀ along the last dim of h's positions (m = P·d -> P·r): the means of the `right` and
    `agop` stages from those of `input` without a sweep (means commute with linear maps; ClassMeansResult.transformed,
    per position)."""
    matrix = matrix.to(device=result.means.device, dtype=torch.float64)
    num_classes = result.means.shape[0]
    means = (result.means.reshape(num_classes, -1, matrix.shape[1]) @ matrix.T).reshape(num_classes, -1)
    return dataclasses.replace(result, means=means, counts=result.counts.clone())


# the Gram figure's sample holds at most this many samples: with many classes, fewer per class (at least 1), and
# beyond GRAM_SAMPLE_MAX classes only the first GRAM_SAMPLE_MAX (an n x n Gram of n = 30 x 32,000 is no figure)
GRAM_SAMPLE_MAX = 4096


def gram_sample_quota(num_classes: int, per_class: int) -> tuple[int, int]:
    """(samples per class, classes sampled) of the Gram figure's sample."""
    return min(per_class, max(1, GRAM_SAMPLE_MAX // num_classes)), min(num_classes, GRAM_SAMPLE_MAX)


def gram_sample_rows(labels: torch.Tensor, num_classes: int, per_class: int) -> torch.Tensor:
    """Positions in `labels` of the first samples of each class, within `gram_sample_quota`, class by class."""
    quota, classes = gram_sample_quota(num_classes, per_class)
    order = torch.sort(labels, stable=True).indices
    sorted_labels = labels[order]
    first = torch.searchsorted(sorted_labels, sorted_labels, right=False)  # each class's first position in order
    rank_in_class = torch.arange(len(labels)) - first
    return order[(rank_in_class < quota) & (sorted_labels < classes)]


class GramSample:
    """The first `per_class` samples of each class of a split (within `gram_sample_quota`), and every layer's
    features of them: the samples of `dnc plot`'s Gram figure (analysis/gram_epoch_<epoch>_train.npz). Per batch:
    `choose(labels)`, then `add`."""

    def __init__(self, num_classes: int, per_class: int):
        self.per_class, classes = gram_sample_quota(num_classes, per_class)
        self.counts = torch.zeros(num_classes, dtype=torch.int64)
        self.counts[classes:] = self.per_class  # classes beyond the quota count as full
        self.labels: list[torch.Tensor] = []
        self.rows: dict[int, list[torch.Tensor]] = {}
        self.chosen: torch.Tensor | None = None

    def choose(self, labels: torch.Tensor) -> None:
        """This batch's rows to keep: those of classes with fewer than `per_class` samples so far."""
        take = []
        if not bool((self.counts >= self.per_class).all()):
            cpu_labels = labels.cpu()
            for row, label in enumerate(cpu_labels.tolist()):
                if self.counts[label] < self.per_class:
                    self.counts[label] += 1
                    take.append(row)
            self.labels.append(cpu_labels[take])
        self.chosen = torch.tensor(take, dtype=torch.int64, device=labels.device)

    def add(self, layer: int, features: torch.Tensor) -> None:
        if self.chosen is not None and len(self.chosen):
            self.rows.setdefault(layer, []).append(features[self.chosen].float().cpu())

    def arrays(self) -> dict:
        """{"labels": (n,), "layer_<l>": (n, ≤ n)} as numpy arrays; {} when nothing was sampled."""
        if not self.rows:
            return {}
        return {"labels": torch.cat(self.labels).numpy(),
                **{f"layer_{layer}": gram_sample(torch.cat(chunks)) for layer, chunks in self.rows.items()}}


def gram_sample(sample: torch.Tensor):
    """A feature sample X (n x m) for `dnc plot`'s Gram figure as X V (n x min(n, m)), V the right singular vectors
    of X: X V Vᵀ = X, so the Gram matrix of the rows, also after centring them, is unchanged (float32 numpy)."""
    sample = sample.to(torch.float64)
    if sample.shape[1] > sample.shape[0]:
        _, _, vh = torch.linalg.svd(sample, full_matrices=False)
        sample = sample @ vh.T
    return sample.float().cpu().numpy()
