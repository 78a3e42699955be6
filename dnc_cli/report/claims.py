"""The paper's claims (PAPER.md), each as one pure function that measures a run's numbers and one that judges them
against the thresholds of `ReportConfig` (dnc_cli/config.py, the only place they live):

1. neural collapse through overtraining     (last hidden layer: first checkpoint, TPT, end)
2. deep neural collapse                     (NC1 falls with depth at the final checkpoint)
3. where collapse happens                   (share of each layer's log-NC1 drop at input -> S Vᵀ vs the ReLU)
4. the Neural Feature Ansatz                (final corr(WᵀW, AGOP^α) per layer, and whether it rose)
5. Deep RFM                                 (NC1/NC2 fall over depth; share of each layer's drop at the AGOP step)
6. random labels                            (TPT reached; NC1 still falling after it)

`CLAIMS` registers them with, per kind of run (dnc_cli/runs.py), why a claim does not apply to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from dnc_cli.config import NFA_FORMS, ReportConfig
from dnc_cli.report.run_data import RunData
from dnc_cli.runs import DEEP_RFM, NETWORK
from dnc_cli.tables import RFM_STAGES, SVD_STAGES

HOLDS, FAILS, NA = "holds", "does not hold", "not applicable"
COURSE_METRICS = ("nc1_trace", "nc1", "nc2", "nc2_gram", "nc3", "nc4")  # claim 1, last hidden layer
DEPTH_METRICS = ("nc1_trace", "nc1", "nc2")  # claim 2, per layer


@dataclass
class Measured:
    """What a claim's measure returns: scalar numbers, per-layer numbers, or the reason it does not apply."""

    numbers: dict[str, float] = field(default_factory=dict)
    layers: dict[int, dict[str, float]] = field(default_factory=dict)
    not_applicable: str | None = None


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


def _mean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def _hidden_layers(run: RunData, split: str, metric: str) -> list[int]:
    return sorted(int(x) for x in run.rows(split, "", metric)["layer"].unique() if x >= 1)


def _course(run: RunData, cfg: ReportConfig, metrics: tuple[str, ...]) -> Measured:
    """The last hidden layer's metrics at the first checkpoint, the TPT checkpoint and the end (claims 1 and 6)."""
    form = cfg.nc1_form
    layers = _hidden_layers(run, cfg.split, form)
    if not layers:
        return Measured(not_applicable=f"no per-layer {form} ({cfg.split} split) in the table: run `dnc analyze` "
                                       "with families including nc")
    last = layers[-1]
    epochs = sorted(int(e) for e in run.rows(cfg.split, "", form).query("layer == @last")["epoch"].unique())
    first, end, tpt = epochs[0], epochs[-1], run.tpt_epoch
    tpt_checkpoint = next((e for e in epochs if tpt is not None and e >= tpt), None)
    after_tpt = tpt_checkpoint is not None and tpt_checkpoint < end
    numbers = {"layer": last, "first_epoch": first, "tpt_epoch": math.nan if tpt is None else tpt,
               "tpt_checkpoint": math.nan if tpt_checkpoint is None else tpt_checkpoint, "end_epoch": end}
    for metric in metrics:
        at = {name: run.value(cfg.split, e, last, "", metric) if e is not None else math.nan
              for name, e in (("first", first), ("tpt", tpt_checkpoint), ("end", end))}
        if all(math.isnan(v) for v in at.values()):
            continue
        numbers |= {f"{metric}|{name}": v for name, v in at.items()}
        numbers[f"{metric}|fall_from_first"] = ratio(at["first"], at["end"])
        numbers[f"{metric}|fall_after_tpt"] = ratio(at["tpt"], at["end"]) if after_tpt else math.nan
    return Measured(numbers)


def measure_overtraining(run: RunData, cfg: ReportConfig) -> Measured:
    return _course(run, cfg, COURSE_METRICS)


