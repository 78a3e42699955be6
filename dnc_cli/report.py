"""`dnc report`: the paper's claims judged from a run's (or a sweep's) tables, written to `<run_dir>/report.md`.

Imports no torch (like `dnc plot`): it reads only `analysis/metrics.csv`, `summary.json`, `config_resolved.yaml` and
`train_log.csv`. For each claim of the paper (PAPER.md) one pure function measures the run's numbers and one judges
them against the thresholds of `ReportConfig` (conf/report.yaml), which are the only place the thresholds live:

1. neural collapse through overtraining     (last hidden layer: first checkpoint, TPT, end)
2. deep neural collapse                     (NC1 falls with depth at the final checkpoint)
3. where collapse happens                   (share of each layer's log-NC1 drop at input -> S Vᵀ vs the ReLU)
4. the Neural Feature Ansatz                (final corr(WᵀW, AGOP^α) per layer, and whether it rose)
5. Deep RFM                                 (NC1/NC2 fall over depth; share of each layer's drop at the AGOP step)
6. random labels                            (TPT reached; NC1 still falling after it)

Verdicts: `holds`, `does not hold`, `not applicable` (with the reason). A sweep (a folder holding several runs,
taken as seeds) gets one report: every number as mean ± std over the runs, the verdict judged on the means, and
each run's headline numbers and verdict in a table.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from dnc_cli.cli import fail
from dnc_cli.config import NFA_FORMS, ReportConfig, to_object
from dnc_cli.errors import UsageError
from dnc_cli.runs import CONFIG_FILE, find_runs, read_json, require_run_dir, write_text

HOLDS, FAILS, NA = "holds", "does not hold", "not applicable"
REPORT_FILE = "report.md"
NC1_FORMS = ("nc1_trace", "nc1")
SPLITS = ("train", "test")
COLUMNS = ["epoch", "split", "layer", "stage", "metric", "value"]
COURSE_METRICS = ("nc1_trace", "nc1", "nc2", "nc2_gram", "nc3", "nc4")  # claim 1, last hidden layer
DEPTH_METRICS = ("nc1_trace", "nc1", "nc2")  # claim 2, per layer
SVD_STAGES = ("input", "right", "left", "activation")
RFM_STAGES = ("input", "agop", "activation")
# config keys that say where or how a run executed, not what it is (ignored when comparing a sweep's runs)
RUN_ONLY_KEYS = ("seed", "resume", "progress", "device", "deterministic")

# headers and list labels of the numbers' keys (a key "a|b" is row a, column b of the claim's table)
LABELS = {
    "first": "first checkpoint", "tpt": "TPT checkpoint", "end": "end", "fall_from_first": "fall first→end (×)",
    "fall_after_tpt": "fall TPT→end (×)", "layer": "hidden layer", "first_epoch": "first checkpoint (epoch)",
    "tpt_epoch": "TPT (epoch of 100% train accuracy)", "tpt_checkpoint": "TPT checkpoint (epoch)",
    "end_epoch": "end (epoch)", "final_epoch": "final checkpoint (epoch)",
    "falling_steps": "share of layer→layer steps where NC1 falls",
    "fall_first_to_last": "NC1 fall first→last hidden layer (×)",
    "input": "input", "right": "right (S Vᵀ h)", "left": "left (W h)", "activation": "activation", "agop": "AGOP^½",
    "fall": "fall (×)", "linear_share": "linear share (input→right)", "nonlinear_share": "nonlinear share (left→act.)",
    "layers": "layers", "layers_judged": "layers with a reduction",
    "linear_dominant": "share of layers collapsing linearly",
    "mean_linear_share": "mean linear share", "mean_nonlinear_share": "mean nonlinear share",
    "rise": "rise of the mean correlation first→final", "rose_layers": "share of layers whose correlation rose",
    "first_input": "layer 1's input", "last": "last layer's output", "agop_share": "AGOP share",
    "agop_dominant": "share of layers collapsing at the AGOP",
    "mean_agop_share": "mean AGOP share", "kernel_acc": "kernel accuracy", "random_fraction": "random label fraction",
    "n_relabelled": "samples relabelled", "tpt_reached": "TPT reached (share of runs)",
}


# ---------------------------------------------------------------------------------------------------- reading a run
@dataclass
class RunData:
    """One run's tables; `value` looks a number up by split, epoch, layer, stage and metric (nan if absent)."""

    path: Path
    metrics: pd.DataFrame
    summary: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    train_log: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        grouped = self.metrics.groupby(COLUMNS[:5], sort=False)["value"].mean()
        self._lookup = dict(zip(grouped.index, grouped.to_numpy(dtype=float)))

    def value(self, split: str, epoch: int, layer: int, stage: str, metric: str) -> float:
        return float(self._lookup.get((epoch, split, layer, stage, metric), math.nan))

    def rows(self, split: str | None = None, stage: str | None = None, metric: str | None = None) -> pd.DataFrame:
        df = self.metrics
        for column, wanted in (("split", split), ("stage", stage), ("metric", metric)):
            if wanted is not None:
                df = df[df[column] == wanted]
        return df[np.isfinite(df["value"].to_numpy(dtype=float))]

    @property
    def model(self) -> str:
        return str(self.summary.get("model") or _get(self.config, "model.name") or "unknown")

    @property
    def is_rfm(self) -> bool:
        if self.model != "unknown":
            return self.model == "deep_rfm"
        own = self.rows(stage="")
        return not own["metric"].isin(NC1_FORMS).any()  # Deep RFM tables: stages only (and kernel_acc)

    @property
    def tpt_epoch(self) -> int | None:
        tpt = self.summary.get("tpt_epoch")
        return None if tpt is None or (isinstance(tpt, float) and math.isnan(tpt)) else int(tpt)

    @property
    def random_fraction(self) -> float:
        value = _get(self.config, "dataset.labels.random_fraction")
        return float(value) if value is not None else 0.0

    @property
    def n_relabelled(self) -> int:
        return int(self.summary.get("n_relabelled") or 0)

    @property
    def random_labels(self) -> bool:
        return self.n_relabelled > 0 or self.random_fraction > 0


