"""`dnc measure`: the tables of `dnc analyze` for a model saved on disk, or for saved embeddings, in the run layout
that `dnc plot` and `dnc report` read (dnc_cli/measure/outputs.py).

    dnc measure model=resnet18 weights=net.pt dataset=digits layers=[layer4,fc] out_dir=runs/resnet
    dnc measure model=mypkg.nets:build +model.kwargs.width=256 dataset=cifar10 dataset.root=data out_dir=runs/mine
    dnc measure features=embeddings.npz out_dir=runs/embeddings

The model comes from dnc_cli/measure/loading.py, the measurement from dnc_cli/measure/api.py (a model) or
dnc_cli/measure/features.py (embeddings).

Under `torchrun --nproc_per_node=P -m dnc_cli measure ...` (README, "Scaling out") every rank measures its shard of
each split, the ranks add their sums (dnc_cli/distributed.py), and rank 0 alone writes out_dir.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from dnc_cli.config import FAMILIES, SPLITS, DatasetName, MeasureConfig, to_object, to_plain, validate_dataset
from dnc_cli.data import keys_read, load_dataset, refuse_unread_keys
from dnc_cli.devices import resolve_device, validate_device
from dnc_cli.distributed import GroupBroken, is_writer, launched_as_ranks, process_group, require_agreement, shard
from dnc_cli.errors import UsageError, fail
from dnc_cli.measure.api import agop_probes_option, run_measure
from dnc_cli.measure.features import default_num_classes, load_embeddings, measure_embeddings
from dnc_cli.measure.inputs import ForwardFailed
from dnc_cli.measure.loading import ImageBatches, build_model, load_weights
from dnc_cli.measure.outputs import write_outputs
from dnc_cli.runs import CONFIG_FILE, MEASURE_COMMAND, ensure_writable_dir, is_measure_run
from dnc_cli.tables import undefined_values

# `model=X` means model.name=X: conf/model is dnc train's config group, so Hydra would take X for one of its files
SHORTHANDS = {"model": "model.name"}
POOLS = {"none": None, "avg": "avg"}  # pool= -> measure(pool=...)
log = logging.getLogger("dnc.measure")


def check(cfg: DictConfig) -> MeasureConfig:
    """The composed config as a validated MeasureConfig (no model is built here)."""
    mcfg = to_object(cfg, MeasureConfig)
    has_model, has_features = mcfg.model.name is not None, mcfg.features is not None
    if has_model == has_features:
        raise UsageError("give model=<python.path:factory or torchvision name> (with dataset=) or "
                         "features=<embeddings file>, " + ("not both" if has_model else "one of them"))
    if has_features and mcfg.weights is not None:
        raise UsageError("weights= goes with model=, not with features=")
    for key, path in (("weights", mcfg.weights), ("features", mcfg.features)):
        if path is not None and not Path(path).is_file():
            raise UsageError(f"{key}={path} does not exist")
    for family in mcfg.families:
        if family not in FAMILIES:
            raise UsageError(f"families contains '{family}'; valid: {', '.join(FAMILIES)}")
    if not mcfg.families:
        raise UsageError(f"families=[] is empty; valid: {', '.join(FAMILIES)}")
    if has_model:  # the dataset's splits (an embeddings file may name its splits as it likes)
        refuse_unread_keys(validate_dataset(mcfg.dataset))
        for split in mcfg.splits:
            if split not in SPLITS:
                raise UsageError(f"splits contains '{split}'; valid: {', '.join(SPLITS)}")
    if not mcfg.splits:
        raise UsageError("splits=[] is empty")
    if mcfg.pool not in POOLS:
        raise UsageError(f"pool={mcfg.pool} is not a pooling; valid: {', '.join(POOLS)}")
    if any(not p > 0 for p in mcfg.nfa_powers):
        raise UsageError(f"nfa_powers={mcfg.nfa_powers} must be positive")
    if mcfg.num_classes is not None and mcfg.num_classes < 2:
        raise UsageError(f"num_classes={mcfg.num_classes} must be >= 2")
    if mcfg.model.resize is not None and mcfg.model.resize < 1:
        raise UsageError(f"model.resize={mcfg.model.resize} must be a positive size")
    for key, value, low in (("batch_size", mcfg.batch_size, 1), ("gram_samples_per_class",
                                                                  mcfg.gram_samples_per_class, 0)):
        if value < low:
            raise UsageError(f"{key}={value} must be >= {low}")
    validate_device(mcfg.device)
    agop_probes_option(mcfg.agop_probes)
    if not mcfg.distributed.timeout_s > 0:
        raise UsageError(f"distributed.timeout_s={mcfg.distributed.timeout_s} must be > 0")
    if "hydra" in cfg and cfg.hydra.run.dir != ".":  # conf/measure.yaml's: Hydra writes nothing, out_dir all
        raise UsageError(f"hydra.run.dir={cfg.hydra.run.dir} is dnc train's; dnc measure writes to out_dir=<dir>")
    out_dir = Path(mcfg.out_dir)
    ensure_writable_dir(out_dir, "out_dir")
    if (out_dir / CONFIG_FILE).is_file() and not is_measure_run(out_dir):
        raise UsageError(f"out_dir={out_dir} holds a dnc train run; measure into another folder")
    return mcfg


def help_text(overrides: list[str]) -> str:
    """`dnc measure [overrides] --help`: the config group measure reads (dataset=) and the composed config with the
    dataset keys that its kind reads (dnc_cli/data.py, keys_read), instead of Hydra's help, which lists every group
    of conf/ (train's experiment=, optimizer=, ...) and every key of the dataset schema."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    with initialize_config_module("dnc_cli.conf", version_base="1.3"):
        options = GlobalHydra.instance().config_loader().get_group_options("dataset")
        cfg = OmegaConf.to_container(compose("measure", overrides), resolve=False, enum_to_str=True)
    read = keys_read(DatasetName(cfg["dataset"]["name"]))
    cfg["dataset"] = {key: value for key, value in cfg["dataset"].items() if key in read}
    return "\n".join([
        "dnc measure: the tables of `dnc analyze` for any PyTorch model's layers or for saved embeddings.",
        'Every key and its meaning: dnc_cli/config.py (MeasureConfig), README "Measure your own model".', "",
        "== Configuration groups ==", f"dataset: {', '.join(options)}", "",
        f"== Config (dataset: the keys dataset={cfg['dataset']['name']} reads) ==", OmegaConf.to_yaml(cfg)])


def check_ranks(mcfg: MeasureConfig) -> MeasureConfig:
    """Under torchrun: refuse, before any work, ranks given other options or other files (out_dir aside: rank 0
    alone writes); quieten the ranks that do not write (no progress bar, errors only). One process: mcfg as it is."""
    if not launched_as_ranks():
        return mcfg
    options = {key: value for key, value in to_plain(mcfg).items() if key not in ("out_dir", "progress")}
    inputs = {key: [str(Path(path).resolve()), Path(path).stat().st_size]
              for key, path in (("weights", mcfg.weights), ("features", mcfg.features)) if path is not None}
    require_agreement("the options and the inputs", options, inputs)
    if is_writer():
        return mcfg
    logging.getLogger().setLevel(logging.ERROR)
    return dataclasses.replace(mcfg, progress=False)


def measure_model(mcfg: MeasureConfig, device=None):
    """(Measured, summary facts) for model= and dataset=; under torchrun, of this rank's shard of each split."""
    data = load_dataset(mcfg.dataset, mcfg.seed)
    num_classes = mcfg.num_classes or data.num_classes
    channels = data.train.x.shape[1] if data.train.x.ndim == 4 else None
    torch.manual_seed(mcfg.seed)  # the same initial weights in every process (before weights=), every rank's too
    model = build_model(mcfg.model, num_classes, channels)
    if mcfg.weights is not None:
        load_weights(model, mcfg.weights, mcfg.model.name)
    splits = {}
    for split in mcfg.splits:
        x, labels = getattr(data, split).x, getattr(data, split).labels
        index = shard(len(labels))  # this rank's samples (all of them in one process)
        splits[split] = ImageBatches(x[index], labels[index], mcfg.batch_size, mcfg.model.resize)
    measured = run_measure(model, num_classes=num_classes, layers=mcfg.layers, families=mcfg.families, splits=splits,
                           pool=POOLS[mcfg.pool], nfa_powers=mcfg.nfa_powers, output=mcfg.output,
                           device=device or resolve_device(mcfg.device), dtype=mcfg.precision.value,
                           epoch=mcfg.epoch, global_mean=mcfg.nc1.global_mean.value,
                           official_scaling=mcfg.nc1.official_scaling, progress=mcfg.progress,
                           gram_samples_per_class=mcfg.gram_samples_per_class, sharded=True,
                           agop_probes=mcfg.agop_probes, agop_seed=mcfg.seed)
    facts = {"model": mcfg.model.name, "weights": mcfg.weights, "dataset": mcfg.dataset.name.value,
             "num_classes": num_classes, "classifier": measured.classifier}
    return measured, facts


def measure_features(mcfg: MeasureConfig, device=None):
    """(Measured, summary facts) for features=; under torchrun, of this rank's shard of each split."""
    embeddings = load_embeddings(mcfg.features)
    splits = None if mcfg.splits == list(SPLITS) else mcfg.splits  # the default: whatever splits the file has
    measured = measure_embeddings(embeddings, mcfg.num_classes, splits=splits, global_mean=mcfg.nc1.global_mean.value,
                                  official_scaling=mcfg.nc1.official_scaling,
                                  device=device or resolve_device(mcfg.device),
                                  epoch=mcfg.epoch, gram_samples_per_class=mcfg.gram_samples_per_class,
                                  geometry="geometry" in mcfg.families)
    num_classes = mcfg.num_classes or default_num_classes(embeddings.labels)
    facts = {"model": "embeddings", "features": mcfg.features, "num_classes": num_classes}
    return measured, facts


@hydra.main(version_base="1.3", config_path="pkg://dnc_cli.conf", config_name="measure")
def main(cfg: DictConfig) -> None:
    try:
        mcfg = check(cfg)
        with process_group(mcfg.distributed.timeout_s, resolve_device(mcfg.device)) as device:
            mcfg = check_ranks(mcfg)
            measured, facts = (measure_model if mcfg.model.name is not None else measure_features)(mcfg, device)
            undefined = undefined_values(measured.table)
            if undefined and is_writer():
                log.warning("undefined values: %s", undefined)
            out_dir = Path(mcfg.out_dir)
            summary = write_outputs(out_dir, mcfg, measured, facts) if is_writer() else None  # rank 0 writes
    except ForwardFailed as exc:  # the model given does not read the dataset given
        fail(MEASURE_COMMAND, f"model={mcfg.model.name}: {exc}")
    except (UsageError, GroupBroken) as exc:
        fail(MEASURE_COMMAND, str(exc))
    except KeyboardInterrupt:
        print("dnc measure: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    if summary is None:
        return
    layers = ", ".join(f"{number}={module}" for number, module in summary["layers"].items())
    print(f"{out_dir}/analysis/metrics.csv: layers {layers}; splits "
          f"{', '.join(f'{s} ({n})' for s, n in summary['splits'].items())}")
    print(f"figures: dnc plot run_dir={out_dir}")