def judge_overtraining(n: dict[str, float], cfg: ReportConfig) -> tuple[str, str]:
    form = cfg.nc1_form
    if math.isnan(n["tpt_epoch"]):
        return NA, "the TPT was not reached (train accuracy never 100%): there is no overtraining to judge"
    fall, after = n.get(f"{form}|fall_from_first", math.nan), n.get(f"{form}|fall_after_tpt", math.nan)
    if math.isnan(after):
        return NA, (f"no analysed checkpoint after the TPT (epoch {fmt(n['tpt_epoch'])}): train past it "
                    "(epochs_after_tpt) to judge overtraining")
    verdict = HOLDS if fall >= cfg.collapse_factor and after >= cfg.post_tpt_factor else FAILS
    return verdict, (f"NC1 ({form}) of hidden layer {fmt(n['layer'])} fell {fmt(fall)}× from epoch "
                     f"{fmt(n['first_epoch'])} to {fmt(n['end_epoch'])} (needs ≥ {cfg.collapse_factor:g}×) and "
                     f"{fmt(after)}× after the TPT at epoch {fmt(n['tpt_epoch'])} (needs ≥ {cfg.post_tpt_factor:g}×)")


def measure_depth(run: RunData, cfg: ReportConfig) -> Measured:
    form = cfg.nc1_form
    own = run.rows(cfg.split, "", form)
    if own.empty:
        return Measured(not_applicable=f"no per-layer {form} ({cfg.split} split) in the table")
    final = int(own["epoch"].max())
    layers = {int(layer): {m: run.value(cfg.split, final, int(layer), "", m) for m in DEPTH_METRICS}
              for layer in sorted(own.query("epoch == @final")["layer"].unique())}
    hidden = [layer for layer in layers if layer >= 1]
    if len(hidden) < 2:
        return Measured(layers=layers, not_applicable="fewer than 2 hidden layers: no depth to fall over")
    values = [layers[layer][form] for layer in hidden]
    steps = [b < a for a, b in zip(values, values[1:]) if math.isfinite(a) and math.isfinite(b)]
    numbers = {"final_epoch": final, "falling_steps": float(np.mean(steps)) if steps else math.nan,
               "fall_first_to_last": ratio(values[0], values[-1])}
    return Measured(numbers, layers)


def judge_depth(n: dict[str, float], cfg: ReportConfig) -> tuple[str, str]:
    share, fall = n["falling_steps"], n["fall_first_to_last"]
    if math.isnan(share):
        return NA, f"{cfg.nc1_form} is not finite in the hidden layers"
    verdict = HOLDS if share > cfg.majority and fall > 1 else FAILS
    return verdict, (f"at epoch {fmt(n['final_epoch'])}, NC1 ({cfg.nc1_form}) falls in {share:.0%} of the "
                     f"layer→layer steps (needs > {cfg.majority:.0%}) and {fmt(fall)}× from the first to the last "
                     "hidden layer (needs > 1×)")


def measure_where(run: RunData, cfg: ReportConfig) -> Measured:
    form = cfg.nc1_form
    rows = run.rows(cfg.split, "right", form)
    if rows.empty:
        return Measured(not_applicable="no SVD-decomposed NC1 (stages input/right/left/activation) in the table: "
                                       "run `dnc analyze` with families including svd")
    final = int(rows["epoch"].max())
    layers, shares = {}, []
    for layer in sorted(int(x) for x in rows.query("epoch == @final")["layer"].unique()):
        v = {stage: run.value(cfg.split, final, layer, stage, form) for stage in SVD_STAGES}
        total = log_drop(v["input"], v["activation"])
        row = v | {"fall": ratio(v["input"], v["activation"]), "linear_share": math.nan,
                   "nonlinear_share": math.nan}
        if total >= math.log(cfg.min_layer_fall):  # nan compares False: no reduction, not judged
            row["linear_share"] = log_drop(v["input"], v["right"]) / total
            row["nonlinear_share"] = log_drop(v["left"], v["activation"]) / total
            shares.append(row["linear_share"])
        layers[layer] = row
    numbers = {"final_epoch": final, "layers": len(layers), "layers_judged": len(shares),
               "linear_dominant": float(np.mean([s >= cfg.linear_share for s in shares])) if shares else math.nan,
               "mean_linear_share": _mean(r["linear_share"] for r in layers.values()),
               "mean_nonlinear_share": _mean(r["nonlinear_share"] for r in layers.values())}
    return Measured(numbers, layers)


