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
from dnc_cli.report.claims import BEYOND, CLAIMS, PAPER, measure_where
from dnc_cli.report.criteria import FAILS, HOLDS, NA, Criterion, fmt, majority_flip, ratio
from dnc_cli.report.run_data import load_run
from dnc_cli.report.verdicts import evaluate_run


def test_ratio_and_fmt():
    assert ratio(10.0, 2.0) == 5.0
    assert ratio(1.0, 0.0) == math.inf and math.isnan(ratio(0.0, 0.0)) and math.isnan(ratio(math.nan, 1.0))
    assert fmt(250.0) == "250" and fmt(0.012345) == "0.0123" and fmt(math.nan) == "—" and fmt(math.inf) == "∞"


def test_every_network_claim_holds_on_a_collapsing_run(tmp_path):
    run = write_run(tmp_path / "run", network_metrics())
    assert verdicts(run) == {"overtraining": HOLDS, "depth": HOLDS, "where": HOLDS, "nfa": HOLDS, "rfm": NA,
                             "random_labels": NA, "nfa_long": NA}  # every checkpoint is within the paper's horizon
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
    assert nfa.numbers["α=0.5|judged"] == pytest.approx(0.92) and nfa.numbers["rise"] == pytest.approx(0.6)
    assert nfa.layers[2]["α=1|judged"] == pytest.approx(0.82)


def test_no_collapse_through_training_does_not_hold(tmp_path):
    run = write_run(tmp_path / "run", network_metrics(own=lambda e, l: 0.5 ** l * (1 + e / 100)))
    claim = claim_of(run, "overtraining")
    assert claim.verdict == FAILS and "→ 50 (×) = 0.667 (needs ≥ 10, `collapse_factor`: fails" in claim.reason


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


def test_weak_nfa_does_not_hold_and_a_falling_one_is_reported_not_judged(tmp_path):
    weak = claim_of(write_run(tmp_path / "weak", network_metrics(nfa=lambda e, l: 0.5)), "nfa")
    assert weak.verdict == FAILS and "`nfa_min_corr`: fails" in weak.reason
    # the paper claims a high correlation, not a rising one: a fall is reported beside the verdict
    falling_corr = claim_of(write_run(tmp_path / "fall", network_metrics(nfa=lambda e, l: 0.99 - e / 1000)), "nfa")
    assert falling_corr.verdict == HOLDS and "moved -0.050" in falling_corr.reason
    # the thresholds live in the config: a lower bar turns the weak run's verdict
    assert claim_of(write_run(tmp_path / "low", network_metrics(nfa=lambda e, l: 0.45)), "nfa",
                    ReportConfig(nfa_min_corr=0.4)).verdict == HOLDS


def test_paper_claims_are_judged_at_the_paper_horizon_and_the_nfa_after_it_beyond_the_paper(tmp_path):
    """Checkpoints past paper_horizon: P1-P3 at the last checkpoint within it, B3 at the end."""
    epochs = (0, 100, 250, 600)
    decays = network_metrics(nfa=lambda e, l: 0.9 if e <= 250 else 0.6, epochs=epochs)
    run = write_run(tmp_path / "run", decays)
    nfa, long = claim_of(run, "nfa"), claim_of(run, "nfa_long")
    assert nfa.verdict == HOLDS and nfa.numbers["judged_epoch"] == 250
    assert long.verdict == FAILS and long.numbers["end_epoch"] == 600 and long.numbers["change"] == pytest.approx(-0.3)
    assert claim_of(run, "depth").numbers["judged_epoch"] == 250
    assert "at the end (epoch 600) the fall is" in claim_of(run, "depth").reason
    anywhere = ReportConfig(paper_horizon=None)
    assert claim_of(run, "nfa", anywhere).verdict == FAILS and claim_of(run, "nfa_long", anywhere).verdict == NA
    # the paper never trained on random labels: its claims are judged at the end of such a run
    random = write_run(tmp_path / "random", decays, random_fraction=1.0)
    assert claim_of(random, "nfa").numbers["judged_epoch"] == 600 and claim_of(random, "nfa").verdict == FAILS


def test_every_claim_carries_its_source_and_scope():
    """PAPER.md, "Claims and where they come from": the paper's claims cite the paper and the official code; the
    others say they are beyond the paper and name the work they test."""
    scopes = {spec.key: spec.scope for spec in CLAIMS}
    assert scopes == {"depth": PAPER, "where": PAPER, "nfa": PAPER, "rfm": PAPER, "overtraining": BEYOND,
                      "random_labels": BEYOND, "nfa_long": BEYOND}
    for spec in CLAIMS:
        if spec.scope == PAPER:
            assert spec.source.startswith("the paper:") and "official `" in spec.source, spec.key
            assert spec.number.startswith("P")
        else:
            assert spec.source.startswith("beyond the paper:") and spec.number.startswith("B"), spec.key
    sources = {spec.key: spec.source for spec in CLAIMS}
    assert "Papyan" in sources["overtraining"] and "Setpal" in sources["random_labels"]
    assert "epoch 250" in sources["nfa_long"] and "deep_rfm.py" in sources["rfm"]


