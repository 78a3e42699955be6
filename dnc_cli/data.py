"""Datasets as whole tensors: load, take a (class-balanced) subset, standardise, optionally randomise labels.

Every dataset ends up as float32 images (N, C, H, W) and int64 labels, held on the device; training batches
are slices of a seeded permutation, so there is no per-sample `__getitem__` anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from dnc_cli.config import DatasetConfig, DatasetName, RandomLabelMode, standardize_mode
from dnc_cli.errors import DAMAGED_FILE_ERRORS, UsageError, short

# The subset of a dataset must not change with the training seed: seeds then differ in initialisation,
# batch order and random labels only, as in the paper's 3-seed plots.
SUBSET_SEED = 0
# NC1 compares within-class with between-class variability: a class needs two samples for the first to exist
MIN_PER_CLASS = 2
# the dataset keys (DatasetConfig) that load_dataset reads for each kind of dataset; the schema holds the union.
# `rff_gamma` is read by no loader: it is the Deep RFM preset's value for the dataset (conf/experiment/paper_deep_rfm)
COMMON_KEYS = ("name", "n_train", "n_test", "balanced", "standardize", "labels")
KEYS_READ = {DatasetName.digits: COMMON_KEYS,
             DatasetName.synthetic: (*COMMON_KEYS, "num_classes", "dim", "separation", "n_available")}
TORCHVISION_KEYS = (*COMMON_KEYS, "root", "download")  # mnist, fashion_mnist, cifar10, svhn


def keys_read(name: DatasetName) -> tuple[str, ...]:
    """The DatasetConfig keys that loading the dataset `name` reads."""
    return KEYS_READ.get(name, TORCHVISION_KEYS)


def refuse_unread_keys(d: DatasetConfig) -> None:
    """One schema per dataset kind, as the user sees it: a key that the kind does not read, set away from the
    schema's default, is refused instead of ignored (`dnc train dataset=mnist dataset.dim=64`). `rff_gamma` is
    exempt: the dataset group's YAML sets it for the Deep RFM preset. The schema keeps the union, so the configs
    that earlier runs saved, which hold every key at its default, still load."""
    read, default = keys_read(d.name), DatasetConfig()
    for key in fields(DatasetConfig):
        value = getattr(d, key.name)
        if key.name not in (*read, "rff_gamma") and value != getattr(default, key.name):
            shown = str(value).lower() if isinstance(value, bool) else value
            raise UsageError(f"dataset.{key.name}={shown} is not read by dataset={d.name.value}; "
                             f"its keys: {', '.join(read)}")


@dataclass
class Split:
    x: torch.Tensor  # (N, C, H, W) float32, standardised
    labels: torch.Tensor  # (N,) int64: the labels the network is trained on / evaluated against


@dataclass
class Data:
    train: Split
    test: Split
    num_classes: int
    relabelled: torch.Tensor  # (N_train,) bool: samples whose label was re-drawn (random labels)
    true_train_labels: torch.Tensor  # (N_train,) int64: labels before randomisation

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def to(self, device, dtype: torch.dtype | None = None) -> Data:
        """On `device`; the inputs also in `dtype` when given (labels stay int64)."""
        return Data(Split(self.train.x.to(device, dtype), self.train.labels.to(device)),
                    Split(self.test.x.to(device, dtype), self.test.labels.to(device)),
                    self.num_classes, self.relabelled, self.true_train_labels)


def _digits():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1)  # (1797, 1, 8, 8), values 0..16
    y = torch.tensor(bunch.target, dtype=torch.int64)
    # scikit-learn ships one split: a fixed stratified 80/20 split (1438/359) independent of the run seed
    g = torch.Generator().manual_seed(SUBSET_SEED)
    test = torch.zeros(len(y), dtype=torch.bool)
    for k in range(10):
        idx = (y == k).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        test[idx[: round(0.2 * len(idx))]] = True
    return x[~test], y[~test], x[test], y[test], 10


def _synthetic(cfg: DatasetConfig, seed: int):
    # A Gaussian mixture: class means at distance `separation` from the origin in random directions,
    # identity noise. Fixed by SUBSET_SEED + seed so that seeds give different draws of the same problem.
    g = torch.Generator().manual_seed(SUBSET_SEED)
    directions = torch.randn(cfg.num_classes, cfg.dim, generator=g)
    means = cfg.separation * directions / directions.norm(dim=1, keepdim=True)
    g_samples = torch.Generator().manual_seed(1000 + seed)

    def draw(n):
        y = torch.arange(n) % cfg.num_classes
        x = means[y] + torch.randn(n, cfg.dim, generator=g_samples)
        return x.view(n, 1, 1, cfg.dim), y

    x_train, y_train = draw(cfg.n_available)
    x_test, y_test = draw(max(cfg.n_available // 4, MIN_PER_CLASS * cfg.num_classes))
    return x_train, y_train, x_test, y_test, cfg.num_classes


def _torchvision(cfg: DatasetConfig):
    import torchvision.datasets as tvd

    def as_tensors(ds):
        if cfg.name == DatasetName.svhn:
            x, y = torch.as_tensor(ds.data), torch.as_tensor(ds.labels)  # (N, 3, 32, 32)
        elif cfg.name == DatasetName.cifar10:
            x, y = torch.as_tensor(ds.data).permute(0, 3, 1, 2), torch.as_tensor(ds.targets)  # from NHWC
        else:
            x, y = ds.data.unsqueeze(1), torch.as_tensor(ds.targets)  # MNIST-like (N, 28, 28)
        if len(x) != len(y):
            raise ValueError(f"{len(x)} images but {len(y)} labels")
        return x.float(), y.long()

    cls = {DatasetName.mnist: tvd.MNIST, DatasetName.fashion_mnist: tvd.FashionMNIST,
           DatasetName.cifar10: tvd.CIFAR10, DatasetName.svhn: tvd.SVHN}[cfg.name]
    def damaged(exc: BaseException) -> UsageError:
        hint = "set dataset.download=true" if not cfg.download else "check the network"
        return UsageError(f"dataset.root={cfg.root}: {cfg.name.value} not found, unreadable or damaged ({short(exc)}); "
                          f"{hint} or point dataset.root at a folder holding it")

    try:  # torchvision's readers check little and raise anything on bytes they do not expect (the IDX reader an
        # AssertionError on random bytes): whatever the constructors raise, the files are missing or damaged
        if cfg.name == DatasetName.svhn:
            train, test = [cls(cfg.root, split=s, download=cfg.download) for s in ("train", "test")]
        else:
            train, test = [cls(cfg.root, train=t, download=cfg.download) for t in (True, False)]
    except Exception as exc:
        raise damaged(exc) from exc
    try:
        arrays = (*as_tensors(train), *as_tensors(test))
    except DAMAGED_FILE_ERRORS as exc:  # arrays of the wrong shape or type
        raise damaged(exc) from exc
    return *arrays, 10


def _subset(x, y, n, num_classes, balanced, split_name):
    if n is None:
        return x, y
    if n > len(y):
        raise UsageError(f"dataset.n_{split_name}={n} is larger than the {len(y)} samples available")
    if not balanced:
        return x[:n], y[:n]  # the official code's choice: the first n samples
    g = torch.Generator().manual_seed(SUBSET_SEED)
    per_class = [n // num_classes + (1 if k < n % num_classes else 0) for k in range(num_classes)]
    chosen = []
    for k, want in enumerate(per_class):
        idx = (y == k).nonzero().squeeze(1)
        if len(idx) < want:
            raise UsageError(f"dataset.n_{split_name}={n} needs {want} samples of class {k}, only {len(idx)} "
                             f"exist; lower it or set dataset.balanced=false")
        chosen.append(idx[torch.randperm(len(idx), generator=g)[:want]])
    chosen = torch.cat(chosen).sort().values  # keep the dataset's order
    return x[chosen], y[chosen]


def randomize_labels(labels: torch.Tensor, fraction: float, mode: RandomLabelMode, num_classes: int,
                     seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-draw the labels of round(fraction*N) samples chosen at random; returns (labels, relabelled mask)."""
    g = torch.Generator().manual_seed(10_000 + seed)
    n_random = round(fraction * len(labels))
    chosen = torch.randperm(len(labels), generator=g)[:n_random]
    labels = labels.clone()
    if mode == RandomLabelMode.balanced:
        labels[chosen] = labels[chosen][torch.randperm(n_random, generator=g)]
    else:
        labels[chosen] = torch.randint(0, num_classes, (n_random,), generator=g)
    relabelled = torch.zeros(len(labels), dtype=torch.bool)
    relabelled[chosen] = True
    return labels, relabelled