def judge_where(n: dict[str, float], cfg: ReportConfig) -> tuple[str, str]:
    if math.isnan(n["linear_dominant"]):
        return NA, (f"no reduction: in no layer did {cfg.nc1_form} fall by ≥ {cfg.min_layer_fall:g}× from input to "
                    f"activation at epoch {fmt(n['final_epoch'])}")
    verdict = HOLDS if n["linear_dominant"] > cfg.majority else FAILS
    return verdict, (f"at epoch {fmt(n['final_epoch'])}, input → S Vᵀ carries ≥ {cfg.linear_share:.0%} of the "
                     f"log-{cfg.nc1_form} drop in {n['linear_dominant']:.0%} of the {fmt(n['layers_judged'])} layers "
                     f"with a reduction (needs > {cfg.majority:.0%}); mean share: linear "
                     f"{n['mean_linear_share']:.0%}, nonlinearity {n['mean_nonlinear_share']:.0%}")


def measure_nfa(run: RunData, cfg: ReportConfig) -> Measured:
    all_nfa = run.rows("train", "")
    nfa = all_nfa[all_nfa["metric"].str.startswith("nfa_corr_")]
    if nfa.empty:
        return Measured(not_applicable="no NFA correlations in the table: run `dnc analyze` with families including "
                                       "nfa")
    metrics = sorted(nfa["metric"].unique(), key=lambda m: float(m.removeprefix("nfa_corr_")))
    decisive = f"nfa_corr_{cfg.nfa_power:g}"
    if decisive not in metrics:
        return Measured(not_applicable=f"no {decisive} in the table (it has {', '.join(metrics)}): set nfa_power")
    epochs = sorted(int(e) for e in nfa.query("metric == @decisive")["epoch"].unique())
    first, final = epochs[0], epochs[-1]
    layers: dict[int, dict[str, float]] = {}
    numbers: dict[str, float] = {"first_epoch": first, "final_epoch": final}
    for metric in metrics:
        alpha = metric.removeprefix("nfa_corr_")
        for layer in sorted(int(x) for x in nfa.query("metric == @metric")["layer"].unique()):
            layers.setdefault(layer, {})
            layers[layer] |= {f"α={alpha}|first": run.value("train", first, layer, "", metric),
                              f"α={alpha}|final": run.value("train", final, layer, "", metric)}
        numbers[f"α={alpha}|first"] = _mean(row.get(f"α={alpha}|first", math.nan) for row in layers.values())
        numbers[f"α={alpha}|final"] = _mean(row.get(f"α={alpha}|final", math.nan) for row in layers.values())
    # the other NFA forms (dnc_cli/analyze/network.py `nfa_rows`), reported at the final checkpoint, never judged
    for form in NFA_FORMS[1:]:
        prefix = f"nfa_{form}_corr_"
        for metric in sorted(m for m in all_nfa["metric"].unique() if m.startswith(prefix)):
            key = f"{form} α={metric.removeprefix(prefix)}|final"
            for layer, row in layers.items():
                row[key] = run.value("train", final, layer, "", metric)
            numbers[key] = _mean(row[key] for row in layers.values())
    alpha = f"α={cfg.nfa_power:g}"
    numbers["rise"] = numbers[f"{alpha}|final"] - numbers[f"{alpha}|first"] if final > first else math.nan
    rose = [row[f"{alpha}|final"] > row[f"{alpha}|first"] for row in layers.values()
            if f"{alpha}|final" in row and math.isfinite(row[f"{alpha}|final"] - row[f"{alpha}|first"])]
    numbers["rose_layers"] = float(np.mean(rose)) if rose and final > first else math.nan
    return Measured(numbers, layers)


def judge_nfa(n: dict[str, float], cfg: ReportConfig) -> tuple[str, str]:
    alpha = f"α={cfg.nfa_power:g}"
    final, first, rise = n[f"{alpha}|final"], n[f"{alpha}|first"], n["rise"]
    if math.isnan(final):
        return NA, f"corr(WᵀW, AGOP^{cfg.nfa_power:g}) is not finite"
    high = final >= cfg.nfa_min_corr
    text = (f"mean over layers of corr(WᵀW, AGOP^{cfg.nfa_power:g}) at epoch {fmt(n['final_epoch'])} is {final:.3f} "
            f"(needs ≥ {cfg.nfa_min_corr:g})")
    if math.isnan(rise):
        return (HOLDS if high else FAILS), text + "; one checkpoint only, so whether it rose is not measured"
    verdict = HOLDS if high and rise > 0 else FAILS
    return verdict, text + (f" and it {'rose' if rise > 0 else 'did not rise'} from {first:.3f} at epoch "
                            f"{fmt(n['first_epoch'])} ({rise:+.3f}; needs a rise)")


