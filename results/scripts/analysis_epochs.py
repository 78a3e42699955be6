"""The checkpoints `make reproduce` analyses in a run or sweep: every `early` epochs up to the paper's horizon (250),
every `late` epochs after it, and each run's TPT and last checkpoint; printed as dnc analyze's `epochs=[...]`.

    python results/scripts/analysis_epochs.py runs/mnist_mlp 10 50     # -> [0,10,...,250,300,...,519,534,...]
"""

import json
import re
import sys
from pathlib import Path

from dnc_cli.runs import find_runs

PAPER_HORIZON = 250


def chosen(run_dir: Path, early: int, late: int) -> set[int]:
    epochs = sorted(int(m.group(1)) for p in (run_dir / "checkpoints").glob("epoch_*.pt")
                    if (m := re.fullmatch(r"epoch_(\d+)\.pt", p.name)))
    summary = json.loads((run_dir / "summary.json").read_text())
    keep = {e for e in epochs if e % (early if e <= PAPER_HORIZON else late) == 0}
    tpt = summary.get("tpt_epoch")
    if not epochs:
        return keep
    if tpt is not None:  # the first checkpoint at or after the TPT
        keep.add(min((e for e in epochs if e >= tpt), default=epochs[-1]))
    return keep | {epochs[-1]}


def main(folder: str, early: str, late: str) -> None:
    epochs = set().union(*(chosen(run, int(early), int(late)) for run in find_runs(Path(folder))))
    print("[" + ",".join(str(e) for e in sorted(epochs)) + "]")


if __name__ == "__main__":
    main(*sys.argv[1:4])
