"""dnc_cli/train/deep_rfm.py: `dnc train model=deep_rfm` end to end (train, analyze, plot), bad options, resume."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import assert_usage_error, run_cli, train_config

from dnc_cli.train.command import run


@pytest.mark.slow
def test_deep_rfm_cli_train_analyze_plot(tmp_path):
    result = run_cli("train", "model=deep_rfm", "dataset=synthetic", "dataset.n_available=300", "model.depth=3",
                     "model.width=128", "hydra.run.dir=rfm", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    state = torch.load(tmp_path / "rfm/checkpoints/epoch_000000.pt", weights_only=True)
    assert len(state["rfm_layers"]) == 3
    assert pd.read_csv(tmp_path / "rfm/rfm_log.csv").layer.tolist() == [1, 2, 3]
    for command in ("analyze", "plot"):
        result = run_cli(command, "run_dir=rfm", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    df = pd.read_csv(tmp_path / "rfm/analysis/metrics.csv", keep_default_na=False)
    assert set(df.layer) == {1, 2, 3} and {"input", "agop", "activation"} <= set(df.stage)
    nc1 = df[(df.split == "train") & (df.stage == "input") & (df.metric == "nc1_trace")].set_index("layer").value
    assert nc1[3] < nc1[1]  # collapse with depth
    assert (tmp_path / "rfm/figures/rfm_layers.png").exists() and (tmp_path / "rfm/figures/gram.png").exists()


@pytest.mark.parametrize("override, needle", [("model.width=0", "model.width=0"),
                                              ("model.bandwidth=-1", "model.bandwidth=-1.0"),
                                              ("model.kernel=cosine", "laplace"),
                                              ("dataset.n_available=2000000", "n_train=2000000")])
@pytest.mark.slow
def test_deep_rfm_bad_options(tmp_path, override, needle):
    result = run_cli("train", "model=deep_rfm", "dataset=synthetic", "model.depth=2", override, cwd=tmp_path)
    assert_usage_error(result, needle)
    assert not (tmp_path / "outputs").exists()


def test_deep_rfm_resume_after_interruption(tmp_path, monkeypatch):
    import dnc_cli.models.deep_rfm as rfm

    overrides = ["model=deep_rfm", "dataset=synthetic", "dataset.n_available=200", "model.depth=3", "model.width=64"]
    run(train_config(overrides), tmp_path / "whole")
    real, calls = rfm._fit_layer, {"n": 0}

    def interrupted(*args, **kwargs):  # Ctrl-C while fitting the third layer
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(rfm, "_fit_layer", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(train_config(overrides), tmp_path / "part")
    monkeypatch.setattr(rfm, "_fit_layer", real)
    run(train_config(overrides + [f"resume={tmp_path / 'part'}"]), tmp_path / "part")
    whole, part = (torch.load(tmp_path / d / "checkpoints/epoch_000000.pt", weights_only=True)["rfm_layers"]
                   for d in ("whole", "part"))
    assert len(part) == 3
    for a, b in zip(whole, part):
        assert torch.equal(a["agop"], b["agop"]) and a["test_acc"] == b["test_acc"]
    assert (tmp_path / "part/rfm_log.csv").read_text().count("\n") == 4
