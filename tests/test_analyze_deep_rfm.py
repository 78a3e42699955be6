"""dnc_cli/analyze/deep_rfm.py: a Deep RFM run's table (stages of every layer, kernel accuracies), its digest and
settings, in process; `model.width=null` keeps the input dimension through the layers."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import train_config

from dnc_cli.analyze.command import analyze_run
from dnc_cli.config import AnalyzeConfig
from dnc_cli.tables import read_metrics
from dnc_cli.train.command import run

SMALL_RFM = ["model=deep_rfm", "dataset=synthetic", "dataset.n_available=200", "model.depth=2"]


@pytest.fixture
def rfm_run(tmp_path):
    run(train_config(SMALL_RFM + ["model.width=null"]), tmp_path)
    return tmp_path


def test_table_digest_and_settings(rfm_run, monkeypatch):
    cpu = torch.device("cpu")
    assert analyze_run(rfm_run, AnalyzeConfig(progress=False), cpu) == []
    df = read_metrics(rfm_run / "analysis/metrics.csv")
    assert set(df.epoch) == {0} and set(df.layer) == {1, 2} and set(df.split) == {"train", "test"}
    assert set(df.stage) == {"", "input", "agop", "activation"}
    assert set(df[df.stage == ""].metric) == {"kernel_acc"}
    assert (rfm_run / "analysis/nc_table.md").read_text().startswith("# Deep RFM collapse by layer (train split)")
    assert "precision" not in json.loads((rfm_run / "analysis/settings.json").read_text())
    assert (rfm_run / "analysis/gram_epoch_000000_train.npz").is_file()
    # width null: every layer keeps the input's 32 coordinates
    layers = torch.load(rfm_run / "checkpoints/epoch_000000.pt", weights_only=True)["rfm_layers"]
    assert [tuple(layer["agop"].shape) for layer in layers] == [(32, 32), (32, 32)]
    # the table exists: nothing is recomputed without force=true
    import dnc_cli.analyze.deep_rfm as analyse_rfm

    monkeypatch.setattr(analyse_rfm, "deep_rfm_representations", lambda *a, **k: pytest.fail("recomputed"))
    assert analyze_run(rfm_run, AnalyzeConfig(progress=False), cpu) == []
