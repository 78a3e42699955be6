"""`dnc report run_dir=<run or sweep>`: the paper's claims judged from a run's (or a sweep's) tables, written to
`report.md` (one run: into the run; several: into run_dir, every number as mean ± std over the runs).

Reads only `analysis/metrics.csv`, `summary.json`, `config_resolved.yaml` and `train_log.csv`; imports no torch.
Verdicts: `holds`, `does not hold`, `not applicable` (with the reason).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import hydra
from omegaconf import DictConfig

from dnc_cli.config import ReportConfig, to_object, validate_report
from dnc_cli.errors import UsageError, fail
from dnc_cli.guards import require_no_link_out
from dnc_cli.report.claims import CLAIMS
from dnc_cli.report.render import render_run, render_sweep
from dnc_cli.report.run_data import load_run
from dnc_cli.report.verdicts import Claim, aggregate, evaluate_run
from dnc_cli.runs import CONFIG_FILE, REPORT_FILE, find_runs, require_run_dir, write_text


@dataclass
class Report:
    path: Path
    claims: list[Claim]
    runs: int
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def report_file(cfg: ReportConfig) -> str:
    return REPORT_FILE if cfg.until_epoch is None else f"report_until_epoch{cfg.until_epoch}.md"


def write_report(root: Path, cfg: ReportConfig) -> Report:
    """Judge every claim for the run at/below `root` (one run: <run>/report.md) or the sweep `root` holds
    (several runs: <root>/report.md). UsageError when there is no run or no analysis."""
    root = Path(root)
    paths = find_runs(root)
    if not paths:
        raise UsageError(f"run_dir={root} holds no run (no {CONFIG_FILE} below it)")
    if len(paths) == 1:
        run = load_run(paths[0], cfg.until_epoch)
        claims = evaluate_run(run, cfg)
        out = paths[0] / report_file(cfg)
        require_no_link_out(out.parent, [out.name])
        write_text(out, render_run(run, claims, cfg))
        return Report(out, claims, 1)
    runs, skipped = [], []
    for path in paths:
        try:
            runs.append(load_run(path, cfg.until_epoch))
        except UsageError as exc:
            skipped.append((path, str(exc)))
    if not runs:
        raise UsageError(f"none of the {len(paths)} runs below run_dir={root} has an analysis: run "
                         f"`dnc analyze run_dir={root}` first")
    per_run = [evaluate_run(run, cfg) for run in runs]
    claims = [aggregate(spec, [claims[i] for claims in per_run], cfg) for i, spec in enumerate(CLAIMS)]
    out = root / report_file(cfg)
    require_no_link_out(out.parent, [out.name])
    write_text(out, render_sweep(root, runs, per_run, claims, skipped, cfg))
    return Report(out, claims, len(runs), skipped)


def check(cfg: DictConfig) -> ReportConfig:
    rcfg = validate_report(to_object(cfg, ReportConfig))
    require_run_dir(rcfg.run_dir)
    return rcfg


@hydra.main(version_base="1.3", config_path="pkg://dnc_cli.conf", config_name="report")
def main(cfg: DictConfig) -> None:
    try:
        rcfg = check(cfg)
        report = write_report(Path(rcfg.run_dir), rcfg)
    except UsageError as exc:
        fail("report", str(exc))
    except KeyboardInterrupt:  # staged files are discarded: every file as it was
        print("dnc report: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    what = f"{report.runs} runs, mean over seeds" if report.runs > 1 else "1 run"
    print(f"{report.path} ({what})")
    for claim in report.claims:
        print(f"  {claim.number}. {claim.title}: {claim.verdict} — {claim.reason}")
    if report.skipped:
        print(f"  not included ({len(report.skipped)} run(s) without analysis): "
              + ", ".join(str(p) for p, _ in report.skipped))