def test_each_verdict_names_its_thresholds_and_flips_where_it_says(tmp_path):
    """The flip value printed beside a threshold is where the verdict turns: just below it one way, just above it
    the other (B1 here: NC1 fell e^5 overall and e^3 after the TPT)."""
    run = write_run(tmp_path / "run", network_metrics())
    claim = claim_of(run, "overtraining")
    assert "the tool's choice" in claim.reason and "`post_tpt_factor`: passes" in claim.reason
    flip = math.exp(3)
    assert f"would fail at `post_tpt_factor` > {fmt(flip)}" in claim.reason
    assert claim_of(run, "overtraining", ReportConfig(post_tpt_factor=flip * 0.999)).verdict == HOLDS
    assert claim_of(run, "overtraining", ReportConfig(post_tpt_factor=flip * 1.001)).verdict == FAILS
    # a majority-of-layers criterion: the flip of the per-layer threshold is the share of the deciding layer
    where = claim_of(run, "where")
    share = where.numbers["linear_share_flip"]
    assert share == pytest.approx(math.log(5) / math.log(1 / 0.15))
    assert claim_of(run, "where", ReportConfig(linear_share=share * 0.999)).verdict == HOLDS
    assert claim_of(run, "where", ReportConfig(linear_share=share * 1.001)).verdict == FAILS


def test_criterion_text_and_majority_flip():
    passing = Criterion("x", 12.0, "rfm_fall_factor", 10.0)
    assert passing.passes and "would fail at `rfm_fall_factor` > 12" in passing.text()
    failing = Criterion("x", 0.5, "majority", 0.5, strict=True)
    assert not failing.passes and "would pass at `majority` < 0.5" in failing.text()
    assert majority_flip([0.9, 0.2, 0.7], 0.5) == 0.7  # 2 of 3 layers make a majority: the 2nd largest decides
    assert majority_flip([0.9, 0.2, 0.7, 0.6], 0.5) == 0.6  # 3 of 4
    assert math.isnan(majority_flip([], 0.5))


def test_thresholds_come_from_the_config(tmp_path):
    run = write_run(tmp_path / "run", network_metrics())
    assert claim_of(run, "overtraining", ReportConfig(collapse_factor=1000.0)).verdict == FAILS
    assert claim_of(run, "overtraining", ReportConfig(post_tpt_factor=50.0)).verdict == FAILS
    assert claim_of(run, "where", ReportConfig(linear_share=0.9)).verdict == FAILS
    assert claim_of(run, "overtraining", ReportConfig(nc1_form="nc1")).reason.startswith("NC1 (nc1) fall of")


def test_deep_rfm_collapsing_at_the_agop_holds(tmp_path):
    run = write_run(tmp_path / "rfm", rfm_metrics(), tpt=None, model="deep_rfm")
    claims = {c.key: c for c in evaluate_run(load_run(run), CFG)}
    assert {k: c.verdict for k, c in claims.items() if c.verdict != NA} == {"rfm": HOLDS}
    rfm = claims["rfm"]
    for curve in ("X_l", "M^½X_l", "Φ(M^½X_l)"):  # along each curve, layer 1 -> 4
        assert rfm.numbers[f"nc1_trace|{curve}"] == pytest.approx(0.3 ** -3)
        assert rfm.numbers[f"nc2_gram|{curve}"] == pytest.approx(100)
        assert rfm.numbers[f"nc1_trace per layer|{curve}"] == pytest.approx(1 / 0.3)
    assert rfm.layers[2]["agop_share"] == pytest.approx(math.log(0.35) / math.log(0.3))
    assert rfm.layers[4]["kernel_acc"] == 0.9 and rfm.numbers["agop_dominant"] == 1.0
    assert rfm.figures == ("rfm_curves", "rfm_layers", "gram")


def test_deep_rfm_is_judged_curve_by_curve_on_the_official_nc2(tmp_path):
    """Known falls: the official NC2 falls 50x along X_l, 80x along M^½X_l and 8x along Φ(M^½X_l). One curve short
    of the threshold fails the claim, and names that curve; the Frobenius NC2 is reported, never judged."""
    run = write_run(tmp_path / "rfm", rfm_metrics(nc2_falls=(50.0, 80.0, 8.0)), tpt=None, model="deep_rfm")
    claim = claim_of(run, "rfm")
    assert [claim.numbers[f"nc2_gram|{c}"] for c in ("X_l", "M^½X_l", "Φ(M^½X_l)")] == pytest.approx([50, 80, 8])
    assert claim.verdict == FAILS
    assert "NC2 (nc2_gram) fall along Φ(M^½X_l), layer 1 → 4 (×) = 8 (needs ≥ 10, `rfm_fall_factor`: fails, " \
           "would pass at `rfm_fall_factor` ≤ 8)" in claim.reason
    assert claim_of(run, "rfm", ReportConfig(rfm_fall_factor=8.0)).verdict == HOLDS
    assert claim.numbers["nc2|X_l"] == pytest.approx(0.3 ** -3) and "(nc2)" not in claim.reason


def test_deep_rfm_collapsing_at_the_random_features_does_not_hold(tmp_path):
    run = write_run(tmp_path / "rfm", rfm_metrics(agop=0.95), tpt=None, model="deep_rfm")
    claim = claim_of(run, "rfm")
    assert claim.verdict == FAILS and claim.numbers["agop_dominant"] == 0.0
    flat = claim_of(write_run(tmp_path / "flat", rfm_metrics(agop=1.0, act=1.0), tpt=None, model="deep_rfm"),
                    "rfm")
    assert flat.verdict == FAILS and flat.numbers["nc1_trace|X_l"] == 1.0


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