def measure_rfm(run: RunData, cfg: ReportConfig) -> Measured:
    form = cfg.nc1_form
    rows = run.rows(cfg.split, "input", form)
    if rows.empty:
        return Measured(not_applicable=f"no Deep RFM stage rows (input/agop/activation, {form}, {cfg.split} split)")
    epoch = int(rows["epoch"].max())
    depth = sorted(int(x) for x in rows.query("epoch == @epoch")["layer"].unique())
    layers: dict[int, dict[str, float]] = {layer: {} for layer in depth}
    numbers: dict[str, float] = {"layers": len(depth)}
    shares: dict[str, list[float]] = {}
    for metric in (form, "nc2"):
        v = {(layer, stage): run.value(cfg.split, epoch, layer, stage, metric) for layer in depth
             for stage in RFM_STAGES}
        for i, layer in enumerate(depth):
            # a layer's drop: its input to the next layer's input (the last layer: to its own output)
            end = v[(depth[i + 1], "input")] if i + 1 < len(depth) else v[(layer, "activation")]
            total = log_drop(v[(layer, "input")], end)
            share = (log_drop(v[(layer, "input")], v[(layer, "agop")]) / total
                     if total >= math.log(cfg.min_layer_fall) else math.nan)
            layers[layer] |= {f"{metric}|{stage}": v[(layer, stage)] for stage in RFM_STAGES}
            layers[layer][f"{metric}|agop_share"] = share
            shares.setdefault(metric, []).append(share)
        numbers[f"{metric}|first_input"] = v[(depth[0], "input")]
        numbers[f"{metric}|last"] = v[(depth[-1], "activation")]
        numbers[f"{metric}|fall"] = ratio(numbers[f"{metric}|first_input"], numbers[f"{metric}|last"])
        numbers[f"{metric}|mean_agop_share"] = _mean(shares[metric])
    judged = [s for s in shares[form] if not math.isnan(s)]
    numbers["layers_judged"] = len(judged)
    numbers["agop_dominant"] = float(np.mean([s >= cfg.agop_share for s in judged])) if judged else math.nan
    for layer in depth:
        accuracy = run.value(cfg.split, epoch, layer, "", "kernel_acc")
        if not math.isnan(accuracy):
            layers[layer]["kernel_acc"] = accuracy
    return Measured(numbers, layers)


def judge_rfm(n: dict[str, float], cfg: ReportConfig) -> tuple[str, str]:
    form = cfg.nc1_form
    nc1, nc2, dominant = n[f"{form}|fall"], n.get("nc2|fall", math.nan), n["agop_dominant"]
    falls = (f"over {fmt(n['layers'])} layers {form} fell {fmt(nc1)}× and nc2 {fmt(nc2)}× (each needs ≥ "
             f"{cfg.rfm_fall_factor:g}×)")
    if math.isnan(dominant):
        return FAILS, falls + f"; no layer's {form} fell by ≥ {cfg.min_layer_fall:g}×, so no drop to attribute"
    ok = nc1 >= cfg.rfm_fall_factor and nc2 >= cfg.rfm_fall_factor and dominant > cfg.majority
    return (HOLDS if ok else FAILS), (falls + f"; input → M^½ carries ≥ {cfg.agop_share:.0%} of the layer's "
                                      f"log-{form} drop in {dominant:.0%} of the {fmt(n['layers_judged'])} layers with "
                                      f"a reduction (needs > {cfg.majority:.0%})")


def has_random_labels(run: RunData) -> str | None:
    """Claim 6's precondition: the reason it does not apply to a run without random labels."""
    return None if run.random_labels else "not a random-label run (dataset.labels.random_fraction = 0)"


