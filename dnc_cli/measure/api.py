"""`measure(model, data, num_classes, ...)`: the per-layer tables of `dnc analyze` for any PyTorch model.

`measure` returns the table; `run_measure` also what `dnc measure` writes beside it (`Measured`). The work is
dnc_cli/measure/session.py's; this module checks the options and prepares and restores the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from dnc_cli.config import FAMILIES
from dnc_cli.distributed import require_agreement, world_size
from dnc_cli.errors import UsageError
from dnc_cli.measure.hooks import POOLS, select_layers
from dnc_cli.measure.inputs import PreparedModel, device_and_dtype, named_splits, require_classes_fit
from dnc_cli.measure.layers import LayerInfo
from dnc_cli.measure.session import Session
from dnc_cli.metrics.collapse import GLOBAL_MEANS
from dnc_cli.tables import COLUMNS

MODULE_COLUMN = "module"  # the selected module's name, beside the tidy columns of metrics.csv
TABLE_COLUMNS = [*COLUMNS, MODULE_COLUMN]


# ---------------------------------------------------------------------------------------------------- public API
def measure(model: nn.Module, data=None, num_classes: int | None = None, *, layers=None,
            families=FAMILIES, splits: dict | None = None, pool: str | None = None,
            nfa_powers=(0.5, 1.0), output=None, device=None, dtype=None, epoch: int | None = None,
            batch_size: int = 256, global_mean: str = "unweighted", official_scaling: bool = False,
            progress: bool = True, agop_probes="auto", agop_seed: int = 0):
    """Deep-neural-collapse and AGOP metrics of `model`'s layers, as a pandas DataFrame with the tidy columns of
    metrics.csv (`epoch, split, layer, stage, metric, value`) plus `module`, the selected module's name.

    model        any nn.Module; run in eval mode (and in `device`/`dtype`), then put back as it was found.
    data         the "train" split: a re-iterable of (x, y) batches (a DataLoader: shuffle=False, both sweeps must
                 see the same order) or an (x, y) pair of tensors, cut into `batch_size` batches. x may also be a
                 tuple (model(*x)) or a dict (model(**x)); y holds class indices in [0, num_classes).
    num_classes  K.
    layers       module names or globs of `model.named_modules()`; layer l is the l-th match in module order.
                 None: every nn.Linear.
    families     nc: NC1-NC4, NCC, CDNV of every layer (stage ""); svd: the SVD stages of every nn.Linear
                 (input/right/left/activation/agop); nfa: corr(WᵀW, AGOP^α) of every nn.Linear and nn.Conv2d (the
                 conv's AGOP over input patches, see dnc_cli/measure/agop.py); geometry: equinorm, gnc2, unc3 and
                 the effective ranks of every layer (dnc_cli/metrics/geometry.py).
    splits       {name: data} (e.g. {"train": ..., "test": ...}); `data`, when also given, is the "train" split. The
                 AGOPs (svd's agop stage, nfa) come from "train", or from the first split when there is none.
    pool         None: conv maps and token sequences are flattened (m = C·H·W: the metrics never form an m x m
                 matrix); "avg": averaged over positions (hooks.as_features).
    nfa_powers   the α of nfa_corr_<α>.
    output       which outputs f_1..f_C the AGOP differentiates and NC4's predictions take the argmax of: None = the
                 model's return value (or its .logits), a module name (that module's output), or a callable of the
                 return value.
    agop_probes  how the AGOPs are computed (dnc_cli/metrics/agop/): a layer whose output reaches the outputs
                 through nn.Linear maps only gets the closed form JᵀJ (no backward pass, exact); every other layer
                 costs VJPs: "exact" C backward passes per batch; an integer s, s random orthogonal probes per
                 sample and batch (unbiased; exact when s >= C); "auto" = 128 (exact for C <= 128). A sketched
                 AGOP serves the NFA rows; the svd family's `agop` stage is left out under "auto" (it weighs the
                 smallest eigenvalues) and given for an integer. The row `agop_sketch_probes` says s (0: exact).
    agop_seed    the sketch's probes (rank r under torchrun draws with agop_seed + 1,000,003·r).
    device, dtype  where and in which precision (torch.float32 / torch.float64 or their names) the model runs;
                 default: the model's own. Sums are always float64.
    epoch        written to the `epoch` column (empty when None).
    global_mean, official_scaling  as `dnc analyze`'s nc1.* options (PAPER.md, Notation and NC1).
    progress     a progress bar per sweep (on a terminal only).

    Under torchrun (a process group initialised on every rank, dnc_cli/distributed.py: README, "Scaling out")
    call `measure` with the same arguments on every rank (the same model: load its weights or seed its
    initialisation; ranks whose weights differ raise dnc_cli.distributed.RanksDisagree): each rank measures its
    part of every split and the ranks add their sums, so every rank returns one process's table. An (x, y) pair
    of tensors is split into the ranks' shards (each sample measured once, N >= #ranks); a DataLoader is iterated
    whole by every rank, which measures the batches i with i % #ranks == rank (it needs a len() of at least #ranks
    batches; every rank loads every batch, so for expensive loading give each rank a loader of its own part and
    use `run_measure(sharded=True)`).

    NC3 is reported for the representations the final classifier reads (the last nn.Linear with num_classes
    outputs to run), NC4 when the outputs have num_classes columns; without them there are no nc3 / nc4 rows (a
    warning says so). Bad input (a pattern matching no module, a module output that is not a tensor, labels >=
    num_classes, ...) raises dnc_cli.errors.UsageError with a one-line message.
    """
    return run_measure(model, data, num_classes, layers=layers, families=families, splits=splits, pool=pool,
                       nfa_powers=nfa_powers, output=output, device=device, dtype=dtype, epoch=epoch,
                       batch_size=batch_size, global_mean=global_mean, official_scaling=official_scaling,
                       progress=progress, agop_probes=agop_probes, agop_seed=agop_seed).table


@dataclass
class Measured:
    """What `dnc measure` writes: the table (pandas DataFrame, TABLE_COLUMNS), the layers and the Gram sample."""

    table: object
    layers: list[LayerInfo]
    gram: dict = field(default_factory=dict)  # {"labels": (n,), "layer_<l>": (n, ≤n)}: class-sorted feature sample
    classifier: str | None = None  # the module NC3 compares with the class means
    agops: dict = field(default_factory=dict)  # {module name: AGOP (float64)}: w.r.t. the input (patches for a conv)
    split_sizes: dict = field(default_factory=dict)  # {split: samples measured}


def run_measure(model, data=None, num_classes=None, *, layers=None, families=FAMILIES, splits=None, pool=None,
                nfa_powers=(0.5, 1.0), output=None, device=None, dtype=None, epoch=None, batch_size=256,
                global_mean="unweighted", official_scaling=False, progress=True, gram_samples_per_class: int = 0,
                sharded: bool = False, agop_probes="auto", agop_seed: int = 0) -> Measured:
    """`measure` with what `dnc measure` writes besides the table: the layers' descriptions and a class-stratified
    feature sample of every layer for `dnc plot`'s Gram figure (its first `gram_samples_per_class` samples of each
    class in the train split, reduced to at most n columns with the same Gram matrix; under torchrun, of this
    rank's part of the split). `sharded`: under torchrun, the data each rank is given is its own part already
    (`dnc measure` shards its dataset), to be measured whole."""
    options = Options.checked(num_classes, families, pool, nfa_powers, global_mean, official_scaling, batch_size,
                              output, progress, agop_probes, agop_seed)
    sources = named_splits(data, splits, batch_size, sharded)
    require_classes_fit(options.num_classes, sources)
    selected = select_layers(model, layers)
    if world_size() > 1:  # under torchrun: ranks that built the model from unseeded randomness measure other models
        require_agreement("the model's weights", [float(t.double().sum()) for t in model.state_dict().values()])
    run_device, run_dtype = device_and_dtype(model, device, dtype)
    with PreparedModel(model, run_device, run_dtype):
        session = Session(model, selected, options, run_device, run_dtype)
        try:
            session.install()
            rows = session.run(sources, gram_samples_per_class)
        finally:
            session.remove()
    agops = {layer.name: layer.agop_matrix for layer in session.layers if layer.agop_matrix is not None}
    return Measured(as_table(rows, epoch), session.layer_infos(), session.gram_arrays, session.classifier_name, agops,
                    session.split_sizes)


def as_table(rows: list[tuple], epoch: int | None):
    """The rows (TABLE_COLUMNS) as a DataFrame, `epoch` (or empty) in its nullable-integer column."""
    import pandas as pd

    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    table["epoch"] = pd.array([epoch] * len(table), dtype="Int64")
    return table


# ---------------------------------------------------------------------------------------------------- options
@dataclass
class Options:
    num_classes: int
    families: set
    pool: str | None
    nfa_powers: tuple
    global_mean: str
    official_scaling: bool
    batch_size: int
    output: object
    progress: bool
    agop_probes: str | int  # "auto" | "exact" | s >= 1
    agop_seed: int

    @classmethod
    def checked(cls, num_classes, families, pool, nfa_powers, global_mean, official_scaling, batch_size, output,
                progress, agop_probes="auto", agop_seed=0) -> Options:
        if num_classes is None or isinstance(num_classes, bool) or not isinstance(num_classes, int) or \
                num_classes < 2:
            raise UsageError(f"num_classes={num_classes} must be an integer >= 2")
        families = [families] if isinstance(families, str) else list(families)
        for family in families:
            if family not in FAMILIES:
                raise UsageError(f"families contains '{family}'; valid: {', '.join(FAMILIES)}")
        if not families:
            raise UsageError(f"families is empty; valid: {', '.join(FAMILIES)}")
        if pool not in POOLS:
            raise UsageError(f"pool={pool!r} is not one of None, 'avg'")
        powers = tuple(float(p) for p in nfa_powers)
        if any(not p > 0 for p in powers):
            raise UsageError(f"nfa_powers={list(nfa_powers)} must be positive")
        if global_mean not in GLOBAL_MEANS:
            raise UsageError(f"global_mean={global_mean!r}; valid: {', '.join(GLOBAL_MEANS)}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise UsageError(f"batch_size={batch_size} must be a positive integer")
        if output is not None and not isinstance(output, str) and not callable(output):
            raise UsageError(f"output={output!r} must be None, a module name or a callable")
        return cls(num_classes, set(families), pool, powers, global_mean, bool(official_scaling), batch_size, output,
                   bool(progress), agop_probes_option(agop_probes), int(agop_seed))


def agop_probes_option(value) -> str | int:
    """agop_probes as measure takes it: "auto", "exact" or a positive integer (also given as a string, as
    `dnc measure agop_probes=64` does)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if value in ("auto", "exact") or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise UsageError(f"agop_probes={value!r} must be auto, exact or a positive integer")