def _get(config: dict, dotted: str):
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def read_metrics(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={"stage": str, "split": str, "metric": str}, keep_default_na=False)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise UsageError(f"{path} lacks column(s) {', '.join(missing)}; rerun `dnc analyze force=true`")
    df = df[COLUMNS].copy()
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    df["epoch"] = df["epoch"].astype(int)
    df["layer"] = df["layer"].astype(int)
    return df


def load_run(run_dir: Path, until_epoch: int | None = None) -> RunData:
    """A run's tables; UsageError when it has no analysis yet. `until_epoch`: the run as it stood at that epoch
    (later checkpoints, log rows and a later TPT left out)."""
    run_dir = Path(run_dir)
    path = run_dir / "analysis" / "metrics.csv"
    if not path.is_file():
        raise UsageError(f"no analysis in {run_dir} (no analysis/metrics.csv): run `dnc analyze run_dir={run_dir}` "
                         "first")
    summary = read_json(run_dir / "summary.json") if (run_dir / "summary.json").is_file() else {}
    config = {}
    if (run_dir / CONFIG_FILE).is_file():
        config = OmegaConf.to_container(OmegaConf.load(run_dir / CONFIG_FILE), resolve=False) or {}
    train_log = None
    if (run_dir / "train_log.csv").is_file():
        train_log = pd.read_csv(run_dir / "train_log.csv")
        train_log = train_log if len(train_log) and "epoch" in train_log.columns else None
    metrics = read_metrics(path)
    if until_epoch is not None:
        metrics = metrics[metrics["epoch"] <= until_epoch]
        train_log = None if train_log is None else train_log[train_log["epoch"] <= until_epoch]
        if (summary.get("tpt_epoch") or 0) > until_epoch:
            summary = summary | {"tpt_epoch": None}
        if metrics.empty:
            raise UsageError(f"until_epoch={until_epoch}: {run_dir} has no analysed checkpoint at or before it")
    return RunData(run_dir, metrics, summary, config, train_log)


def report_file(cfg: ReportConfig) -> str:
    return REPORT_FILE if cfg.until_epoch is None else f"report_until_epoch{cfg.until_epoch}.md"


# ---------------------------------------------------------------------------------------------------- claims
@dataclass
class Measured:
    """What a claim's measure returns: scalar numbers, per-layer numbers, or the reason it does not apply."""

    numbers: dict[str, float] = field(default_factory=dict)
    layers: dict[int, dict[str, float]] = field(default_factory=dict)
    not_applicable: str | None = None


