"""dnc_cli/report/command.py: report.md of one run and of a sweep (mean ± std over seeds, the verdict on the means),
usage errors, the CLI, and one real tiny run end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import assert_usage_error, run_cli
from report_tables import CFG, falling, linear_svd, network_metrics, rfm_metrics, write_run

from dnc_cli.config import ReportConfig
from dnc_cli.errors import UsageError
from dnc_cli.report.claims import CLAIMS
from dnc_cli.report.command import write_report
from dnc_cli.report.criteria import FAILS, HOLDS, NA
from dnc_cli.report.run_data import load_run
from dnc_cli.report.verdicts import aggregate, evaluate_run


def test_report_of_one_run(tmp_path):
    run = write_run(tmp_path / "run", network_metrics())
    (run / "figures").mkdir()
    for name in ("nc_metrics", "training", "layers", "svd_nc1", "nfa"):
        (run / "figures" / f"{name}.png").write_bytes(b"")
    report = write_report(tmp_path, CFG)  # a parent holding one run: the report goes into the run
    assert report.path == run / "report.md" and report.runs == 1
    text = report.path.read_text()
    for needle in ("## The paper's claims", "## Beyond the paper", "## B1. Collapse continues after the TPT: **holds**",
                   "[figures/svd_nc1.png](figures/svd_nc1.png)", "Source: beyond the paper: Papyan",
                   "## P4. Deep RFM: NC1 and NC2 fall over the layers, at the AGOP projection: **not applicable**",
                   "fall TPT→end (×)", "| nc3 |", "linear share (input→right)", "`collapse_factor=10.0`",
                   "the tool's choice"):
        assert needle in text, needle
    assert text.index("## The paper's claims") < text.index("| P1 |") < text.index("## Beyond the paper") \
        < text.index("| B1 |")
    assert "run `dnc plot" not in text.split("## P4.")[0]  # figures of claims P1-P3 exist
    assert "not drawn yet: run `dnc plot run_dir=" in text.split("## P4.")[1].split("## B1.")[0]  # P4's do not


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


@pytest.mark.slow
def test_cli_report(tmp_path):
    run = write_run(tmp_path / "run", network_metrics())
    result = run_cli("report", f"run_dir={run}", "collapse_factor=1000", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (run / "report.md").is_file()
    assert "B1. Collapse continues after the TPT: does not hold" in result.stdout  # the override took effect
    assert "P2. Where collapse happens" in result.stdout and not (tmp_path / "outputs").exists()


@pytest.mark.slow
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


@pytest.mark.slow
def test_report_on_a_real_tiny_run(tiny_run):
    import torch

    from dnc_cli.analyze.command import analyze_run
    from dnc_cli.config import AnalyzeConfig

    assert analyze_run(tiny_run, AnalyzeConfig(progress=False), torch.device("cpu")) == []
    report = write_report(tiny_run, CFG)
    claims = {c.key: c for c in report.claims}
    assert all(c.verdict in (HOLDS, FAILS, NA) for c in report.claims)
    assert claims["rfm"].verdict == NA and claims["random_labels"].verdict == NA
    assert claims["depth"].measured and sorted(claims["depth"].layers) == [0, 1, 2, 3]
    assert claims["where"].measured and set(claims["where"].layers) == {1, 2, 3}
    assert claims["nfa"].measured and 0 < claims["nfa"].numbers["α=0.5|judged"] <= 1
    assert claims["overtraining"].measured and claims["overtraining"].numbers["end_epoch"] == 6
    assert "## P3. Neural Feature Ansatz" in report.path.read_text()


def test_until_epoch_judges_the_run_as_it_stood_then(tmp_path):
    """until_epoch=10 (before the TPT at 20): claim 1 has no TPT, the NFA is judged at epoch 10, and the report goes
    to its own file, leaving report.md alone."""
    from report_tables import rising_nfa

    from dnc_cli.report.run_data import load_run
    from dnc_cli.report.verdicts import evaluate_run

    run = write_run(tmp_path / "run", network_metrics())
    early = ReportConfig(until_epoch=10)
    claims = {c.key: c for c in evaluate_run(load_run(run, 10), early)}
    assert claims["overtraining"].verdict == NA and "not reached" in claims["overtraining"].reason
    assert claims["nfa"].numbers["judged_epoch"] == 10
    assert claims["nfa"].numbers["α=0.5|judged"] == pytest.approx(sum(rising_nfa(10, layer) for layer in (1, 2, 3)) / 3)
    report = write_report(run, early)
    assert report.path.name == "report_until_epoch10.md" and not (run / "report.md").exists()
    with pytest.raises(UsageError, match="until_epoch=-1"):
        load_run(run, -1)
