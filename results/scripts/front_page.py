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
from dnc_cli.report.criteria import fmt
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


def curves(claim, metric: str) -> str:
    return " / ".join(fall(claim.numbers[f"{metric}|{curve}"]) for curve in RFM_CURVES.values())


def main(results: str) -> None:
    root = Path(results)
    mlp, rfm = claims_of(root / "mnist_mlp"), claims_of(root / "mnist_deep_rfm")
    random = claims_of(root / "mnist_random_labels")
    sweep = {read_overrides(path)["rfm_features"]: next(c for c in evaluate_run(load_run(path), CFG) if c.key == "rfm")
             for path in find_runs(root / "mnist_deep_rfm_features")}
    depth, where, nfa, rfm4 = mlp["depth"], mlp["where"], mlp["nfa"], rfm["rfm"]
    features = "<br>".join(f"`{name}`: **{claim.verdict}** (NC1 {curves(claim, CFG.nc1_form)}; NC2 "
                           f"{curves(claim, RFM_NC2)})" for name, claim in sorted(sweep.items()))
    paper = [
        ["P1. Deep neural collapse: NC1 falls with depth", f"**{depth.verdict}**: "
         f"{fmt(depth.numbers['fall_first_to_last'])}× from layer 1 to 5 at epoch 250 "
         f"({fmt(depth.numbers.get('end_fall_first_to_last'))}× at the end)"],
        ["P2. Collapse at the right singular structure, not the ReLU", f"**{where.verdict}**: h → S Vᵀh carries "
         f"{where.numbers['mean_linear_share']:.0%} of the log-NC1 drop at epoch 250 "
         f"({where.numbers.get('end_mean_linear_share', float('nan')):.0%} at the end)"],
        ["P3. NFA: corr(WᵀW, AGOP^½) high", f"**{nfa.verdict}**: {nfa.numbers['α=0.5|judged']:.3f} at epoch 250 "
         f"(threshold {CFG.nfa_min_corr:g}, the tool's choice)"],
        ["P4. Deep RFM: NC1 and NC2 fall over the layers, at the AGOP projection",
         f"**{rfm4.verdict}** at the official settings (RFF, σ = 0.05): along X_l / M^½X_l / Φ(M^½X_l) NC1 fell "
         f"{curves(rfm4, CFG.nc1_form)} and NC2 (official form) {curves(rfm4, RFM_NC2)} over 20 layers"],
        ["P4 across the official σ list and ReLU features (run on an H200)", features],
    ]
    beyond = [
        ["B1. Collapse continues after the TPT (Papyan et al. 2020)", f"**{mlp['overtraining'].verdict}**: NC1 fell "
         f"{fall(mlp['overtraining'].numbers['nc1_trace|fall_from_first'])} from init, "
         f"{fall(mlp['overtraining'].numbers['nc1_trace|fall_after_tpt'])} in the 250 epochs after the TPT"],
        ["B2. Random labels: NC1 still falling after the TPT (talk slides)", f"**{random['random_labels'].verdict}**: "
         f"NC1 {fall(random['random_labels'].numbers['nc1_trace|fall_after_tpt'])} in the 1,000 epochs after the TPT "
         "(1,000 images)"],
        ["B3. The NFA stays high after epoch 250", f"**{mlp['nfa_long'].verdict}**: "
         f"{mlp['nfa_long'].numbers['α=0.5|end']:.3f} at the end ({mlp['nfa_long'].numbers['change']:+.3f} since "
         f"epoch 250); on random labels it **{random['nfa_long'].verdict}** "
         f"({random['nfa_long'].numbers['α=0.5|end']:.3f})"],
    ]
    print("**The paper's claims**, judged on what its code computes and plots (MLP: mean over 3 seeds):\n")
    print(markdown_table(["claim", "verdict on 8,000 MNIST digits"], paper))
    print("\n**Beyond the paper**: hypotheses the tool tests, which the paper does not state:\n")
    print(markdown_table(["hypothesis", "verdict"], beyond))
    print("\nEvery threshold is the tool's choice (`conf/report.yaml`); each report.md gives the number at which a "
          "verdict would flip.")


if __name__ == "__main__":
    main(sys.argv[1])
