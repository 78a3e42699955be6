"""`dnc report` on small synthetic analysis tables: every claim holding and not holding, Deep RFM, random labels,
a 2-run sweep (mean ± std), the CLI and its usage errors, and one real tiny run end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import assert_usage_error, compose, run_cli

from dnc_cli.config import ReportConfig, to_object
from dnc_cli.errors import UsageError
from dnc_cli.report import (
    FAILS,
    HOLDS,
    NA,
    aggregate,
    evaluate_run,
    fmt,
    load_run,
    measure_where,
    ratio,
    write_report,
)

EPOCHS = (0, 10, 20, 50)
TPT = 20
DEPTH = 3
CFG = ReportConfig()


def falling(epoch: int, layer: int) -> float:
    """NC1 that falls with training (148x from epoch 0 to 50, 20x after the TPT) and halves at every layer."""
    return math.exp(-epoch / 10) * 0.5 ** layer


def linear_svd(epoch: int, layer: int) -> tuple[float, ...]:
    """input, right, left, activation: most of the layer's drop at S Vᵀ (linear share log 5 / log 6.7 = 0.85)."""
    base = falling(epoch, layer - 1)
    return base, base * 0.2, base * 0.2, base * 0.15


def rising_nfa(epoch: int, layer: int) -> float:
    return 0.3 + 0.6 * epoch / EPOCHS[-1] + 0.01 * layer


def network_metrics(own=falling, svd=linear_svd, nfa=rising_nfa, epochs=EPOCHS, depth=DEPTH) -> pd.DataFrame:
    rows = []
    for epoch in epochs:
        for split in ("train", "test"):
            for layer in range(depth + 1):
                for metric in ("nc1_trace", "nc1", "nc2", "nc2_gram", "nc4", "ncc_acc"):
                    rows.append((epoch, split, layer, "", metric, own(epoch, layer)))
                if layer >= 1 and svd is not None:
                    for stage, value in zip(("input", "right", "left", "activation"), svd(epoch, layer)):
                        for metric in ("nc1_trace", "nc1", "nc2"):
                            rows.append((epoch, split, layer, stage, metric, value))
            rows.append((epoch, split, depth, "", "nc3", own(epoch, depth)))
        for layer in range(1, depth + 1):
            if nfa is not None:
                rows.append((epoch, "train", layer, "", "nfa_corr_0.5", nfa(epoch, layer)))
                rows.append((epoch, "train", layer, "", "nfa_corr_1", nfa(epoch, layer) - 0.1))
    return pd.DataFrame(rows, columns=["epoch", "split", "layer", "stage", "metric", "value"])


def rfm_metrics(agop: float = 0.35, act: float = 0.3, depth: int = 4) -> pd.DataFrame:
    """Deep RFM: layer l's input is act**(l-1); the AGOP step multiplies NC by `agop`, the whole layer by `act`."""
    rows = []
    for layer in range(1, depth + 1):
        x = act ** (layer - 1)
        for stage, value in (("input", x), ("agop", x * agop), ("activation", x * act)):
            for metric in ("nc1_trace", "nc1", "nc2"):
                rows.append((0, "train", layer, stage, metric, value))
        rows.append((0, "train", layer, "", "kernel_acc", 0.9))
    return pd.DataFrame(rows, columns=["epoch", "split", "layer", "stage", "metric", "value"])


def write_run(run_dir: Path, metrics: pd.DataFrame | None, tpt: int | None = TPT, model: str = "mlp",
              random_fraction: float = 0.0, seed: int = 0) -> Path:
    run_dir.mkdir(parents=True)
    config = {"model": {"name": model, "depth": DEPTH}, "seed": seed,
              "dataset": {"name": "synthetic", "labels": {"random_fraction": random_fraction}}}
    (run_dir / "config_resolved.yaml").write_text(yaml.safe_dump(config))
    summary = {"status": "done", "model": model, "dataset": "synthetic", "seed": seed, "tpt_epoch": tpt,
               "epochs_done": EPOCHS[-1], "n_relabelled": int(200 * random_fraction)}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    if model != "deep_rfm":
        epochs = np.arange(1, EPOCHS[-1] + 1)
        train_acc = np.where(epochs >= (tpt or 10 ** 9), 1.0, 0.9)
        pd.DataFrame({"epoch": epochs, "train_loss": 1 / epochs, "train_acc": train_acc, "test_loss": 1.0,
                      "test_acc": 0.8, "lr": 1e-3, "elapsed_s": epochs * 0.1}).to_csv(run_dir / "train_log.csv",
                                                                                      index=False)
    if metrics is not None:
        (run_dir / "analysis").mkdir()
        metrics.to_csv(run_dir / "analysis" / "metrics.csv", index=False)
    return run_dir