@dataclass
class Claim:
    """A claim's numbers for one run (or mean and std over a sweep's runs), verdict and figures."""

    number: int
    key: str
    title: str
    verdict: str
    reason: str
    figures: tuple[str, ...]
    numbers: dict[str, float] = field(default_factory=dict)
    layers: dict[int, dict[str, float]] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)  # sweeps: std over runs (ddof 1)
    layers_std: dict[int, dict[str, float]] = field(default_factory=dict)
    runs: int = 1  # runs the numbers are averaged over (0: the claim applies to none)
    measured: bool = True  # False: the claim does not apply to this kind of run at all


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
    if run.is_rfm:
        return Measured(not_applicable="a Deep RFM is not trained (see claim 5)")
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
    if run.is_rfm:
        return Measured(not_applicable="a Deep RFM's collapse over depth is claim 5")
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
    if run.is_rfm:
        return Measured(not_applicable="a Deep RFM has no weight matrices to decompose (see claim 5)")
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
    if run.is_rfm:
        return Measured(not_applicable="a Deep RFM has no trained weights (its AGOP is the feature matrix itself)")
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
    # the other NFA forms (dnc_cli/analyze.py `nfa_rows`), reported at the final checkpoint, never judged
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
    if not run.is_rfm:
        return Measured(not_applicable="not a Deep RFM run")
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


def measure_random(run: RunData, cfg: ReportConfig) -> Measured:
    if not run.random_labels:
        return Measured(not_applicable="not a random-label run (dataset.labels.random_fraction = 0)")
    if run.is_rfm:
        return Measured(not_applicable="a Deep RFM is not trained: there is no TPT")
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


CLAIMS = (
    ClaimSpec(1, "overtraining", "Neural collapse through overtraining", ("nc_metrics", "training"),
              measure_overtraining, judge_overtraining,
              lambda c: ("tpt_epoch", f"{c.nc1_form}|fall_from_first", f"{c.nc1_form}|fall_after_tpt"), "metric"),
    ClaimSpec(2, "depth", "Deep neural collapse: NC1 falls with depth", ("layers",), measure_depth, judge_depth,
              lambda c: ("falling_steps", "fall_first_to_last")),
    ClaimSpec(3, "where", "Where collapse happens: the right singular structure, not the ReLU", ("svd_nc1",),
              measure_where, judge_where, lambda c: ("linear_dominant", "mean_linear_share", "mean_nonlinear_share")),
    ClaimSpec(4, "nfa", "Neural Feature Ansatz: WᵀW ∝ AGOP^α", ("nfa",), measure_nfa, judge_nfa,
              lambda c: (f"α={c.nfa_power:g}|final", "rise"), "AGOP power (mean over layers)"),
    ClaimSpec(5, "rfm", "Deep RFM: collapse over depth, at the AGOP projection", ("rfm_layers", "gram"),
              measure_rfm, judge_rfm, lambda c: (f"{c.nc1_form}|fall", "nc2|fall", "agop_dominant"), "metric"),
    ClaimSpec(6, "random_labels", "Random labels: TPT reached, NC1 still falling after it", ("nc_metrics", "training"),
              measure_random, judge_random, lambda c: ("tpt_reached", "tpt_epoch", f"{c.nc1_form}|fall_after_tpt"),
              "metric"),
)


def evaluate(spec: ClaimSpec, run: RunData, cfg: ReportConfig) -> Claim:
    measured = spec.measure(run, cfg)
    base = dict(number=spec.number, key=spec.key, title=spec.title, figures=spec.figures)
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
    base = dict(number=spec.number, key=spec.key, title=spec.title, figures=spec.figures)
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


# ---------------------------------------------------------------------------------------------------- markdown
def fmt(x: float) -> str:
    """3 significant digits; whole numbers (epochs, counts) in full; nan as —, inf as ∞."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    if float(x).is_integer() and abs(x) < 1e6:
        return str(int(x))
    return f"{x:.3g}"


def cell(mean: float, std: float = math.nan) -> str:
    return fmt(mean) if math.isnan(std) or math.isinf(mean) else f"{fmt(mean)} ± {std:.2g}"


def label(key: str) -> str:
    return LABELS.get(key, key)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def numbers_markdown(claim: Claim, row_name: str) -> str:
    """The claim's numbers: an "a|b" table, a list of the other scalars, and the per-layer table."""
    parts = []
    grid = [k for k in claim.numbers if "|" in k]
    if grid:
        rows = list(dict.fromkeys(k.split("|")[0] for k in grid))
        cols = list(dict.fromkeys(k.split("|")[1] for k in grid))
        body = [[row] + [cell(claim.numbers.get(f"{row}|{col}", math.nan), claim.std.get(f"{row}|{col}", math.nan))
                         for col in cols] for row in rows]
        parts.append(_table([row_name] + [label(c) for c in cols], body))
    scalars = [k for k in claim.numbers if "|" not in k]
    if scalars:
        parts.append("\n".join(f"- {label(k)}: {cell(claim.numbers[k], claim.std.get(k, math.nan))}"
                               for k in scalars))
    if claim.layers:
        cols = list(dict.fromkeys(k for row in claim.layers.values() for k in row))
        body = [[str(layer)] + [cell(row.get(k, math.nan), claim.layers_std.get(layer, {}).get(k, math.nan))
                                for k in cols] for layer, row in claim.layers.items()]
        header = ["layer"] + [" ".join(label(p) for p in k.split("|")) for k in cols]
        parts.append(_table(header, body))
    return "\n\n".join(parts)


