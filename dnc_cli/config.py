"""The config of every command: one schema per config group, with every default, and its validation.

The dataclasses below list every option with its default, once; Hydra's ConfigStore holds them as `<command>_schema`
and the YAML in `conf/` merges on top (defaults lists, Hydra settings, what differs per option of a group), so a typo
in a key or a bad enum value fails when Hydra composes; `validate_*` adds the range checks that types cannot express.
The resolvers the YAML uses (`${dnc_run_dir:...}`, `${dnc_resume:}`, `${dnc_job_gpu:}`) are in dnc_cli/runs.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from dnc_cli.devices import validate_device
from dnc_cli.errors import UsageError


class DatasetName(Enum):
    digits = "digits"  # scikit-learn's bundled 8x8 digits: real, offline, the default
    synthetic = "synthetic"  # Gaussian mixture
    mnist = "mnist"
    fashion_mnist = "fashion_mnist"
    cifar10 = "cifar10"
    svhn = "svhn"


class RandomLabelMode(Enum):
    balanced = "balanced"  # a permutation of the chosen samples' labels: class sizes unchanged
    iid = "iid"  # uniform labels drawn i.i.d.: classes become imbalanced


class ModelName(Enum):
    mlp = "mlp"
    resnet18_mlp = "resnet18_mlp"
    vgg11_mlp = "vgg11_mlp"
    deep_rfm = "deep_rfm"


class OptimizerName(Enum):
    sgd = "sgd"
    adam = "adam"


class LossName(Enum):
    mse = "mse"  # mean over N x K of (output - (2*onehot - 1))^2, as the official code
    ce = "ce"


class Schedule(Enum):
    log = "log"  # ~count log-spaced epochs + 0 + TPT + last
    every = "every"  # every `every` epochs (official: 10)
    list = "list"  # exactly `epochs`


class GlobalMean(Enum):
    unweighted = "unweighted"  # mean of class means (official code, Papyan)
    weighted = "weighted"  # sample-weighted mean (Rangamani, Zhu)


class Precision(Enum):
    float32 = "float32"  # the network's own precision (and the official script's)
    float64 = "float64"  # network, AGOPs and metrics in float64: for numerically low-rank AGOPs (see README)


SPLITS = ("train", "test")
FAMILIES = ("nc", "svd", "nfa", "geometry")  # NC1-NC4 | NC1 of the SVD stages | WᵀW vs AGOP | metrics/geometry.py
ANALYZE_FAMILIES = FAMILIES[:3]  # geometry is dnc measure's alone: the tables dnc analyze wrote keep their rows
NC1_FORMS = ("nc1_trace", "nc1")  # tr(Σ_W)/tr(Σ_B) (the paper's figures) | tr(Σ_W Σ_B^†)/K (PAPER.md, NC1)
NFA_FORMS = ("standard", "centered", "init_removed", "init_removed_centered")  # README, "NFA forms"
FIGURE_FORMATS = ("png", "pdf")
STANDARDIZE = ("pixel", "pixel_split", "global", "none")
# runs written before `standardize` had modes stored a bool: true was the per-pixel standardisation
STANDARDIZE_ALIASES = {"true": "pixel", "false": "none"}
# train keys of where or how a run executes, never a swept parameter; and the key a sweep's runs are averaged over
RUN_ONLY_KEYS = ("resume", "progress", "device", "deterministic")
SEED_KEY = "seed"


# ---------------------------------------------------------------------------------------------------- dnc train
@dataclass
class LabelsConfig:
    random_fraction: float = 0.0
    random_mode: RandomLabelMode = RandomLabelMode.balanced


@dataclass
class DatasetConfig:
    name: DatasetName = DatasetName.digits
    root: str = "data"  # torchvision root (ignored by digits/synthetic); offline: a folder holding the files
    download: bool = False
    n_train: int | None = None  # None = all available
    n_test: int | None = None
    balanced: bool = True  # class-balanced subset; false = the first n (official)
    # pixel: per input coordinate with the training statistics, constant coordinates -> 0; pixel_split: the same
    # with each split's own statistics (the official nc_nn.py/deep_rfm.py); global: one mean and std over all
    # training pixels (no coordinate is divided by a tiny std); none
    standardize: str = "pixel"
    # the Cauchy scale of Deep RFM's random Fourier features that the official job script (run_deeprfm_jobs.sh)
    # uses for this dataset: 0.05 MNIST, 0.1 CIFAR-10/SVHN; the paper_deep_rfm preset sets model.rff_gamma to it
    rff_gamma: float = 0.05
    # synthetic only: num_classes means at distance `separation` from the origin, unit noise, `dim` features
    num_classes: int = 10
    dim: int = 32
    separation: float = 4.0
    n_available: int = 1000  # samples generated per split (train) / 4 (test)
    labels: LabelsConfig = field(default_factory=LabelsConfig)


@dataclass
class ModelConfig:
    """One schema for every model: networks read the first block, a Deep RFM (model=deep_rfm, whose YAML sets depth
    10 and width 4096) depth, width and the second block (dnc_cli/models/deep_rfm.py)."""

    name: ModelName = ModelName.mlp
    depth: int = 5  # analysed hidden Linear+ReLU layers (Deep RFM: RFM layers)
    # hidden width (Deep RFM: random features per layer; null = as many as the map's input coordinates, the
    # official RFF map)
    width: int | None = 512
    bias: bool = False
    init_gain: float = 0.1  # xavier_uniform gain of hidden layers; 0.1 = the paper's "small initialisation"
    first_layer_default_init: bool = False  # the official ResNet head keeps nn.Linear's init in layer 1
    # conv backbones: 3x3 stride-1 first conv and no max-pool (the usual small-image stem)
    small_input_stem: bool = True
    # Deep RFM only
    kernel: str = "laplace"  # laplace: exp(-||x-z||/L) | gaussian: exp(-||x-z||^2 / (2 L^2))
    bandwidth: float = 2.0  # L
    ridge: float = 1e-3  # the official code's effective ridge; 0 = ridgeless (the intent)
    features: str = "relu"  # relu: ReLU(W x), nn.Linear init | rff: random Fourier features (l1-Laplace)
    rff_gamma: float = 0.05  # Cauchy scale of the rff frequencies (paper: 0.05 MNIST, 0.1 CIFAR/SVHN)
    agop_power: float = 0.5  # P = M^agop_power (paper: 1/2)
    normalize_inputs: bool = True  # step 1: unit-norm rows at every layer


@dataclass
class OptimizerConfig:
    name: OptimizerName = OptimizerName.adam
    lr: float = 3e-4  # official MLP runs: Adam 5e-5; ResNet runs: SGD 0.05 (conf/optimizer/sgd.yaml)
    momentum: float = 0.0
    weight_decay: float = 0.0
    # the official code builds a new optimizer every epoch (Adam's moments restart): true reproduces it
    reset_each_epoch: bool = False


@dataclass
class CheckpointConfig:
    schedule: Schedule = Schedule.log
    count: int = 12
    every: int = 10
    epochs: list[int] = field(default_factory=list)


@dataclass
class TrainConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    checkpoints: CheckpointConfig = field(default_factory=CheckpointConfig)
    loss: LossName = LossName.mse
    batch_size: int = 128
    epochs: int = 400  # upper bound on training epochs
    epochs_after_tpt: int | None = 100  # stop this many epochs after the TPT (None: run `epochs`)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    deterministic: bool = True
    resume: str | None = None  # a run dir to continue
    progress: bool = True  # tqdm bar (only shown on a TTY)


# ---------------------------------------------------------------------------------------------------- dnc analyze
@dataclass
class NC1Options:
    global_mean: GlobalMean = GlobalMean.unweighted
    official_scaling: bool = False  # divide Sigma_W by K*N like the official code (NC1 K times smaller)


@dataclass
class NFAOptions:
    powers: list[float] = field(default_factory=lambda: [0.5, 1.0])
    # standard: corr(WᵀW, AGOP^α); centered (dmbeaglehole/centered_NFA), init_removed, init_removed_centered
    # (aradha/agop_feature_learning): with W - W₀, see dnc_cli/analyze/network.py `nfa_rows`
    forms: list[str] = field(default_factory=lambda: list(NFA_FORMS))


@dataclass
class DistributedOptions:
    """Under torchrun (README, "Scaling out"; dnc_cli/distributed.py). Outside it these do nothing."""

    # seconds a rank waits for the others, to form the process group and in every collective, before it gives up:
    # a rank that died or hangs ends the others within this time (a rank whose sockets closed ends them at once)
    timeout_s: float = 600.0


@dataclass
class AnalyzeConfig:
    run_dir: str = "outputs"
    splits: list[str] = field(default_factory=lambda: list(SPLITS))
    families: list[str] = field(default_factory=lambda: list(ANALYZE_FAMILIES))
    nc1: NC1Options = field(default_factory=NC1Options)
    nfa: NFAOptions = field(default_factory=NFAOptions)
    gram_samples_per_class: int = 30
    epochs: list[int] | None = None  # the checkpoints to analyse (None: every checkpoint of each run)
    batch_size: int = 1000
    device: str = "auto"
    precision: Precision = Precision.float32  # dtype the network is run and analysed in (networks; Deep RFM: float32)
    force: bool = False
    progress: bool = True
    jobs: int = 1  # runs analysed in parallel (processes); with several GPUs, run i on GPU i mod #GPUs
    distributed: DistributedOptions = field(default_factory=DistributedOptions)
    # write the sweep tables from the runs' tables as they are, analysing nothing: the last step after a
    # job-array analysis (hydra/launcher=slurm, README "Scaling out")
    tables_only: bool = False


# ---------------------------------------------------------------------------------------------------- dnc plot
@dataclass
class PlotConfig:
    run_dir: str = "outputs"
    figures: list[str] | None = None  # None = all figures for the run's kind
    nc1_form: str = "nc1_trace"
    split: str = "train"
    formats: list[str] = field(default_factory=lambda: list(FIGURE_FORMATS))
    dpi: int = 150


# ---------------------------------------------------------------------------------------------------- dnc report
@dataclass
class ReportConfig:
    """`dnc report`: every verdict threshold, each the tool's choice (the paper states none). Falls are factors
    (before / after: 10.0 = tenfold); shares are fractions of a log-NC drop."""

    run_dir: str = "outputs"
    nc1_form: str = "nc1_trace"  # the NC1 form the verdicts use (both forms are reported): nc1_trace | nc1
    split: str = "train"  # split of the NC metrics judged (NFA is always train)
    until_epoch: int | None = None  # judge the runs as they stood at this epoch: report_until_epoch<N>.md
    # P1-P3 are judged at the last checkpoint at or before this epoch, the official MLP runs' length (null: the last)
    paper_horizon: int | None = 250
    majority: float = 0.5  # "most layers" = a share of layers (P1: of layer-to-layer steps) strictly above this
    depth_fall_factor: float = 1.0  # P1: NC1 falls in most steps and by more than this from the first to last layer
    # P2: a layer collapses linearly when input -> right (S Vᵀ) carries >= linear_share of its log-NC1 drop
    linear_share: float = 0.5
    min_layer_fall: float = 1.05  # P2, P4: a layer whose NC1 falls by less than this is not judged
    nfa_min_corr: float = 0.8  # P3 (and B3 after the horizon): mean over layers of corr(WᵀW, AGOP^nfa_power)
    nfa_power: float = 0.5
    # P4: along each curve (X_l, M^½X_l, Φ(M^½X_l)) NC1 and NC2 (official mean-square form) fall >= rfm_fall_factor
    # from layer 1 to L, and in most layers X -> M^½X carries >= agop_share of the log-NC1 drop
    rfm_fall_factor: float = 10.0
    agop_share: float = 0.5
    # B1: NC1 of the last hidden layer falls >= collapse_factor from the first checkpoint to the end, and >=
    # post_tpt_factor from the TPT checkpoint to the end
    collapse_factor: float = 10.0
    post_tpt_factor: float = 2.0
    still_falling_factor: float = 2.0  # B2: TPT reached, and NC1 of the last hidden layer falls >= this after it


# ---------------------------------------------------------------------------------------------------- dnc measure
@dataclass
class MeasureModelConfig:
    """`dnc measure model=<name>` (short for model.name): the model to build, before `weights` are loaded."""

    name: str | None = None  # python.path:factory (called with kwargs) or a torchvision model name (random weights)
    kwargs: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the factory / torchvision builder
    adapt_input: bool = True  # replace the first Conv2d when its in_channels differ from the dataset's channels
    resize: int | None = None  # resize the dataset's images to resize x resize (bilinear) before the model


@dataclass
class MeasureConfig:
    """`dnc measure`: any model's layers (model= and dataset=) or saved embeddings (features=); dnc_cli/measure/."""

    out_dir: str = "outputs/measure"
    model: MeasureModelConfig = field(default_factory=MeasureModelConfig)
    weights: str | None = None  # a state_dict file (torch.load weights_only=True; a dnc checkpoint's "model" too)
    features: str | None = None  # an embeddings file (.npz, .pt, .parquet) instead of a model
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    seed: int = 0  # the dataset's random labels, if any, and the model's initial weights (before weights=)
    num_classes: int | None = None  # default: the dataset's (embeddings: max label + 1)
    layers: list[str] | None = None  # module names or globs; null: every nn.Linear
    families: list[str] = field(default_factory=lambda: list(FAMILIES))
    splits: list[str] = field(default_factory=lambda: list(SPLITS))  # embeddings: default every split in the file
    pool: str = "none"  # none: conv maps and sequences flattened | avg: averaged over positions
    output: str | None = None  # the module whose output is the model's outputs f_1..f_C; null: the model's return
    nfa_powers: list[float] = field(default_factory=lambda: [0.5, 1.0])
    agop_probes: str = "auto"  # AGOP VJPs per batch: auto (128) | exact | <int> (a sketch if < K; probes from `seed`)
    nc1: NC1Options = field(default_factory=NC1Options)
    batch_size: int = 256
    device: str = "auto"
    precision: Precision = Precision.float32
    epoch: int = 0  # the `epoch` column; measuring the same out_dir at another epoch adds to its table
    gram_samples_per_class: int = 30  # under torchrun: from rank 0's shard of the train split
    progress: bool = True
    distributed: DistributedOptions = field(default_factory=DistributedOptions)


