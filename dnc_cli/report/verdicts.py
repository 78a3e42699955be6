"""A claim's verdict for one run (`evaluate`), and over a sweep's runs (`aggregate`): every number as mean ± std
over the runs the claim applies to, the verdict judged on the means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from dnc_cli.config import ReportConfig
from dnc_cli.report.claims import CLAIMS, ClaimSpec
from dnc_cli.report.criteria import NA, Measured
from dnc_cli.report.run_data import RunData


@dataclass
class Claim:
    """A claim's numbers for one run (or mean and std over a sweep's runs), verdict and figures."""

    number: str
    key: str
    title: str
    scope: str  # claims.PAPER | claims.BEYOND
    source: str
    cite: str
    verdict: str
    reason: str
    figures: tuple[str, ...]
    numbers: dict[str, float] = field(default_factory=dict)
    layers: dict[int, dict[str, float]] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)  # sweeps: std over runs (ddof 1)
    layers_std: dict[int, dict[str, float]] = field(default_factory=dict)
    runs: int = 1  # runs the numbers are averaged over (0: the claim applies to none)
    measured: bool = True  # False: the claim does not apply to this kind of run at all


def evaluate(spec: ClaimSpec, run: RunData, cfg: ReportConfig) -> Claim:
    """The claim for one run: not applicable when the run fails its precondition or is of a kind it does not apply
    to; else measured and judged."""
    reason = (spec.requires(run) if spec.requires is not None else None) or spec.not_for.get(run.kind)
    measured = Measured(not_applicable=reason) if reason else spec.measure(run, cfg)
    base = dict(number=spec.number, key=spec.key, title=spec.title, scope=spec.scope, source=spec.source,
                cite=spec.cite, figures=spec.figures)
    if measured.not_applicable:
        return Claim(**base, verdict=NA, reason=measured.not_applicable, numbers=measured.numbers,
                     layers=measured.layers, runs=0, measured=False)
    verdict, reason = spec.judge(measured.numbers, cfg)
    return Claim(**base, verdict=verdict, reason=reason, numbers=measured.numbers, layers=measured.layers)


def evaluate_run(run: RunData, cfg: ReportConfig) -> list[Claim]:
    """Every claim for one run."""
    return [evaluate(spec, run, cfg) for spec in CLAIMS]


def _mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan, math.nan
    with np.errstate(invalid="ignore", over="ignore"):
        mean = float(np.mean(finite))
        std = float(np.std(finite, ddof=1)) if len(finite) > 1 else math.nan
    return mean, std


def aggregate(spec: ClaimSpec, claims: list[Claim], cfg: ReportConfig) -> Claim:
    """One claim over a sweep's runs: mean ± std of every number over the runs it applies to; verdict on the means."""
    base = dict(number=spec.number, key=spec.key, title=spec.title, scope=spec.scope, source=spec.source,
                cite=spec.cite, figures=spec.figures)
    applicable = [c for c in claims if c.measured]
    if not applicable:
        reasons = "; ".join(dict.fromkeys(c.reason for c in claims))
        return Claim(**base, verdict=NA, reason=reasons, runs=0, measured=False)
    numbers, std = {}, {}
    for key in dict.fromkeys(k for c in applicable for k in c.numbers):
        numbers[key], std[key] = _mean_std([c.numbers.get(key, math.nan) for c in applicable])
    layers: dict[int, dict[str, float]] = {}
    layers_std: dict[int, dict[str, float]] = {}
    for layer in sorted({layer for c in applicable for layer in c.layers}):
        keys = dict.fromkeys(k for c in applicable for k in c.layers.get(layer, {}))
        pairs = {k: _mean_std([c.layers.get(layer, {}).get(k, math.nan) for c in applicable]) for k in keys}
        layers[layer] = {k: p[0] for k, p in pairs.items()}
        layers_std[layer] = {k: p[1] for k, p in pairs.items()}
    verdict, reason = spec.judge(numbers, cfg)
    reason = f"on the mean over {len(applicable)} run(s): {reason}"
    if len(applicable) < len(claims):
        reason += f" ({len(claims) - len(applicable)} run(s) not applicable)"
    return Claim(**base, verdict=verdict, reason=reason, numbers=numbers, layers=layers, std=std,
                 layers_std=layers_std, runs=len(applicable))