def figure_links(claim: Claim, out_dir: Path, plot_target: Path) -> str:
    links = [f"[figures/{name}.png](figures/{name}.png)" for name in claim.figures]
    missing = [name for name in claim.figures if not (out_dir / "figures" / f"{name}.png").is_file()]
    note = f" (not drawn yet: run `dnc plot run_dir={plot_target}`)" if missing else ""
    return "Figure: " + ", ".join(links) + note


def claims_markdown(claims: list[Claim], out_dir: Path, plot_target: Path) -> list[str]:
    lines = ["## Verdicts", "", _table(["#", "claim", "verdict", "figure"],
                                       [[str(c.number), c.title, f"**{c.verdict}**",
                                         ", ".join(f"[{n}](figures/{n}.png)" for n in c.figures)] for c in claims])]
    for claim, spec in zip(claims, CLAIMS):
        lines += ["", f"## {claim.number}. {claim.title}: **{claim.verdict}**", "", claim.reason[:1].upper()
                  + claim.reason[1:] + ".", "", figure_links(claim, out_dir, plot_target)]
        if claim.numbers or claim.layers:
            lines += ["", numbers_markdown(claim, spec.row_name or "quantity")]
    return lines


def thresholds_markdown(cfg: ReportConfig) -> list[str]:
    keys = ["nc1_form", "split", "collapse_factor", "post_tpt_factor", "majority", "linear_share", "min_layer_fall",
            "nfa_min_corr", "nfa_power", "rfm_fall_factor", "agop_share", "still_falling_factor"]
    return ["## Thresholds", "", "Set with `dnc report key=value` (documented in conf/report.yaml): "
            + ", ".join(f"`{k}={getattr(cfg, k)}`" for k in keys) + "."]


def _run_facts(run: RunData) -> dict[str, str]:
    final = run.train_log.iloc[-1] if run.train_log is not None else {}
    summary = run.summary
    random = f"{run.random_fraction:g} ({run.n_relabelled} relabelled)" if run.random_labels else "none"
    return {"model": run.model, "dataset": str(summary.get("dataset") or _get(run.config, "dataset.name") or "?"),
            "seed": str(summary.get("seed", _get(run.config, "seed"))), "status": str(summary.get("status", "?")),
            "TPT epoch": fmt(math.nan if run.tpt_epoch is None else run.tpt_epoch),
            "epochs": fmt(float(summary["epochs_done"])) if summary.get("epochs_done") is not None else "—",
            "random labels": random,
            "final train acc": fmt(float(final["train_acc"])) if "train_acc" in final else "—",
            "final test acc": fmt(float(final["test_acc"])) if "test_acc" in final else "—"}


def render_run(run: RunData, claims: list[Claim], cfg: ReportConfig) -> str:
    facts = _run_facts(run)
    lines = [f"# dnc report: {run.path.name}", "", f"Run `{run.path}`: "
             + ", ".join(f"{k} {v}" for k, v in facts.items()) + ".", "",
             "Each claim of the paper (Beaglehole et al., NeurIPS 2024) with this run's numbers and a verdict: "
             f"{HOLDS}, {FAILS} or {NA}. NC metrics are from the {cfg.split} split.", ""]
    lines += claims_markdown(claims, run.path, run.path)
    return "\n".join(lines + ["", *thresholds_markdown(cfg), ""])


