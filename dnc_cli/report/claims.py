"""What `dnc report` judges (PAPER.md, "Claims and where they come from"): each claim is one pure function that
measures a run's numbers and one that judges them (dnc_cli/report/criteria.py; the NFA's in nfa.py) against the
thresholds of `ReportConfig`, and carries its source. The paper's claims: P1 deep neural collapse, P2 collapse at
the right singular structure, P3 the NFA (all three at the paper's horizon), P4 Deep RFM curve by curve. Hypotheses
beyond it: B1 collapse after the TPT (Papyan et al. 2020), B2 random labels (the talk slides), B3 the NFA after
epoch 250. `CLAIMS` registers them with, per kind of run (dnc_cli/runs.py), why a claim does not apply to it."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from dnc_cli.config import ReportConfig
from dnc_cli.report.criteria import (
    FAILS,
    NA,
    Criterion,
    Measured,
    decide,
    fmt,
    horizon_epoch,
    log_drop,
    majority_flip,
    mean_finite,
    ratio,
)
from dnc_cli.report.nfa import judge_nfa, judge_nfa_long, measure_nfa, measure_nfa_long
from dnc_cli.report.run_data import RunData
from dnc_cli.runs import DEEP_RFM, NETWORK
from dnc_cli.tables import RFM_STAGES, SVD_STAGES

PAPER, BEYOND = "paper", "beyond"  # a claim's scope: the paper's own, or a hypothesis beyond it
COURSE_METRICS = ("nc1_trace", "nc1", "nc2", "nc2_gram", "nc3", "nc4")  # B1, last hidden layer
DEPTH_METRICS = ("nc1_trace", "nc1", "nc2", "nc2_gram")  # P1, per layer
# P4: the official deep_rfm.py's three curves, and the NC2 form it plots (PAPER.md, "Deep RFM")
RFM_CURVES = dict(zip(RFM_STAGES, ("X_l", "M^½X_l", "Φ(M^½X_l)"), strict=True))
RFM_NC2 = "nc2_gram"
def _hidden_layers(run: RunData, split: str, metric: str) -> list[int]:
    return sorted(int(x) for x in run.rows(split, "", metric)["layer"].unique() if x >= 1)


def _at_end(n: dict[str, float], what: str, key: str) -> str:
    """The judged number again at the run's last checkpoint, when that is later: reported, not judged."""
    if "end_epoch" not in n:
        return ""
    return f"; at the end (epoch {fmt(n['end_epoch'])}) {what} {fmt(n[key])} (reported, not judged)"


# ------------------------------------------------------------------------------------------- the paper's claims
def _depth_at(run: RunData, cfg: ReportConfig, epoch: int) -> Measured:
    own = run.rows(cfg.split, "", cfg.nc1_form)
    layers = {int(layer): {m: run.value(cfg.split, epoch, int(layer), "", m) for m in DEPTH_METRICS}
              for layer in sorted(own.query("epoch == @epoch")["layer"].unique())}
    hidden = [layer for layer in layers if layer >= 1]
    if len(hidden) < 2:
        return Measured(layers=layers, not_applicable="fewer than 2 hidden layers: no depth to fall over")
    values = [layers[layer][cfg.nc1_form] for layer in hidden]
    steps = [b < a for a, b in zip(values, values[1:]) if math.isfinite(a) and math.isfinite(b)]
    numbers = {"judged_epoch": epoch, "falling_steps": float(np.mean(steps)) if steps else math.nan,
               "fall_first_to_last": ratio(values[0], values[-1]),
               "nc2_fall_first_to_last": ratio(layers[hidden[0]]["nc2"], layers[hidden[-1]]["nc2"])}
    return Measured(numbers, layers)


