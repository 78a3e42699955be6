"""dnc_cli/tables.py: the metrics table's one typed reader and writer, and the markdown tables."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from dnc_cli.errors import UsageError
from dnc_cli.tables import COLUMNS, markdown_frame, markdown_table, read_metrics, read_run_metrics, save_table


def test_written_table_reads_back_typed_and_sorted(tmp_path):
    rows = [{"epoch": 2, "split": "train", "layer": 1, "stage": "", "metric": "nc1", "value": math.nan},
            {"epoch": 0, "split": "train", "layer": 1, "stage": "right", "metric": "nc1", "value": 0.123456789012},
            {"epoch": 0, "split": "test", "layer": 0, "stage": "", "metric": "nc2", "value": math.inf}]
    save_table(tmp_path / "metrics.csv", rows)
    text = (tmp_path / "metrics.csv").read_text().splitlines()
    assert text[0] == ",".join(COLUMNS) and text[1] == "0,test,0,,nc2,inf"  # sorted by the key columns
    assert text[2] == "0,train,1,right,nc1,0.123456789" and text[3] == "2,train,1,,nc1,"  # 10 digits; NaN empty
    df = read_metrics(tmp_path / "metrics.csv")
    assert list(df.columns) == COLUMNS and df.stage.tolist() == ["", "right", ""]  # '' stays '', not NaN
    assert df.epoch.dtype.kind == "i" and df.layer.dtype.kind == "i" and df.value.dtype.kind == "f"
    assert math.isinf(df.value[0]) and math.isnan(df.value[2])
    save_table(tmp_path / "again.csv", df.to_dict("records"))  # what a resumed analysis writes back
    assert (tmp_path / "again.csv").read_bytes() == (tmp_path / "metrics.csv").read_bytes()


def test_missing_columns_and_missing_analysis_are_usage_errors(tmp_path):
    (tmp_path / "metrics.csv").write_text("epoch,split,value\n0,train,1\n")
    with pytest.raises(UsageError, match="no column.*layer, stage, metric.*force=true"):
        read_metrics(tmp_path / "metrics.csv")
    with pytest.raises(UsageError, match="no analysis in .*dnc analyze"):
        read_run_metrics(tmp_path)


def test_markdown_tables():
    assert markdown_table(["a", "b"], [["1", "x"]]) == "| a | b |\n|---|---|\n| 1 | x |"
    frame = pd.DataFrame({"nc1": [0.123456, math.nan]}, index=pd.Index([0, 5], name="epoch"))
    assert markdown_frame(frame, "epoch") == "| epoch | nc1 |\n|---|---|\n| 0 | 0.1235 |\n| 5 |  |"
