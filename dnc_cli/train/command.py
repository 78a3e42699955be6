"""`dnc train`: train a network, or build a Deep RFM, into a run folder (the layout of dnc_cli/runs.py).

The run's kind (dnc_cli/runs.py `kind_of_model`) picks its trainer from `TRAINERS`; each trainer module has
`check(cfg)`, its checks beyond config.validate_train, and `train(cfg, run_dir) -> summary`.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import hydra
import hydra.core.utils
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from dnc_cli.config import TrainConfig, to_object, to_plain, validate_train
from dnc_cli.data import refuse_unread_keys
from dnc_cli.errors import UsageError, fail
from dnc_cli.guards import require_no_link_out
from dnc_cli.runs import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    DEEP_RFM,
    LAST_CHECKPOINT,
    NETWORK,
    TRAINING_WRITES,
    ensure_writable_dir,
    holds_run,
    kind_of_model,
    write_text,
)
from dnc_cli.train import deep_rfm, network
from dnc_cli.train.lifecycle import check_not_nested, check_resume_config

TRAINERS = {NETWORK: network, DEEP_RFM: deep_rfm}


def trainer(cfg: TrainConfig):
    return TRAINERS[kind_of_model(cfg.model.name.value)]


def check(cfg: DictConfig) -> TrainConfig:
    """Every refusal of `dnc train`, run by the dispatcher before Hydra writes anything (a refused command leaves
    the run folder as it was), and again in the job."""
    train_cfg = validate_train(to_object(cfg, TrainConfig))
    if train_cfg.resume is None:  # a resumed run must equal its saved config, which an older dnc may have accepted
        refuse_unread_keys(train_cfg.dataset)
    trainer(train_cfg).check(train_cfg)
    if train_cfg.resume is not None:
        if not (Path(train_cfg.resume) / CHECKPOINTS_DIR / LAST_CHECKPOINT).exists():
            raise UsageError(f"resume={train_cfg.resume} holds no checkpoints/last.pt to resume from")
        require_no_link_out(Path(train_cfg.resume), TRAINING_WRITES)
        check_resume_config(Path(train_cfg.resume), to_plain(train_cfg))
    if "hydra" in cfg:
        ensure_writable_dir(cfg.hydra.run.dir, "hydra.run.dir")
        ensure_writable_dir(cfg.hydra.sweep.dir, "hydra.sweep.dir")
        run_dir = Path(cfg.hydra.run.dir)
        if cfg.hydra.mode != RunMode.MULTIRUN and train_cfg.resume is None and holds_run(run_dir):
            raise UsageError(f"hydra.run.dir={run_dir} already holds a run; continue it with resume={run_dir}")
        if cfg.hydra.mode == RunMode.MULTIRUN:
            check_not_nested(Path(cfg.hydra.sweep.dir), "hydra.sweep.dir", new_run=False)
        elif train_cfg.resume is None:
            check_not_nested(run_dir, "hydra.run.dir", new_run=True)
    return train_cfg


def run(cfg: TrainConfig, run_dir: Path) -> dict:
    """Train with `cfg`, writing the run layout into `run_dir`; returns the summary."""
    return trainer(cfg).train(cfg, Path(run_dir))


def _discard_if_empty(run_dir: Path) -> None:
    """A run that failed before writing anything leaves no folder behind (Hydra creates it before we start)."""
    if (run_dir / CONFIG_FILE).exists():
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    for parent in run_dir.absolute().parents:
        if parent == Path.cwd() or any(parent.iterdir()):
            break
        parent.rmdir()


def save_hydra_record(cfg, filename: str, output_dir: Path) -> None:
    """Hydra's record of a new run (.hydra/config.yaml, hydra.yaml, overrides.yaml), written as Hydra writes it but
    atomically. Hydra's own writer, on a full disk, left a 0-byte hydra.yaml and a traceback; this one leaves no file
    and says in one line what could not be written (the run folder goes too when nothing of the run is in it)."""
    try:
        write_text(Path(output_dir) / filename, OmegaConf.to_yaml(cfg))
    except UsageError as exc:
        _discard_if_empty(Path(output_dir).parent)
        fail("train", str(exc))  # SystemExit: Hydra reports only Exceptions, with their traceback


hydra.core.utils._save_config = save_hydra_record  # noqa: SLF001 (Hydra's run_job calls it by this name)


def share_cores(launcher) -> int | None:
    """Parallel sweep jobs on one machine (the joblib launcher's n_jobs) split the cores between them: torch's
    OpenMP threads in several processes oversubscribe the cores (measured here: 3 jobs on 2 cores made an MNIST
    epoch 17x slower than with one thread each). An explicit OMP_NUM_THREADS is left alone."""
    n_jobs = launcher.get("n_jobs") if "n_jobs" in launcher else None
    cores = os.cpu_count() or 1
    if not n_jobs or "OMP_NUM_THREADS" in os.environ:
        return None
    n_jobs = cores + 1 + n_jobs if n_jobs < 0 else n_jobs  # joblib: -1 = one job per core
    if n_jobs <= 1:
        return None
    threads = max(1, cores // n_jobs)
    torch.set_num_threads(threads)
    return threads


@hydra.main(version_base="1.3", config_path="pkg://dnc_cli.conf", config_name="train")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    share_cores(HydraConfig.get().launcher)
    try:
        summary = run(check(cfg), run_dir)
    except UsageError as exc:
        _discard_if_empty(run_dir)
        fail("train", str(exc))
    except KeyboardInterrupt:
        print(f"dnc train: interrupted; continue with: dnc train resume={run_dir}", file=sys.stderr)
        raise SystemExit(130) from None
    print(f"run dir: {run_dir}  (tpt_epoch={summary.get('tpt_epoch')}, status={summary['status']})")