def measure_depth(run: RunData, cfg: ReportConfig) -> Measured:
    epochs = run.rows(cfg.split, "", cfg.nc1_form)["epoch"].unique()
    if not len(epochs):
        return Measured(not_applicable=f"no per-layer {cfg.nc1_form} ({cfg.split} split) in the table")
    measured = _depth_at(run, cfg, horizon_epoch(epochs, run, cfg))
    end = int(max(epochs))
    if not measured.not_applicable and end > measured.numbers["judged_epoch"]:
        measured.numbers |= {"end_epoch": end,
                             "end_fall_first_to_last": _depth_at(run, cfg, end).numbers["fall_first_to_last"]}
    return measured


def judge_depth(n: dict[str, float], cfg: ReportConfig) -> tuple[str, str]:
    share, fall = n["falling_steps"], n["fall_first_to_last"]
    if math.isnan(share):
        return NA, f"{cfg.nc1_form} is not finite in the hidden layers"
    verdict, reason = decide([Criterion(f"share of layer→layer steps where NC1 ({cfg.nc1_form}) falls", share,
                                        "majority", cfg.majority, strict=True),
                              Criterion("NC1 fall from the first to the last hidden layer (×)", fall,
                                        "depth_fall_factor", cfg.depth_fall_factor, strict=True)],
                             f"at epoch {fmt(n['judged_epoch'])}")
    return verdict, reason + _at_end(n, "the fall is", "end_fall_first_to_last")


def _where_at(run: RunData, cfg: ReportConfig, epoch: int) -> Measured:
    rows = run.rows(cfg.split, "right", cfg.nc1_form)
    layers, shares = {}, []
    for layer in sorted(int(x) for x in rows.query("epoch == @epoch")["layer"].unique()):
        v = {stage: run.value(cfg.split, epoch, layer, stage, cfg.nc1_form) for stage in SVD_STAGES}
        total = log_drop(v["input"], v["activation"])
        row = v | {"fall": ratio(v["input"], v["activation"]), "linear_share": math.nan,
                   "nonlinear_share": math.nan}
        if total >= math.log(cfg.min_layer_fall):  # nan compares False: no reduction, not judged
            row["linear_share"] = log_drop(v["input"], v["right"]) / total
            row["nonlinear_share"] = log_drop(v["left"], v["activation"]) / total
            shares.append(row["linear_share"])
        layers[layer] = row
    numbers = {"judged_epoch": epoch, "layers": len(layers), "layers_judged": len(shares),
               "linear_dominant": float(np.mean([s >= cfg.linear_share for s in shares])) if shares else math.nan,
               "linear_share_flip": majority_flip(shares, cfg.majority),
               "mean_linear_share": mean_finite(r["linear_share"] for r in layers.values()),
               "mean_nonlinear_share": mean_finite(r["nonlinear_share"] for r in layers.values())}
    return Measured(numbers, layers)


def measure_where(run: RunData, cfg: ReportConfig) -> Measured:
    epochs = run.rows(cfg.split, "right", cfg.nc1_form)["epoch"].unique()
    if not len(epochs):
        return Measured(not_applicable="no SVD-decomposed NC1 (stages input/right/left/activation) in the table: "
                                       "run `dnc analyze` with families including svd")
    measured = _where_at(run, cfg, horizon_epoch(epochs, run, cfg))
    end = int(max(epochs))
    if end > measured.numbers["judged_epoch"]:
        measured.numbers |= {"end_epoch": end,
                             "end_mean_linear_share": _where_at(run, cfg, end).numbers["mean_linear_share"]}
    return measured


def judge_where(n: dict[str, float], cfg: ReportConfig) -> tuple[str, str]:
    if math.isnan(n["linear_dominant"]):
        return NA, (f"no reduction: in no layer did {cfg.nc1_form} fall by ≥ {cfg.min_layer_fall:g}× from input to "
                    f"activation at epoch {fmt(n['judged_epoch'])}")
    verdict, reason = decide(
        [Criterion(f"share of the {fmt(n['layers_judged'])} layers with a reduction whose input → S Vᵀ step carries "
                   f"≥ `linear_share` = {cfg.linear_share:.0%} of the log-NC1 drop", n["linear_dominant"], "majority",
                   cfg.majority, strict=True)],
        f"at epoch {fmt(n['judged_epoch'])}")
    return verdict, reason + (f"; that share crosses `majority` at `linear_share` = {fmt(n['linear_share_flip'])}; "
                              f"mean share: linear {n['mean_linear_share']:.0%}, nonlinearity "
                              f"{n['mean_nonlinear_share']:.0%}" + _at_end(n, "the mean linear share is",
                                                                           "end_mean_linear_share"))