def verdicts(run_dir: Path, cfg: ReportConfig = CFG) -> dict[str, str]:
    return {claim.key: claim.verdict for claim in evaluate_run(load_run(run_dir), cfg)}


def claim_of(run_dir: Path, key: str, cfg: ReportConfig = CFG):
    return next(c for c in evaluate_run(load_run(run_dir), cfg) if c.key == key)


# ---------------------------------------------------------------------------------------------------- helpers
def test_ratio_and_fmt():
    assert ratio(10.0, 2.0) == 5.0
    assert ratio(1.0, 0.0) == math.inf and math.isnan(ratio(0.0, 0.0)) and math.isnan(ratio(math.nan, 1.0))
    assert fmt(250.0) == "250" and fmt(0.012345) == "0.0123" and fmt(math.nan) == "—" and fmt(math.inf) == "∞"


def test_report_imports_no_torch():
    code = "import sys, dnc_cli.report; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_yaml_defaults_match_the_schema():
    """conf/report.yaml documents the same thresholds the dataclass holds."""
    assert to_object(compose("report", []), ReportConfig) == ReportConfig()


# ---------------------------------------------------------------------------------------------------- network claims
def test_every_network_claim_holds_on_a_collapsing_run(tmp_path):
    run = write_run(tmp_path / "run", network_metrics())
    assert verdicts(run) == {"overtraining": HOLDS, "depth": HOLDS, "where": HOLDS, "nfa": HOLDS, "rfm": NA,
                             "random_labels": NA}
    claim = claim_of(run, "overtraining")
    n = claim.numbers
    assert n["layer"] == DEPTH and n["first_epoch"] == 0 and n["tpt_checkpoint"] == TPT and n["end_epoch"] == 50
    assert n["nc1_trace|fall_from_first"] == pytest.approx(math.exp(5))
    assert n["nc1_trace|fall_after_tpt"] == pytest.approx(math.exp(3))
    assert {"nc1|tpt", "nc2|end", "nc3|fall_after_tpt", "nc4|first"} <= set(n)  # NC2-NC4 likewise
    assert claim.figures == ("nc_metrics", "training")

    where = claim_of(run, "where")
    assert where.layers[1]["linear_share"] == pytest.approx(math.log(5) / math.log(1 / 0.15))
    assert where.layers[1]["nonlinear_share"] == pytest.approx(math.log(0.2 / 0.15) / math.log(1 / 0.15))
    assert where.numbers["linear_dominant"] == 1.0

    nfa = claim_of(run, "nfa")
    assert nfa.numbers["α=0.5|final"] == pytest.approx(0.92) and nfa.numbers["rise"] == pytest.approx(0.6)
    assert nfa.layers[2]["α=1|final"] == pytest.approx(0.82)


def test_no_collapse_through_training_does_not_hold(tmp_path):
    run = write_run(tmp_path / "run", network_metrics(own=lambda e, l: 0.5 ** l * (1 + e / 100)))
    claim = claim_of(run, "overtraining")
    assert claim.verdict == FAILS and "fell 0.667×" in claim.reason


def test_overtraining_without_a_tpt_or_a_checkpoint_after_it_is_not_applicable(tmp_path):
    assert claim_of(write_run(tmp_path / "a", network_metrics(), tpt=None), "overtraining").verdict == NA
    late = claim_of(write_run(tmp_path / "b", network_metrics(), tpt=50), "overtraining")
    assert late.verdict == NA and "after the TPT" in late.reason


def test_nc1_rising_with_depth_does_not_hold(tmp_path):
    run = write_run(tmp_path / "run", network_metrics(own=lambda e, l: math.exp(-e / 10) * 2.0 ** l))
    claim = claim_of(run, "depth")
    assert claim.verdict == FAILS
    assert claim.numbers["falling_steps"] == 0 and claim.numbers["fall_first_to_last"] == pytest.approx(0.25)
    assert sorted(claim.layers) == [0, 1, 2, 3]  # per-layer values, the input included


