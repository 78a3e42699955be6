"""The ablation's table: per setting, mean ± std over its seeds of what the paper's claims turn on.

    python results/scripts/ablation_table.py runs/mnist_mlp_ablation > runs/mnist_mlp_ablation/ablation.md

Numbers come from `dnc report`'s own measures (dnc_cli.report.verdicts.evaluate_run), judged at the end of each run and,
with until_epoch=250, at the paper's horizon; the setting is the run's `+ablation=` override.
"""

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from dnc_cli.analyze.sweeps import read_overrides
from dnc_cli.config import ReportConfig
from dnc_cli.report.run_data import load_run
from dnc_cli.report.verdicts import evaluate_run
from dnc_cli.runs import find_runs

PAPER_HORIZON = 250
ORDER = ["baseline", "no_reset", "lr_3e-4", "gain_1", "standardize_global", "standardize_none"]


def numbers(run_dir: Path, until: int | None) -> dict:
    cfg = ReportConfig(until_epoch=until, paper_horizon=None)  # judged at the last checkpoint up to `until`
    run = load_run(run_dir, until)
    claims = {c.key: c for c in evaluate_run(run, cfg)}
    nfa, where, over = claims["nfa"], claims["where"], claims["overtraining"]
    log = run.train_log
    row = {"TPT epoch": run.tpt_epoch if run.tpt_epoch is not None else math.nan,
           "test acc": float(log["test_acc"].iloc[-1]),
           "NFA mean": nfa.numbers.get("α=0.5|judged", math.nan),
           "NFA rise": nfa.numbers.get("rise", math.nan),
           "linear share": where.numbers.get("mean_linear_share", math.nan),
           "NC1 fall after TPT": over.numbers.get("nc1_trace|fall_after_tpt", math.nan)}
    row |= {f"NFA layer {layer}": values.get("α=0.5|judged", math.nan) for layer, values in nfa.layers.items()}
    return row


def fmt(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "—"
    mean = float(np.mean(values))
    text = f"{mean:.3g}" if abs(mean) < 1000 else f"{mean:.0f}"
    return text + (f" ± {float(np.std(values, ddof=1)):.2g}" if len(values) > 1 else "")


def main(sweep: str) -> None:
    rows = []
    for run_dir in find_runs(Path(sweep)):
        setting = read_overrides(run_dir).get("ablation", "?")
        for horizon, until in (("end", None), (f"epoch {PAPER_HORIZON}", PAPER_HORIZON)):
            rows.append({"setting": setting, "judged at": horizon, "run": run_dir.name} | numbers(run_dir, until))
    df = pd.DataFrame(rows)
    columns = [c for c in df.columns if c not in ("setting", "judged at", "run")]
    for horizon in ("end", f"epoch {PAPER_HORIZON}"):
        part = df[df["judged at"] == horizon]
        print(f"\n### Judged at {'the end of each run' if horizon == 'end' else 'the paper horizon, ' + horizon}\n")
        print("| setting | runs | " + " | ".join(columns) + " |")
        print("|---" * (len(columns) + 2) + "|")
        for setting in [s for s in ORDER if s in set(part.setting)] + sorted(set(part.setting) - set(ORDER)):
            group = part[part.setting == setting]
            cells = [fmt(group[c].astype(float).tolist()) for c in columns]
            print(f"| {setting} | {len(group)} | " + " | ".join(cells) + " |")
    print("\nTPT epoch: — where no run of the setting reached 100% train accuracy by then (its NC1 fall after the TPT"
          " is then undefined); mean ± std (ddof 1) over the runs that have the number.")


if __name__ == "__main__":
    main(sys.argv[1])
