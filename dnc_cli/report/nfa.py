"""The Neural Feature Ansatz claims (PAPER.md, "AGOP and the NFA"): P3, corr(W_lᵀW_l, AGOP_l^½) is high at the
paper's horizon, and B3, beyond the paper, it stays high after it. The other NFA forms of `dnc analyze`
(dnc_cli/analyze/network.py `nfa_rows`) are reported beside them, never judged."""

from __future__ import annotations

import math

from dnc_cli.config import NFA_FORMS, ReportConfig
from dnc_cli.report.criteria import NA, Criterion, Measured, decide, fmt, horizon_epoch, mean_finite
from dnc_cli.report.run_data import RunData


def _nfa_table(run: RunData, cfg: ReportConfig):
    """The train split's paper-form NFA rows and their powers, or the reason there are none."""
    all_nfa = run.rows("train", "")
    nfa = all_nfa[all_nfa["metric"].str.startswith("nfa_corr_")]
    if nfa.empty:
        return all_nfa, None, [], "no NFA correlations in the table: run `dnc analyze` with families including nfa"
    metrics = sorted(nfa["metric"].unique(), key=lambda m: float(m.removeprefix("nfa_corr_")))
    decisive = f"nfa_corr_{cfg.nfa_power:g}"
    if decisive not in metrics:
        return all_nfa, nfa, metrics, f"no {decisive} in the table (it has {', '.join(metrics)}): set nfa_power"
    return all_nfa, nfa, metrics, None


def _nfa_at(run: RunData, all_nfa, metrics: list[str], epochs: dict[str, int]) -> Measured:
    """Every layer's NFA correlation per power at the named epochs, the means over layers, and the other NFA forms
    (dnc_cli/analyze/network.py `nfa_rows`) at the last named epoch, reported and never judged."""
    layers: dict[int, dict[str, float]] = {}
    numbers: dict[str, float] = {f"{name}_epoch": e for name, e in epochs.items()}
    for metric in metrics:
        alpha = metric.removeprefix("nfa_corr_")
        for layer in sorted(int(x) for x in all_nfa.query("metric == @metric")["layer"].unique()):
            row = layers.setdefault(layer, {})
            row |= {f"α={alpha}|{name}": run.value("train", e, layer, "", metric) for name, e in epochs.items()}
        for name in epochs:
            numbers[f"α={alpha}|{name}"] = mean_finite(row.get(f"α={alpha}|{name}", math.nan)
                                                       for row in layers.values())
    last_name, last = list(epochs.items())[-1]
    for form in NFA_FORMS[1:]:
        prefix = f"nfa_{form}_corr_"
        for metric in sorted(m for m in all_nfa["metric"].unique() if m.startswith(prefix)):
            key = f"{form} α={metric.removeprefix(prefix)}|{last_name}"
            for layer, row in layers.items():
                row[key] = run.value("train", last, layer, "", metric)
            numbers[key] = mean_finite(row[key] for row in layers.values())
    return Measured(numbers, layers)


def measure_nfa(run: RunData, cfg: ReportConfig) -> Measured:
    all_nfa, nfa, metrics, missing = _nfa_table(run, cfg)
    if missing:
        return Measured(not_applicable=missing)
    epochs = sorted(int(e) for e in nfa.query("metric == @metrics[0]")["epoch"].unique())
    judged = horizon_epoch(epochs, run, cfg)
    measured = _nfa_at(run, all_nfa, metrics, {"first": epochs[0], "judged": judged})
    alpha = f"α={cfg.nfa_power:g}"
    measured.numbers["rise"] = (measured.numbers[f"{alpha}|judged"] - measured.numbers[f"{alpha}|first"]
                                if judged > epochs[0] else math.nan)
    return measured


def _judge_high(n: dict[str, float], cfg: ReportConfig, at: str) -> tuple[str, str]:
    """P3 and B3: the mean over layers of corr(WᵀW, AGOP^α) at the checkpoint named `at` is >= nfa_min_corr."""
    value = n[f"α={cfg.nfa_power:g}|{at}"]
    if math.isnan(value):
        return NA, f"corr(WᵀW, AGOP^{cfg.nfa_power:g}) is not finite"
    return decide([Criterion(f"mean over layers of corr(WᵀW, AGOP^{cfg.nfa_power:g})", value, "nfa_min_corr",
                             cfg.nfa_min_corr)], f"at epoch {fmt(n[f'{at}_epoch'])}")


def judge_nfa(n: dict[str, float], cfg: ReportConfig) -> tuple[str, str]:
    verdict, reason = _judge_high(n, cfg, "judged")
    rise = n["rise"]
    if verdict == NA or math.isnan(rise):
        return verdict, reason
    return verdict, reason + f"; it moved {rise:+.3f} from epoch {fmt(n['first_epoch'])} (reported, not judged)"


def measure_nfa_long(run: RunData, cfg: ReportConfig) -> Measured:
    all_nfa, nfa, metrics, missing = _nfa_table(run, cfg)
    if missing:
        return Measured(not_applicable=missing)
    epochs = sorted(int(e) for e in nfa.query("metric == @metrics[0]")["epoch"].unique())
    if cfg.paper_horizon is None or epochs[-1] <= cfg.paper_horizon:
        return Measured(not_applicable=f"no analysed checkpoint after the paper's horizon (paper_horizon="
                                       f"{cfg.paper_horizon}; the last is epoch {epochs[-1]})")
    horizon = max(e for e in epochs if e <= cfg.paper_horizon) if epochs[0] <= cfg.paper_horizon else epochs[0]
    measured = _nfa_at(run, all_nfa, metrics, {"horizon": horizon, "end": epochs[-1]})
    alpha = f"α={cfg.nfa_power:g}"
    measured.numbers["change"] = measured.numbers[f"{alpha}|end"] - measured.numbers[f"{alpha}|horizon"]
    return measured


def judge_nfa_long(n: dict[str, float], cfg: ReportConfig) -> tuple[str, str]:
    verdict, reason = _judge_high(n, cfg, "end")
    if verdict == NA:
        return verdict, reason
    return verdict, reason + f"; {n['change']:+.3f} since epoch {fmt(n['horizon_epoch'])} (reported, not judged)"