def measure_rfm(run: RunData, cfg: ReportConfig) -> Measured:
    """Along each official curve (X_l, M^½X_l, Φ(M^½X_l)): NC1 and NC2 (mean-square form) from layer 1 to layer L,
    the Frobenius NC2 beside them, and the share of each layer's log-NC1 drop at the AGOP step."""
    form = cfg.nc1_form
    rows = run.rows(cfg.split, "input", form)
    if rows.empty:
        return Measured(not_applicable=f"no Deep RFM stage rows (input/agop/activation, {form}, {cfg.split} split)")
    epoch = int(rows["epoch"].max())
    depth = sorted(int(x) for x in rows.query("epoch == @epoch")["layer"].unique())
    if len(depth) < 2:
        return Measured(not_applicable="fewer than 2 Deep RFM layers: no depth to fall over")
    layers: dict[int, dict[str, float]] = {layer: {} for layer in depth}
    numbers: dict[str, float] = {"layers": len(depth)}
    for metric in (form, RFM_NC2, "nc2"):
        for stage, curve in RFM_CURVES.items():
            values = [run.value(cfg.split, epoch, layer, stage, metric) for layer in depth]
            for layer, value in zip(depth, values):
                layers[layer][f"{metric}|{curve}"] = value
            numbers[f"{metric}|{curve}"] = ratio(values[0], values[-1])
            # the geometric rate the theory predicts, as the mean factor per layer (reported, not judged)
            numbers[f"{metric} per layer|{curve}"] = ratio(values[0], values[-1]) ** (1 / (len(depth) - 1))
    shares = []
    for i, layer in enumerate(depth):
        # a layer's drop: its input to the next layer's input (the last layer: to its own output)
        start = run.value(cfg.split, epoch, layer, "input", form)
        end = (run.value(cfg.split, epoch, depth[i + 1], "input", form) if i + 1 < len(depth)
               else run.value(cfg.split, epoch, layer, "activation", form))
        total = log_drop(start, end)
        share = (log_drop(start, run.value(cfg.split, epoch, layer, "agop", form)) / total
                 if total >= math.log(cfg.min_layer_fall) else math.nan)
        layers[layer]["agop_share"] = share
        if not math.isnan(share):
            shares.append(share)
        accuracy = run.value(cfg.split, epoch, layer, "", "kernel_acc")
        if not math.isnan(accuracy):
            layers[layer]["kernel_acc"] = accuracy
    numbers["layers_judged"] = len(shares)
    numbers["agop_dominant"] = float(np.mean([s >= cfg.agop_share for s in shares])) if shares else math.nan
    numbers["agop_share_flip"] = majority_flip(shares, cfg.majority)
    numbers["mean_agop_share"] = mean_finite(shares)
    return Measured(numbers, layers)


def rfm_curve_criteria(n: dict[str, float], cfg: ReportConfig) -> list[Criterion]:
    """P4's falls: NC1 and the official NC2 along each of the three curves, from layer 1 to layer L."""
    return [Criterion(f"{name} fall along {curve}, layer 1 → {fmt(n['layers'])} (×)", n[f"{metric}|{curve}"],
                      "rfm_fall_factor", cfg.rfm_fall_factor)
            for curve in RFM_CURVES.values()
            for metric, name in ((cfg.nc1_form, f"NC1 ({cfg.nc1_form})"), (RFM_NC2, f"NC2 ({RFM_NC2})"))]