def load_dataset(cfg: DatasetConfig, seed: int) -> Data:
    if cfg.name == DatasetName.digits:
        raw = _digits()
    elif cfg.name == DatasetName.synthetic:
        raw = _synthetic(cfg, seed)
    else:
        raw = _torchvision(cfg)
    x_train, y_train, x_test, y_test, num_classes = raw
    x_train, y_train = _subset(x_train, y_train, cfg.n_train, num_classes, cfg.balanced, "train")
    x_test, y_test = _subset(x_test, y_test, cfg.n_test, num_classes, cfg.balanced, "test")
    standardize = standardize_mode(cfg.standardize)
    if standardize in ("pixel", "pixel_split"):
        # per input coordinate; constant coordinates map to 0 (official: nan -> 0). With the training statistics a
        # pixel almost always 0 in training gets a tiny std, so a test image inked there explodes (results/README)
        def per_pixel(x, reference):
            mean, std = reference.mean(0), reference.std(0)
            return torch.where(std > 0, (x - mean) / std, 0.0)

        x_train, x_test = per_pixel(x_train, x_train), per_pixel(x_test, x_test if standardize == "pixel_split"
                                                                 else x_train)
    elif standardize == "global":
        mean, std = x_train.mean(), x_train.std()
        x_train, x_test = ((x - mean) / std for x in (x_train, x_test))
    labels, relabelled = randomize_labels(y_train, cfg.labels.random_fraction, cfg.labels.random_mode,
                                          num_classes, seed)
    require_classes(labels, num_classes, f"dataset.n_train={cfg.n_train}", "training")
    require_classes(y_test, num_classes, f"dataset.n_test={cfg.n_test}", "test")
    return Data(Split(x_train.contiguous(), labels), Split(x_test.contiguous(), y_test), num_classes,
                relabelled, y_train)


def require_classes(labels: torch.Tensor, num_classes: int, setting: str, split: str) -> None:
    """Degenerate data is an error, not a number: with a class absent (or alone) in a split, NC1 of that split would
    report collapse (a 5-sample, 10-class subset gave NC1 = 0)."""
    counts = torch.bincount(labels, minlength=num_classes)
    thin = [k for k, count in enumerate(counts.tolist()) if count < MIN_PER_CLASS]
    if thin:
        raise UsageError(f"{setting}: the {split} split ({len(labels)} samples) has fewer than {MIN_PER_CLASS} samples "
                         f"of class(es) {', '.join(map(str, thin))} of {num_classes}; neural-collapse metrics need "
                         f"{MIN_PER_CLASS} per class: use more samples")


def targets(labels: torch.Tensor, num_classes: int, loss: str) -> torch.Tensor:
    """MSE trains on +-1 one-hot vectors (2*onehot - 1, official); cross-entropy on class indices."""
    if loss == "ce":
        return labels
    return 2.0 * torch.nn.functional.one_hot(labels, num_classes).float() - 1.0
