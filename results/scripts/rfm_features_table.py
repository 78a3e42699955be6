"""The Deep RFM feature-map sweep's table: per setting, the fall of NC1 and of NC2 along each official curve
(X_l, M^½X_l, Φ(M^½X_l)) from layer 1 to the last layer, the AGOP step's share, claim P4's verdict and the test
accuracy of the first and last layer's kernel.

    python results/scripts/rfm_features_table.py runs/mnist_deep_rfm_features > runs/mnist_deep_rfm_features/features.md

Numbers come from `dnc report`'s own measures (claim P4, dnc_cli.report.claims.measure_rfm) with the default
thresholds; the setting is the run's `+rfm_features=` override. "Orders of magnitude" marks a fall of 100x or more:
a reading of the paper's words, not one of its numbers.
"""

import sys
from pathlib import Path

from dnc_cli.analyze.sweeps import read_overrides
from dnc_cli.config import ReportConfig
from dnc_cli.report.claims import RFM_CURVES, RFM_NC2
from dnc_cli.report.criteria import fmt
from dnc_cli.report.run_data import load_run
from dnc_cli.report.verdicts import evaluate_run
from dnc_cli.runs import find_runs
from dnc_cli.tables import markdown_table

ORDERS_OF_MAGNITUDE = 100.0


def main(sweep: str) -> None:
    cfg = ReportConfig()
    metrics = {cfg.nc1_form: "NC1", RFM_NC2: "NC2 (official)", "nc2": "NC2 (Frobenius)"}
    header = ["setting", "width", "verdict"] + [f"{name} fall, {curve}" for name in metrics.values()
                                                for curve in RFM_CURVES.values()]
    header += ["AGOP share (mean)", "test acc, layer 1 → last"]
    rows, orders = [], []
    for run_dir in find_runs(Path(sweep)):
        run = load_run(run_dir)
        claim = next(c for c in evaluate_run(run, cfg) if c.key == "rfm")
        setting = read_overrides(run_dir).get("rfm_features", "?")
        falls = {(metric, curve): claim.numbers[f"{metric}|{curve}"] for metric in metrics
                 for curve in RFM_CURVES.values()}
        depth = sorted(claim.layers)
        test = [run.value("test", 0, layer, "", "kernel_acc") for layer in (depth[0], depth[-1])]
        rows.append([setting, str(run.config["model"]["width"] or "input dim"), f"**{claim.verdict}**",
                     *(fmt(v) + (" ◆" if v >= ORDERS_OF_MAGNITUDE else "") for v in falls.values()),
                     fmt(claim.numbers["mean_agop_share"]), f"{test[0]:.3f} → {test[1]:.3f}"])
        orders.append(f"- {setting}: " + (", ".join(f"{metrics[m]} along {c}" for (m, c), v in falls.items()
                                                    if v >= ORDERS_OF_MAGNITUDE and m != "nc2") or "none"))
    print(markdown_table(header, rows))
    print(f"\n◆: a fall of {ORDERS_OF_MAGNITUDE:g}× or more (\"orders of magnitude\"). Where the judged quantities "
          "fall by orders of magnitude:\n")
    print("\n".join(orders))


if __name__ == "__main__":
    main(sys.argv[1])
