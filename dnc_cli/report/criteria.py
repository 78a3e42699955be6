"""How `dnc report` turns numbers into verdicts: each verdict is a list of `Criterion`s, a measured number against
a threshold of ReportConfig, each shown with the threshold at which it would flip. Every threshold is the tool's
choice (PAPER.md, "Claims and where they come from": the paper states none)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

HOLDS, FAILS, NA = "holds", "does not hold", "not applicable"
THRESHOLD_NOTE = "thresholds are the tool's choice (conf/report.yaml): the paper states none"


@dataclass
class Measured:
    """What a claim's measure returns: scalar numbers, per-layer numbers, or the reason it does not apply."""

    numbers: dict[str, float] = field(default_factory=dict)
    layers: dict[int, dict[str, float]] = field(default_factory=dict)
    not_applicable: str | None = None


@dataclass(frozen=True)
class Criterion:
    """One test of a verdict: `value` against the threshold `key` of ReportConfig (≥, or > when `strict`); the
    test changes its outcome when `key` crosses the measured value."""

    what: str
    value: float
    key: str
    threshold: float
    strict: bool = False

    @property
    def passes(self) -> bool:
        return self.value > self.threshold if self.strict else self.value >= self.threshold

    def text(self) -> str:
        # a ≥ test passes while the threshold is ≤ the value, a > test while it is < the value
        if self.passes:
            change, op = "fail", "≥" if self.strict else ">"
        else:
            change, op = "pass", "<" if self.strict else "≤"
        return (f"{self.what} = {fmt(self.value)} (needs {'>' if self.strict else '≥'} {fmt(self.threshold)}, "
                f"`{self.key}`: {'passes' if self.passes else 'fails'}, would {change} at `{self.key}` {op} "
                f"{fmt(self.value)})")


def decide(criteria: list[Criterion], context: str = "") -> tuple[str, str]:
    """The verdict of a list of criteria (holds when every one passes) and its reason, each criterion with its
    measured number, threshold and flip value."""
    verdict = HOLDS if all(c.passes for c in criteria) else FAILS
    parts = [c.text() for c in criteria]
    return verdict, (f"{context}: " if context else "") + "; ".join(parts) + f" [{THRESHOLD_NOTE}]"


def majority_flip(shares: list[float], majority: float) -> float:
    """The per-layer share threshold t at which "a share of layers > majority has share ≥ t" flips: with the shares
    sorted high to low, the m-th largest, m = ⌊majority·n⌋ + 1 layers being the fewest that make a majority."""
    ranked = sorted(shares, reverse=True)
    needed = math.floor(majority * len(ranked)) + 1
    return ranked[needed - 1] if needed <= len(ranked) else math.nan


def fmt(x: float) -> str:
    """3 significant digits; whole numbers (epochs, counts) in full; nan as —, inf as ∞."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    if float(x).is_integer() and abs(x) < 1e6:
        return str(int(x))
    return f"{x:.3g}"


def ratio(before: float, after: float) -> float:
    """The factor a quantity fell by (before / after): inf when it reached 0, nan when undefined."""
    if not (math.isfinite(before) and math.isfinite(after)):
        return math.nan
    if after == 0:
        return math.inf if before > 0 else math.nan
    return before / after


def log_drop(before: float, after: float) -> float:
    return math.log(before) - math.log(after) if before > 0 and after > 0 else math.nan


def mean_finite(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def horizon_epoch(epochs, run, cfg) -> int:
    """Where P1-P3 are judged: the last checkpoint at or before `paper_horizon` (else the first). At the last
    checkpoint when paper_horizon is null, and for random labels, which the paper never trained on."""
    epochs = sorted(int(e) for e in epochs)
    if cfg.paper_horizon is None or run.random_labels:
        return epochs[-1]
    within = [e for e in epochs if e <= cfg.paper_horizon]
    return within[-1] if within else epochs[0]
