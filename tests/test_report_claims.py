"""dnc_cli/report/claims.py and verdicts.py on small synthetic tables: every claim holding, not holding and not
applicable, for networks, Deep RFMs and random labels."""

from __future__ import annotations

import math

import pytest
from report_tables import (
    CFG,
    DEPTH,
    TPT,
    claim_of,
    falling,
    network_metrics,
    rfm_metrics,
    verdicts,
    write_run,
)

from dnc_cli.config import ReportConfig
from dnc_cli.report.claims import FAILS, HOLDS, NA, fmt, measure_where, ratio
from dnc_cli.report.run_data import load_run
from dnc_cli.report.verdicts import evaluate_run


def test_ratio_and_fmt():
    assert ratio(10.0, 2.0) == 5.0
    assert ratio(1.0, 0.0) == math.inf and math.isnan(ratio(0.0, 0.0)) and math.isnan(ratio(math.nan, 1.0))
    assert fmt(250.0) == "250" and fmt(0.012345) == "0.0123" and fmt(math.nan) == "—" and fmt(math.inf) == "∞"


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