def _flatten(config: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = repr(value)
    return flat


def differing_keys(runs: list[RunData]) -> list[str]:
    """Config keys whose values differ between the runs (other than the seed and where/how they ran)."""
    flats = [_flatten(run.config) for run in runs]
    keys = sorted({k for flat in flats for k in flat})
    return [k for k in keys if k.split(".")[-1] not in RUN_ONLY_KEYS and len({f.get(k) for f in flats}) > 1]


def render_sweep(root: Path, runs: list[RunData], per_run: list[list[Claim]], claims: list[Claim],
                 skipped: list[tuple[Path, str]], cfg: ReportConfig) -> str:
    names = [str(run.path.relative_to(root)) if run.path.is_relative_to(root) else str(run.path) for run in runs]
    facts = [_run_facts(run) for run in runs]
    lines = [f"# dnc report: {root.name or root}", "",
             f"Sweep `{root}`: {len(runs)} analysed runs, taken as seeds. Every number is the mean ± std (ddof 1) over "
             f"the runs a claim applies to; each verdict is judged on the means ({HOLDS}, {FAILS} or {NA}). NC metrics "
             f"are from the {cfg.split} split.", "",
             _table(["run", *facts[0].keys()], [[name, *f.values()] for name, f in zip(names, facts)])]
    differ = differing_keys(runs)
    if differ:
        lines += ["", f"Note: the runs differ in {', '.join(f'`{k}`' for k in differ)}, not only in the seed; the "
                      "means pool them (report each configuration's folder separately to compare them)."]
    if skipped:
        lines += ["", f"Not included ({len(skipped)} run(s) without analysis; run `dnc analyze run_dir={root}`): "
                  + "; ".join(str(p) for p, _ in skipped) + "."]
    lines += [""] + claims_markdown(claims, root, root)
    lines += ["", "## Per run", ""]
    for i, spec in enumerate(CLAIMS):
        keys = spec.headline(cfg)
        body = [[name, runs_claims[i].verdict] + [fmt(runs_claims[i].numbers.get(k, math.nan)) for k in keys]
                for name, runs_claims in zip(names, per_run)]
        header = ["run", "verdict"] + [" ".join(label(p) for p in k.split("|")) for k in keys]
        lines += [f"**{spec.number}. {spec.title}**", "", _table(header, body), ""]
    return "\n".join(lines + thresholds_markdown(cfg) + [""])


# ---------------------------------------------------------------------------------------------------- the command
@dataclass
class Report:
    path: Path
    claims: list[Claim]
    runs: int
    skipped: list[tuple[Path, str]] = field(default_factory=list)


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
    write_text(out, render_sweep(root, runs, per_run, claims, skipped, cfg))
    return Report(out, claims, len(runs), skipped)


def check(cfg: DictConfig) -> ReportConfig:
    rcfg = to_object(cfg, ReportConfig)
    need = [
        (rcfg.nc1_form in NC1_FORMS, f"nc1_form={rcfg.nc1_form} is not one of {', '.join(NC1_FORMS)}"),
        (rcfg.split in SPLITS, f"split={rcfg.split} is not one of {', '.join(SPLITS)}"),
        (0 <= rcfg.majority < 1, f"majority={rcfg.majority} must be in [0, 1)"),
        (-1 <= rcfg.nfa_min_corr <= 1, f"nfa_min_corr={rcfg.nfa_min_corr} must be in [-1, 1]"),
        (rcfg.nfa_power > 0, f"nfa_power={rcfg.nfa_power} must be > 0"),
    ]
    need += [(0 < getattr(rcfg, k) <= 1, f"{k}={getattr(rcfg, k)} must be in (0, 1]")
             for k in ("linear_share", "agop_share")]
    need += [(math.isfinite(getattr(rcfg, k)) and getattr(rcfg, k) >= 1,
              f"{k}={getattr(rcfg, k)} must be a factor >= 1")
             for k in ("collapse_factor", "post_tpt_factor", "rfm_fall_factor", "still_falling_factor",
                       "min_layer_fall")]
    for ok, message in need:
        if not ok:
            raise UsageError(message)
    require_run_dir(rcfg.run_dir)
    return rcfg


@hydra.main(version_base="1.3", config_path="pkg://dnc_cli.conf", config_name="report")
def main(cfg: DictConfig) -> None:
    try:
        rcfg = check(cfg)
        report = write_report(Path(rcfg.run_dir), rcfg)
    except UsageError as exc:
        fail("report", str(exc))
    what = f"{report.runs} runs, mean over seeds" if report.runs > 1 else "1 run"
    print(f"{report.path} ({what})")
    for claim in report.claims:
        print(f"  {claim.number}. {claim.title}: {claim.verdict} — {claim.reason}")
    if report.skipped:
        print(f"  not included ({len(report.skipped)} run(s) without analysis): "
              + ", ".join(str(p) for p, _ in report.skipped))