def judge_rfm(n: dict[str, float], cfg: ReportConfig) -> tuple[str, str]:
    criteria = rfm_curve_criteria(n, cfg)
    if math.isnan(n["agop_dominant"]):
        verdict, reason = decide(criteria)
        return FAILS, reason + f"; no layer's {cfg.nc1_form} fell by ≥ {cfg.min_layer_fall:g}×, so no drop to attribute"
    criteria.append(Criterion(f"share of the {fmt(n['layers_judged'])} layers with a reduction whose X → M^½X step "
                              f"carries ≥ `agop_share` = {cfg.agop_share:.0%} of the log-NC1 drop",
                              n["agop_dominant"], "majority", cfg.majority, strict=True))
    verdict, reason = decide(criteria)
    return verdict, reason + (f"; that share crosses `majority` at `agop_share` = {fmt(n['agop_share_flip'])} (a "
                              "share above 1: the AGOP step fell further than the whole layer, whose random features "
                              "raised NC1 again)")


# --------------------------------------------------------------------------------------------- beyond the paper
def _course(run: RunData, cfg: ReportConfig, metrics: tuple[str, ...]) -> Measured:
    """The last hidden layer's metrics at the first checkpoint, the TPT checkpoint and the end (B1 and B2)."""
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


def judge_overtraining(n: dict[str, float], cfg: ReportConfig) -> tuple[str, str]:
    form = cfg.nc1_form
    if math.isnan(n["tpt_epoch"]):
        return NA, "the TPT was not reached (train accuracy never 100%): there is no overtraining to judge"
    fall, after = n.get(f"{form}|fall_from_first", math.nan), n.get(f"{form}|fall_after_tpt", math.nan)
    if math.isnan(after):
        return NA, (f"no analysed checkpoint after the TPT (epoch {fmt(n['tpt_epoch'])}): train past it "
                    "(epochs_after_tpt) to judge overtraining")
    return decide([Criterion(f"NC1 ({form}) fall of hidden layer {fmt(n['layer'])}, epoch {fmt(n['first_epoch'])} "
                             f"→ {fmt(n['end_epoch'])} (×)", fall, "collapse_factor", cfg.collapse_factor),
                   Criterion(f"its fall after the TPT at epoch {fmt(n['tpt_epoch'])} (×)", after, "post_tpt_factor",
                             cfg.post_tpt_factor)])


def has_random_labels(run: RunData) -> str | None:  # B2's precondition
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
    return decide([Criterion(f"NC1 ({form}) fall of hidden layer {fmt(n['layer'])} after the TPT, epoch "
                             f"{fmt(n['tpt_epoch'])} → {fmt(n['end_epoch'])} (×)", after, "still_falling_factor",
                             cfg.still_falling_factor)])


@dataclass(frozen=True)
class ClaimSpec:
    number: str  # P1.. for the paper's claims, B1.. for hypotheses beyond it
    key: str
    title: str
    scope: str  # PAPER | BEYOND
    source: str  # where the claim comes from: the paper, an official script, the talk slides, or other work
    cite: str  # the source in a few words, for the verdict tables
    figures: tuple[str, ...]
    measure: Callable[[RunData, ReportConfig], Measured]
    judge: Callable[[dict[str, float], ReportConfig], tuple[str, str]]
    headline: Callable[[ReportConfig], tuple[str, ...]]  # the numbers a sweep's per-run table shows
    row_name: str = ""  # header of the first column of the "a|b" table
    not_for: dict[str, str] = field(default_factory=dict)  # kind of run -> why the claim does not apply to it
    requires: Callable[[RunData], str | None] | None = None  # a precondition: the reason when a run fails it