def test_collapse_at_the_nonlinearity_does_not_hold(tmp_path):
    def relu_svd(epoch, layer):
        base = falling(epoch, layer - 1)
        return base, base * 0.9, base * 0.9, base * 0.1

    claim = claim_of(write_run(tmp_path / "run", network_metrics(svd=relu_svd)), "where")
    assert claim.verdict == FAILS
    assert claim.numbers["mean_linear_share"] == pytest.approx(math.log(1 / 0.9) / math.log(10))


def test_layers_without_reduction_are_not_judged(tmp_path):
    def mixed(epoch, layer):  # layer 1 rises (no reduction), layers 2 and 3 collapse linearly
        return (1.0, 0.9, 0.9, 1.5) if layer == 1 else (1.0, 0.2, 0.2, 0.15)

    run = write_run(tmp_path / "run", network_metrics(svd=mixed))
    measured = measure_where(load_run(run), CFG)
    assert math.isnan(measured.layers[1]["linear_share"]) and measured.numbers["layers_judged"] == 2
    assert claim_of(run, "where").verdict == HOLDS
    flat = write_run(tmp_path / "flat", network_metrics(svd=lambda e, l: (1.0, 1.0, 1.0, 1.0)))
    claim = claim_of(flat, "where")
    assert claim.verdict == NA and "no reduction" in claim.reason


def test_missing_families_are_not_applicable(tmp_path):
    run = write_run(tmp_path / "run", network_metrics(svd=None, nfa=None))
    claims = {c.key: c for c in evaluate_run(load_run(run), CFG)}
    assert claims["where"].verdict == NA and "svd" in claims["where"].reason
    assert claims["nfa"].verdict == NA and "nfa" in claims["nfa"].reason


def test_weak_or_falling_nfa_does_not_hold(tmp_path):
    weak = claim_of(write_run(tmp_path / "weak", network_metrics(nfa=lambda e, l: 0.5)), "nfa")
    assert weak.verdict == FAILS and "did not rise" in weak.reason
    falling_corr = claim_of(write_run(tmp_path / "fall", network_metrics(nfa=lambda e, l: 0.99 - e / 1000)), "nfa")
    assert falling_corr.numbers["α=0.5|final"] >= CFG.nfa_min_corr and falling_corr.verdict == FAILS
    # the thresholds live in the config: a lower bar turns the weak run's verdict
    lenient = ReportConfig(nfa_min_corr=0.4)
    high_flat = claim_of(write_run(tmp_path / "flat", network_metrics(nfa=lambda e, l: 0.4 + e / 1000)), "nfa",
                         lenient)
    assert high_flat.verdict == HOLDS


def test_thresholds_come_from_the_config(tmp_path):
    run = write_run(tmp_path / "run", network_metrics())
    assert claim_of(run, "overtraining", ReportConfig(collapse_factor=1000.0)).verdict == FAILS
    assert claim_of(run, "overtraining", ReportConfig(post_tpt_factor=50.0)).verdict == FAILS
    assert claim_of(run, "where", ReportConfig(linear_share=0.9)).verdict == FAILS
    assert claim_of(run, "overtraining", ReportConfig(nc1_form="nc1")).reason.startswith("NC1 (nc1) of")


# ---------------------------------------------------------------------------------------------------- Deep RFM
def test_deep_rfm_collapsing_at_the_agop_holds(tmp_path):
    run = write_run(tmp_path / "rfm", rfm_metrics(), tpt=None, model="deep_rfm")
    claims = {c.key: c for c in evaluate_run(load_run(run), CFG)}
    assert [c.verdict for c in claims.values()] == [NA, NA, NA, NA, HOLDS, NA]
    rfm = claims["rfm"]
    assert rfm.numbers["nc1_trace|fall"] == pytest.approx(0.3 ** -4)
    assert rfm.numbers["nc2|fall"] == pytest.approx(0.3 ** -4)
    assert rfm.layers[2]["nc1_trace|agop_share"] == pytest.approx(math.log(0.35) / math.log(0.3))
    assert rfm.layers[4]["kernel_acc"] == 0.9 and rfm.numbers["agop_dominant"] == 1.0
    assert rfm.figures == ("rfm_layers", "gram")