cs = ConfigStore.instance()
cs.store(name="train_schema", node=TrainConfig)
cs.store(name="analyze_schema", node=AnalyzeConfig)
cs.store(name="plot_schema", node=PlotConfig)
cs.store(name="report_schema", node=ReportConfig)
cs.store(name="measure_schema", node=MeasureConfig)


# ---------------------------------------------------------------------------------------------------- validation
def _need(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


def standardize_mode(value) -> str:
    mode = STANDARDIZE_ALIASES.get(str(value).lower(), str(value))
    _need(mode in STANDARDIZE, f"dataset.standardize={value} is not a mode; valid: {', '.join(STANDARDIZE)}")
    return mode


def validate_dataset(d: DatasetConfig) -> DatasetConfig:
    """The dataset group's checks (dnc train, dnc measure)."""
    d.standardize = standardize_mode(d.standardize)
    _need(0.0 <= d.labels.random_fraction <= 1.0,
          f"dataset.labels.random_fraction={d.labels.random_fraction} is outside [0, 1]")
    for key, value in (("dataset.n_train", d.n_train), ("dataset.n_test", d.n_test)):
        _need(value is None or value > 0, f"{key}={value} must be a positive integer or null")
    _need(d.rff_gamma > 0 and math.isfinite(d.rff_gamma), f"dataset.rff_gamma={d.rff_gamma} must be > 0")
    _need(d.num_classes >= 2, f"dataset.num_classes={d.num_classes} must be >= 2")
    _need(d.dim >= 1, f"dataset.dim={d.dim} must be >= 1")
    _need(d.n_available >= d.num_classes, f"dataset.n_available={d.n_available} must be >= num_classes")
    return d


def validate_train(cfg: TrainConfig) -> TrainConfig:
    m, o, c = cfg.model, cfg.optimizer, cfg.checkpoints
    validate_dataset(cfg.dataset)
    _need(m.depth >= 1, f"model.depth={m.depth} must be >= 1")
    _need(m.width is None or m.width >= 1, f"model.width={m.width} must be >= 1")
    _need(m.init_gain > 0 and math.isfinite(m.init_gain), f"model.init_gain={m.init_gain} must be > 0")
    _need(o.lr > 0 and math.isfinite(o.lr), f"optimizer.lr={o.lr} must be > 0")
    _need(o.momentum >= 0, f"optimizer.momentum={o.momentum} must be >= 0")
    _need(o.weight_decay >= 0, f"optimizer.weight_decay={o.weight_decay} must be >= 0")
    _need(cfg.batch_size >= 1, f"batch_size={cfg.batch_size} must be >= 1")
    _need(cfg.epochs >= 1, f"epochs={cfg.epochs} must be >= 1")
    _need(cfg.epochs_after_tpt is None or cfg.epochs_after_tpt >= 0,
          f"epochs_after_tpt={cfg.epochs_after_tpt} must be >= 0 or null")
    _need(c.count >= 2, f"checkpoints.count={c.count} must be >= 2")
    _need(c.every >= 1, f"checkpoints.every={c.every} must be >= 1")
    _need(all(e >= 0 for e in c.epochs), f"checkpoints.epochs={c.epochs} must be non-negative epochs")
    _need(c.schedule != Schedule.list or len(c.epochs) > 0, "checkpoints.schedule=list needs checkpoints.epochs=[...]")
    validate_device(cfg.device)
    return cfg


def validate_analyze(cfg: AnalyzeConfig) -> AnalyzeConfig:
    for split in cfg.splits:
        _need(split in SPLITS, f"splits contains '{split}'; valid: {', '.join(SPLITS)}")
    for family in cfg.families:
        _need(family in ANALYZE_FAMILIES, f"families contains '{family}'; valid: {', '.join(ANALYZE_FAMILIES)}")
    _need(len(cfg.families) > 0, f"families=[] is empty; valid: {', '.join(ANALYZE_FAMILIES)}")  # as measure does
    _need(len(cfg.splits) > 0, "splits=[] is empty; valid: train, test")
    _need(all(p > 0 for p in cfg.nfa.powers), f"nfa.powers={cfg.nfa.powers} must be positive")
    for form in cfg.nfa.forms:
        _need(form in NFA_FORMS, f"nfa.forms contains '{form}'; valid: {', '.join(NFA_FORMS)}")
    _need(cfg.batch_size >= 1, f"batch_size={cfg.batch_size} must be >= 1")
    _need(cfg.gram_samples_per_class >= 0, f"gram_samples_per_class={cfg.gram_samples_per_class} must be >= 0")
    _need(cfg.jobs >= 1, f"jobs={cfg.jobs} must be >= 1")
    _need(cfg.distributed.timeout_s > 0, f"distributed.timeout_s={cfg.distributed.timeout_s} must be > 0")
    _need(cfg.epochs is None or all(e >= 0 for e in cfg.epochs), f"epochs={cfg.epochs} must be checkpoint epochs >= 0")
    validate_device(cfg.device)
    return cfg


def validate_report(cfg: ReportConfig) -> ReportConfig:
    _need(cfg.nc1_form in NC1_FORMS, f"nc1_form={cfg.nc1_form} is not one of {', '.join(NC1_FORMS)}")
    _need(cfg.split in SPLITS, f"split={cfg.split} is not one of {', '.join(SPLITS)}")
    _need(0 <= cfg.majority < 1, f"majority={cfg.majority} must be in [0, 1)")
    _need(-1 <= cfg.nfa_min_corr <= 1, f"nfa_min_corr={cfg.nfa_min_corr} must be in [-1, 1]")
    _need(cfg.nfa_power > 0, f"nfa_power={cfg.nfa_power} must be > 0")
    for key in ("linear_share", "agop_share"):
        _need(0 < getattr(cfg, key) <= 1, f"{key}={getattr(cfg, key)} must be in (0, 1]")
    for key in ("collapse_factor", "post_tpt_factor", "rfm_fall_factor", "still_falling_factor", "min_layer_fall",
                "depth_fall_factor"):
        value = getattr(cfg, key)
        _need(math.isfinite(value) and value >= 1, f"{key}={value} must be a factor >= 1")
    _need(cfg.paper_horizon is None or cfg.paper_horizon >= 0,
          f"paper_horizon={cfg.paper_horizon} must be an epoch >= 0 or null")
    return cfg


# ---------------------------------------------------------------------------------------------------- conversion
def to_object(cfg: DictConfig, schema: type) -> Any:
    """Hydra's composed config (without the `hydra` node) as the schema's dataclass instance."""
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"]) if "hydra" in cfg else cfg
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), cfg))


def to_plain(cfg: Any) -> dict:
    """A dataclass config as plain YAML-able data (enums as strings)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True)