def measure_random(run: RunData, cfg: ReportConfig) -> Measured:
    course = _course(run, cfg, (cfg.nc1_form,))
    if course.not_applicable:
        return course
    numbers = {"random_fraction": run.random_fraction, "n_relabelled": run.n_relabelled,
               "tpt_reached": float(run.tpt_epoch is not None)} | course.numbers
    return Measured(numbers)


def judge_random(n: dict[str, float], cfg: ReportConfig) -> tuple[str, str]:
    form = cfg.nc1_form
    if not n["tpt_reached"] > cfg.majority:
        return FAILS, f"the TPT was not reached (train accuracy never 100%; reached in {n['tpt_reached']:.0%} of runs)"
    after = n.get(f"{form}|fall_after_tpt", math.nan)
    if math.isnan(after):
        return NA, (f"TPT reached at epoch {fmt(n['tpt_epoch'])} but no analysed checkpoint after it: train past it "
                    "(epochs_after_tpt)")
    verdict = HOLDS if after >= cfg.still_falling_factor else FAILS
    return verdict, (f"TPT reached at epoch {fmt(n['tpt_epoch'])}; after it NC1 ({form}) of hidden layer "
                     f"{fmt(n['layer'])} fell {fmt(after)}× by epoch {fmt(n['end_epoch'])} "
                     f"(needs ≥ {cfg.still_falling_factor:g}×)")


@dataclass(frozen=True)
class ClaimSpec:
    number: int
    key: str
    title: str
    figures: tuple[str, ...]
    measure: Callable[[RunData, ReportConfig], Measured]
    judge: Callable[[dict[str, float], ReportConfig], tuple[str, str]]
    headline: Callable[[ReportConfig], tuple[str, ...]]  # the numbers a sweep's per-run table shows
    row_name: str = ""  # header of the first column of the "a|b" table
    not_for: dict[str, str] = field(default_factory=dict)  # kind of run -> why the claim does not apply to it
    requires: Callable[[RunData], str | None] | None = None  # a precondition: the reason when a run fails it


CLAIMS = (
    ClaimSpec(1, "overtraining", "Neural collapse through overtraining", ("nc_metrics", "training"),
              measure_overtraining, judge_overtraining,
              lambda c: ("tpt_epoch", f"{c.nc1_form}|fall_from_first", f"{c.nc1_form}|fall_after_tpt"), "metric",
              not_for={DEEP_RFM: "a Deep RFM is not trained (see claim 5)"}),
    ClaimSpec(2, "depth", "Deep neural collapse: NC1 falls with depth", ("layers",), measure_depth, judge_depth,
              lambda c: ("falling_steps", "fall_first_to_last"),
              not_for={DEEP_RFM: "a Deep RFM's collapse over depth is claim 5"}),
    ClaimSpec(3, "where", "Where collapse happens: the right singular structure, not the ReLU", ("svd_nc1",),
              measure_where, judge_where, lambda c: ("linear_dominant", "mean_linear_share", "mean_nonlinear_share"),
              not_for={DEEP_RFM: "a Deep RFM has no weight matrices to decompose (see claim 5)"}),
    ClaimSpec(4, "nfa", "Neural Feature Ansatz: WᵀW ∝ AGOP^α", ("nfa",), measure_nfa, judge_nfa,
              lambda c: (f"α={c.nfa_power:g}|final", "rise"), "AGOP power (mean over layers)",
              not_for={DEEP_RFM: "a Deep RFM has no trained weights (its AGOP is the feature matrix itself)"}),
    ClaimSpec(5, "rfm", "Deep RFM: collapse over depth, at the AGOP projection", ("rfm_layers", "gram"),
              measure_rfm, judge_rfm, lambda c: (f"{c.nc1_form}|fall", "nc2|fall", "agop_dominant"), "metric",
              not_for={NETWORK: "not a Deep RFM run"}),
    ClaimSpec(6, "random_labels", "Random labels: TPT reached, NC1 still falling after it", ("nc_metrics", "training"),
              measure_random, judge_random, lambda c: ("tpt_reached", "tpt_epoch", f"{c.nc1_form}|fall_after_tpt"),
              "metric", not_for={DEEP_RFM: "a Deep RFM is not trained: there is no TPT"}, requires=has_random_labels),
)