def test_deep_rfm_collapsing_at_the_random_features_does_not_hold(tmp_path):
    run = write_run(tmp_path / "rfm", rfm_metrics(agop=0.95), tpt=None, model="deep_rfm")
    claim = claim_of(run, "rfm")
    assert claim.verdict == FAILS and claim.numbers["agop_dominant"] == 0.0
    flat = claim_of(write_run(tmp_path / "flat", rfm_metrics(agop=1.0, act=1.0), tpt=None, model="deep_rfm"),
                    "rfm")
    assert flat.verdict == FAILS and flat.numbers["nc1_trace|fall"] == 1.0


# ---------------------------------------------------------------------------------------------------- random labels
def test_random_labels(tmp_path):
    falling_run = write_run(tmp_path / "a", network_metrics(), random_fraction=1.0)
    claim = claim_of(falling_run, "random_labels")
    assert claim.verdict == HOLDS and claim.numbers["n_relabelled"] == 200 and claim.numbers["tpt_reached"] == 1
    never = claim_of(write_run(tmp_path / "b", network_metrics(), tpt=None, random_fraction=1.0), "random_labels")
    assert never.verdict == FAILS and "not reached" in never.reason

    def stalls(epoch, layer):  # falls until the TPT, flat after it
        return math.exp(-min(epoch, TPT) / 10) * 0.5 ** layer

    stalled = claim_of(write_run(tmp_path / "c", network_metrics(own=stalls), random_fraction=0.5), "random_labels")
    assert stalled.verdict == FAILS and stalled.numbers["nc1_trace|fall_after_tpt"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------- report files
def test_report_of_one_run(tmp_path):
    run = write_run(tmp_path / "run", network_metrics())
    (run / "figures").mkdir()
    for name in ("nc_metrics", "training", "layers", "svd_nc1", "nfa"):
        (run / "figures" / f"{name}.png").write_bytes(b"")
    report = write_report(tmp_path, CFG)  # a parent holding one run: the report goes into the run
    assert report.path == run / "report.md" and report.runs == 1
    text = report.path.read_text()
    for needle in ("## 1. Neural collapse through overtraining: **holds**",
                   "[figures/svd_nc1.png](figures/svd_nc1.png)",
                   "## 5. Deep RFM: collapse over depth, at the AGOP projection: **not applicable**",
                   "fall TPT→end (×)", "| nc3 |", "linear share (input→right)", "`collapse_factor=10.0`"):
        assert needle in text, needle
    assert "run `dnc plot" not in text.split("## 5.")[0]  # figures of claims 1-4 exist
    assert "not drawn yet: run `dnc plot run_dir=" in text.split("## 5.")[1]  # rfm_layers does not


def test_sweep_of_two_seeds(tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep / "0", network_metrics(), seed=0)
    write_run(sweep / "1", network_metrics(own=lambda e, l: falling(e, l) * (1 + e / 100)), seed=1, tpt=10)
    write_run(sweep / "2", None, seed=2)  # not analysed: listed, not fatal
    report = write_report(sweep, CFG)
    assert report.path == sweep / "report.md" and report.runs == 2 and len(report.skipped) == 1
    claim = next(c for c in report.claims if c.key == "overtraining")
    falls = [math.exp(5), math.exp(5) / 1.5]
    assert claim.numbers["nc1_trace|fall_from_first"] == pytest.approx(np.mean(falls))
    assert claim.std["nc1_trace|fall_from_first"] == pytest.approx(np.std(falls, ddof=1))
    assert claim.numbers["tpt_epoch"] == 15 and claim.runs == 2 and claim.verdict == HOLDS
    assert claim.reason.startswith("on the mean over 2 run(s)")
    text = report.path.read_text()
    assert "± " in text and "## Per run" in text and "| 0 | holds |" in text and "Not included (1 run(s)" in text
    assert "runs differ in" not in text  # only the seed differs


def test_sweep_verdict_is_judged_on_the_mean(tmp_path):
    """One seed collapses at S Vᵀ, the other at the ReLU: the mean linear share decides."""
    def relu_svd(epoch, layer):
        base = falling(epoch, layer - 1)
        return base, base * 0.9, base * 0.9, base * 0.1

    runs = [load_run(write_run(tmp_path / str(i), network_metrics(svd=svd), seed=i))
            for i, svd in enumerate((linear_svd, relu_svd))]
    from dnc_cli.report import CLAIMS

    spec = next(s for s in CLAIMS if s.key == "where")
    per_run = [next(c for c in evaluate_run(run, CFG) if c.key == "where") for run in runs]
    assert [c.verdict for c in per_run] == [HOLDS, FAILS]
    mean = aggregate(spec, per_run, CFG)
    assert mean.numbers["linear_dominant"] == 0.5 and mean.verdict == FAILS  # not > majority
    assert aggregate(spec, per_run, ReportConfig(majority=0.4)).verdict == HOLDS


def test_sweep_mixing_network_and_rfm_runs_notes_the_difference(tmp_path):
    write_run(tmp_path / "net", network_metrics())
    write_run(tmp_path / "rfm", rfm_metrics(), tpt=None, model="deep_rfm")
    report = write_report(tmp_path, CFG)
    by_key = {c.key: c for c in report.claims}
    assert by_key["rfm"].verdict == HOLDS and by_key["rfm"].runs == 1 and "1 run(s) not applicable" in \
        by_key["rfm"].reason
    assert by_key["depth"].verdict == HOLDS and by_key["random_labels"].verdict == NA
    assert "runs differ in `model.name`" in report.path.read_text()


def test_no_analysis_or_no_run_is_a_usage_error(tmp_path):
    run = write_run(tmp_path / "run", None)
    with pytest.raises(UsageError, match="dnc analyze"):
        write_report(run, CFG)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="holds no run"):
        write_report(tmp_path / "empty", CFG)