CLAIMS = (
    ClaimSpec("P1", "depth", "Deep neural collapse: NC1 falls with depth", PAPER,
              "the paper: abstract (deep neural collapse in trained networks) and its per-layer NC figures; "
              "official `nc_nn.py` measures NC1 of every layer's features every 10 epochs up to epoch 250",
              "the paper; `nc_nn.py`",
              ("layers",), measure_depth, judge_depth, lambda c: ("falling_steps", "fall_first_to_last"),
              not_for={DEEP_RFM: "a Deep RFM's collapse over depth is claim P4"}),
    ClaimSpec("P2", "where", "Where collapse happens: the right singular structure, not the ReLU", PAPER,
              "the paper: its SVD-decomposed NC1 figures; official `nc_nn.py` computes NC1 of h, S Vᵀh, U S Vᵀh and "
              "ReLU(U S Vᵀh) for every layer W = U S Vᵀ, and `gen_nn_plots.py` draws them",
              "the paper; `nc_nn.py`, `gen_nn_plots.py`",
              ("svd_nc1",), measure_where, judge_where,
              lambda c: ("linear_dominant", "mean_linear_share", "mean_nonlinear_share"),
              not_for={DEEP_RFM: "a Deep RFM has no weight matrices to decompose (see claim P4)"}),
    ClaimSpec("P3", "nfa", "Neural Feature Ansatz: WᵀW highly correlated with AGOP^½", PAPER,
              "the paper: the Neural Feature Ansatz and its NFA figures; official `nc_nn.py` computes "
              "corr(W_lᵀW_l, AGOP_l^½) (and AGOP^1) for every layer up to epoch 250",
              "the paper; `nc_nn.py`",
              ("nfa",), measure_nfa, judge_nfa, lambda c: (f"α={c.nfa_power:g}|judged", "rise"),
              "AGOP power (mean over layers)",
              not_for={DEEP_RFM: "a Deep RFM has no trained weights (its AGOP is the feature matrix itself)"}),
    ClaimSpec("P4", "rfm", "Deep RFM: NC1 and NC2 fall over the layers, at the AGOP projection", PAPER,
              "the paper: abstract (collapse 'as a consequence of the projection with the AGOP matrix computed at "
              "each layer') and its Deep RFM figures; official `deep_rfm.py` measures NC1 and NC2 (mean-square form) "
              "of X_l, M^½X_l and Φ(M^½X_l) at every layer and draws them as three semilog curves",
              "the paper (abstract); `deep_rfm.py`",
              ("rfm_curves", "rfm_layers", "gram"), measure_rfm, judge_rfm,
              lambda c: tuple(f"{m}|{curve}" for m in (c.nc1_form, RFM_NC2) for curve in RFM_CURVES.values())
              + ("agop_dominant",), "metric: fall layer 1 → L (×)",
              not_for={NETWORK: "not a Deep RFM run"}),
    ClaimSpec("B1", "overtraining", "Collapse continues after the TPT", BEYOND,
              "beyond the paper: Papyan, Han & Donoho (2020, PNAS); the official runs stop at epoch 250 and never "
              "compute train accuracy or the terminal phase (TPT)", "Papyan, Han & Donoho 2020",
              ("nc_metrics", "training"),
              lambda run, cfg: _course(run, cfg, COURSE_METRICS), judge_overtraining,
              lambda c: ("tpt_epoch", f"{c.nc1_form}|fall_from_first", f"{c.nc1_form}|fall_after_tpt"), "metric",
              not_for={DEEP_RFM: "a Deep RFM is not trained (see claim P4)"}),
    ClaimSpec("B2", "random_labels", "Random labels: TPT reached, NC1 still falling after it", BEYOND,
              "beyond the paper: the talk slides on the paper (J. Setpal, 2024); the paper has no random-label "
              "experiment", "talk slides, Setpal 2024", ("nc_metrics", "training"), measure_random, judge_random,
              lambda c: ("tpt_reached", "tpt_epoch", f"{c.nc1_form}|fall_after_tpt"), "metric",
              not_for={DEEP_RFM: "a Deep RFM is not trained: there is no TPT"}, requires=has_random_labels),
    ClaimSpec("B3", "nfa_long", "The NFA stays high long after the paper's horizon", BEYOND,
              "beyond the paper: the official runs stop at epoch 250, so the paper says nothing of the NFA later",
              "none: past the official 250 epochs", ("nfa",), measure_nfa_long, judge_nfa_long,
              lambda c: (f"α={c.nfa_power:g}|end", "change"),
              "AGOP power (mean over layers)",
              not_for={DEEP_RFM: "a Deep RFM has no trained weights"}),
)
