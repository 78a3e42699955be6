"""The README's front-page tables: the paper's claims, then the hypotheses beyond it, as `dnc report` judges them on
the committed results (each number is a claim's own measure, dnc_cli.report.verdicts; default thresholds).

    python results/scripts/front_page.py results > /tmp/claims.md    # make reproduce puts it into README.md

The MLP's verdicts are the mean over its 3 seeds (as `dnc report` on the sweep gives them), the Deep RFM's those of
the official settings (σ = 0.05) with the feature sweep beside them.
"""

import sys
from pathlib import Path

from dnc_cli.analyze.sweeps import read_overrides
from dnc_cli.config import ReportConfig
from dnc_cli.report.claims import CLAIMS, RFM_CURVES, RFM_NC2
from dnc_cli.report.criteria import NA, fmt
from dnc_cli.report.run_data import load_run
from dnc_cli.report.verdicts import aggregate, evaluate_run
from dnc_cli.runs import find_runs
from dnc_cli.tables import markdown_table

CFG = ReportConfig()


def claims_of(folder: Path) -> dict:
    """Every claim over the runs of a folder (one run, or the mean over a sweep's seeds), by key."""
    per_run = [evaluate_run(load_run(path), CFG) for path in find_runs(folder)]
    return {spec.key: aggregate(spec, [claims[i] for claims in per_run], CFG) if len(per_run) > 1 else per_run[0][i]
            for i, spec in enumerate(CLAIMS)}


def fall(value: float) -> str:
    """A fall factor as the tables read it: 7,010× rather than 7.01e+03×, and a fall below 1 as a rise."""
    if value < 1:
        return f"rose {fall(1 / value)}"
    return f"{value:,.0f}×" if value >= 1000 else f"{fmt(value)}×"


def curves(numbers: dict, metric: str) -> str:
    return " / ".join(fall(numbers[f"{metric}|{curve}"]) for curve in RFM_CURVES.values())


def cell(claim, describe) -> str:
    """The verdict and what `describe` says of its numbers; the verdict's reason where those are undefined."""
    text = "" if claim.verdict == NA else describe(claim.numbers)
    return f"**{claim.verdict}**" + (f": {claim.reason}" if not text or "—" in text else text)


def main(results: str) -> None:
    root = Path(results)
    mlp, rfm = claims_of(root / "mnist_mlp"), claims_of(root / "mnist_deep_rfm")
    random = claims_of(root / "mnist_random_labels")
    sweep = {read_overrides(path)["rfm_features"]: next(c for c in evaluate_run(load_run(path), CFG) if c.key == "rfm")
             for path in find_runs(root / "mnist_deep_rfm_features")}
    rfm_falls = lambda n: (f" (NC1 along X_l / M^½X_l / Φ(M^½X_l) {curves(n, CFG.nc1_form)}; NC2, official form, "  # noqa: E731
                           f"{curves(n, RFM_NC2)})")
    paper = [
        ["P1. Deep neural collapse: NC1 falls with depth", cell(mlp["depth"], lambda n: (
            f": {fmt(n['fall_first_to_last'])}× from the first to the last hidden layer at epoch "
            f"{fmt(n['judged_epoch'])}"
            + (f" ({fmt(n['end_fall_first_to_last'])}× at the end)" if "end_epoch" in n else "")))],
        ["P2. Collapse at the right singular structure, not the ReLU", cell(mlp["where"], lambda n: (
            f": h → S Vᵀh carries {n['mean_linear_share']:.0%} of the log-NC1 drop at epoch {fmt(n['judged_epoch'])}"
            + (f" ({n['end_mean_linear_share']:.0%} at the end)" if "end_epoch" in n else "")))],
        ["P3. NFA: corr(WᵀW, AGOP^½) high", cell(mlp["nfa"], lambda n: (
            f": {n['α=0.5|judged']:.3f} at epoch {fmt(n['judged_epoch'])} (threshold {CFG.nfa_min_corr:g}, "
            "the tool's choice)"))],
        ["P4. Deep RFM: NC1 and NC2 fall over the layers, at the AGOP projection (official settings: RFF, σ = 0.05)",
         cell(rfm["rfm"], lambda n: f" over {fmt(n['layers'])} layers" + rfm_falls(n))],
        ["P4 across the official σ list and ReLU features", "<br>".join(
            f"`{name}`: " + cell(claim, rfm_falls) for name, claim in sorted(sweep.items()))],
    ]
    beyond = [
        ["B1. Collapse continues after the TPT (Papyan et al. 2020)", cell(mlp["overtraining"], lambda n: (
            f": NC1 fell {fall(n['nc1_trace|fall_from_first'])} from init, {fall(n['nc1_trace|fall_after_tpt'])} "
            f"from the TPT to the end (epochs {fmt(n['tpt_epoch'])} → {fmt(n['end_epoch'])})"))],
        ["B2. Random labels: NC1 still falling after the TPT (talk slides)", cell(random["random_labels"], lambda n: (
            f": NC1 {fall(n['nc1_trace|fall_after_tpt'])} from the TPT to the end (epochs {fmt(n['tpt_epoch'])} → "
            f"{fmt(n['end_epoch'])})"))],
        ["B3. The NFA stays high after epoch 250", cell(mlp["nfa_long"], lambda n: (
            f": {n['α=0.5|end']:.3f} at the end ({n['change']:+.3f} since epoch {fmt(n['horizon_epoch'])})"))
         + "; random labels: " + cell(random["nfa_long"], lambda n: f" ({n['α=0.5|end']:.3f})")],
    ]
    print("**The paper's claims**, judged on what its code computes and plots (MLP: mean over its seeds):\n")
    print(markdown_table(["claim", "verdict on MNIST"], paper))
    print("\n**Beyond the paper**: hypotheses the tool tests, which the paper does not state:\n")
    print(markdown_table(["hypothesis", "verdict"], beyond))
    print("\nEvery threshold is the tool's choice (`conf/report.yaml`); each report.md gives the number at which a "
          "verdict would flip.")


if __name__ == "__main__":
    main(sys.argv[1])