# ---------------------------------------------------------------------------------------------------- the CLI
def test_cli_report(tmp_path):
    run = write_run(tmp_path / "run", network_metrics())
    result = run_cli("report", f"run_dir={run}", "collapse_factor=1000", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (run / "report.md").is_file()
    assert "1. Neural collapse through overtraining: does not hold" in result.stdout  # the override took effect
    assert "3. Where collapse happens" in result.stdout and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("case", ["missing", "unanalysed", "threshold"])
def test_cli_usage_errors(tmp_path, case):
    if case == "missing":
        result = run_cli("report", f"run_dir={tmp_path / 'nope'}", cwd=tmp_path)
        assert_usage_error(result, "dnc report", f"run_dir={tmp_path / 'nope'}", "does not exist")
    elif case == "unanalysed":
        run = write_run(tmp_path / "run", None)
        assert_usage_error(run_cli("report", f"run_dir={run}", cwd=tmp_path), str(run), "dnc analyze")
    else:
        assert_usage_error(run_cli("report", f"run_dir={tmp_path}", "majority=1.5", cwd=tmp_path), "majority=1.5")


# ---------------------------------------------------------------------------------------------------- a real run
def test_report_on_a_real_tiny_run(tiny_run):
    import torch

    from dnc_cli.analyze import analyze_run
    from dnc_cli.config import AnalyzeConfig

    assert analyze_run(tiny_run, AnalyzeConfig(progress=False), torch.device("cpu")) == []
    report = write_report(tiny_run, CFG)
    claims = {c.key: c for c in report.claims}
    assert all(c.verdict in (HOLDS, FAILS, NA) for c in report.claims)
    assert claims["rfm"].verdict == NA and claims["random_labels"].verdict == NA
    assert claims["depth"].measured and sorted(claims["depth"].layers) == [0, 1, 2, 3]
    assert claims["where"].measured and set(claims["where"].layers) == {1, 2, 3}
    assert claims["nfa"].measured and 0 < claims["nfa"].numbers["α=0.5|final"] <= 1
    assert claims["overtraining"].measured and claims["overtraining"].numbers["end_epoch"] == 6
    assert "## 4. Neural Feature Ansatz" in report.path.read_text()


def test_until_epoch_judges_the_run_as_it_stood_then(tmp_path):
    """until_epoch=10 (before the TPT at 20): claim 1 has no TPT, the NFA is judged at epoch 10, and the report goes
    to its own file, leaving report.md alone."""
    run = write_run(tmp_path / "run", network_metrics())
    early = ReportConfig(until_epoch=10)
    claims = {c.key: c for c in evaluate_run(load_run(run, 10), early)}
    assert claims["overtraining"].verdict == NA and "not reached" in claims["overtraining"].reason
    assert claims["nfa"].numbers["final_epoch"] == 10
    assert claims["nfa"].numbers["α=0.5|final"] == pytest.approx(rising_nfa(10, 1) / 3 + rising_nfa(10, 2) / 3
                                                                  + rising_nfa(10, 3) / 3)
    report = write_report(run, early)
    assert report.path.name == "report_until_epoch10.md" and not (run / "report.md").exists()
    with pytest.raises(UsageError, match="until_epoch=-1"):
        load_run(run, -1)
