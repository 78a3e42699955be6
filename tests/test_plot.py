"""`dnc plot` from small synthetic analysis tables: panels, lines, files, determinism, usage errors."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from dnc_cli.errors import UsageError
from dnc_cli.plot import (
    FIGURES,
    RFM_FIGURES,
    NotDrawable,
    fig_gram,
    fig_layers,
    fig_nc_metrics,
    fig_nfa,
    fig_rfm_layers,
    fig_svd_nc1,
    fig_training,
    find_runs,
    plot_run,
)

EPOCHS = [0, 10, 20, 50]
N_LAYERS = 3
N_CLASSES = 4
TPT_EPOCH = 20
SVD_STAGES = ["input", "right", "left", "activation", "agop"]
LAYER_METRICS = ["nc1", "nc1_trace", "tr_sw_over_st", "tr_sb_over_st", "cdnv", "nc2", "nc2_gram", "nc4",
                 "ncc_acc"]
STAGE_METRICS = ["nc1", "nc1_trace", "nc2"]


def collapse(epoch: int, layer: int, drop: float = 1.0) -> float:
    """A plausible NC value: falls with training and with depth."""
    return float(np.exp(-(0.5 + epoch / 20) * (layer + 1) / 2) * drop)


def synthetic_metrics() -> pd.DataFrame:
    rows = []
    for epoch in EPOCHS:
        for split in ("train", "test"):
            test_gap = 1.0 if split == "train" else 1.5
            for layer in range(N_LAYERS + 1):
                for metric in LAYER_METRICS:
                    value = collapse(epoch, layer) * test_gap
                    if metric == "tr_sb_over_st":
                        value = 1 / (1 + value)
                    if metric == "tr_sw_over_st":
                        value = value / (1 + value)
                    if metric == "nc4":
                        collapsed = epoch >= TPT_EPOCH and split == "train"
                        value = 0.0 if collapsed else 0.05 / (layer + 1) / test_gap
                    rows.append((epoch, split, layer, "", metric, value))
                if layer >= 1:
                    for stage, drop in zip(SVD_STAGES, [1.0, 0.3, 0.3, 0.25, 0.2], strict=True):
                        value = collapse(epoch, layer - 1, drop)
                        for metric in STAGE_METRICS:
                            rows.append((epoch, split, layer, stage, metric, value))
            rows.append((epoch, split, N_LAYERS, "", "nc3", collapse(epoch, N_LAYERS) * test_gap))
        for layer in range(1, N_LAYERS + 1):
            for alpha, offset in (("0.5", 0.0), ("1", -0.1)):
                correlation = 0.4 + 0.1 * layer + 0.3 * epoch / 50 + offset
                rows.append((epoch, "train", layer, "", f"nfa_corr_{alpha}", correlation))
    metrics = pd.DataFrame(rows, columns=["epoch", "split", "layer", "stage", "metric", "value"])
    metrics["seed"] = 0  # an extra column the plots must ignore
    metrics.loc[3, "value"] = np.nan  # and a NaN they must survive
    return metrics


def synthetic_train_log() -> pd.DataFrame:
    epochs = np.arange(0, 51, 5)
    return pd.DataFrame({
        "epoch": epochs,
        "train_loss": 0.5 * np.exp(-epochs / 10), "train_acc": np.minimum(1.0, 0.2 + epochs / 25),
        "test_loss": 0.6 * np.exp(-epochs / 30), "test_acc": np.minimum(0.8, 0.2 + epochs / 40),
        "lr": 5e-5, "elapsed_s": epochs * 1.5,
    })


def synthetic_gram(n_layers: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(N_CLASSES), 30)
    class_means = rng.normal(size=(N_CLASSES, 16))
    arrays = {"labels": labels}
    for layer in range(n_layers + 1):
        noise = 2.0 / (layer + 1)
        arrays[f"layer_{layer}"] = class_means[labels] + noise * rng.normal(size=(len(labels), 16))
    return arrays


def write_run(run_dir: Path, metrics: pd.DataFrame, summary: dict, train_log: pd.DataFrame | None,
              gram_layers: int, gram_epoch: int) -> Path:
    (run_dir / "analysis").mkdir(parents=True)
    (run_dir / "config_resolved.yaml").write_text("model: {}\n")
    metrics.to_csv(run_dir / "analysis" / "metrics.csv", index=False)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    if train_log is not None:
        train_log.to_csv(run_dir / "train_log.csv", index=False)
    for split in ("train", "test"):
        gram_path = run_dir / "analysis" / f"gram_epoch_{gram_epoch:06d}_{split}.npz"
        np.savez(gram_path, **synthetic_gram(gram_layers))
    return run_dir


def make_network_run(run_dir: Path, tpt_epoch: int | None = TPT_EPOCH) -> Path:
    summary = {"status": "completed", "tpt_epoch": tpt_epoch, "model": "mlp"}
    return write_run(run_dir, synthetic_metrics(), summary, synthetic_train_log(), N_LAYERS, EPOCHS[-1])


def synthetic_rfm_metrics(depth: int = 6) -> pd.DataFrame:
    rows = []
    for split in ("train", "test"):
        for layer in range(1, depth + 1):
            level = np.exp(-0.8 * (layer - 1))
            for stage, drop in (("input", 1.0), ("agop", 0.3), ("activation", 0.45)):
                for metric in STAGE_METRICS:
                    rows.append((0, split, layer, stage, metric, level * drop))
    return pd.DataFrame(rows, columns=["epoch", "split", "layer", "stage", "metric", "value"])


def make_rfm_run(run_dir: Path, depth: int = 6) -> Path:
    summary = {"status": "completed", "tpt_epoch": None, "model": "deep_rfm"}
    return write_run(run_dir, synthetic_rfm_metrics(depth), summary, None, depth, 0)


# -----------------------------------------------------------------------------
# figure functions


def test_nc_metrics_has_four_panels_and_one_line_per_layer_and_split():
    fig = fig_nc_metrics(synthetic_metrics(), TPT_EPOCH, "nc1_trace")
    assert isinstance(fig, Figure)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 4
    nc1_panel, _, nc3_panel, nc4_panel = panels
    curves = [line for line in nc1_panel.get_lines() if len(line.get_xdata()) == len(EPOCHS)]
    assert len(curves) == N_LAYERS * 2
    assert sorted({line.get_linestyle() for line in curves}) == ["-", "--"]
    assert len([line for line in nc3_panel.get_lines() if len(line.get_xdata()) == len(EPOCHS)]) == 2
    assert nc1_panel.get_yscale() == "log"
    assert nc4_panel.get_yscale() == "symlog"  # NC4 has exact zeros
    assert any(line.get_xdata()[0] == TPT_EPOCH for line in nc1_panel.get_lines())  # the TPT marker


def test_nc_metrics_without_tpt_and_with_a_single_epoch():
    single = synthetic_metrics().query("epoch == 50")
    fig = fig_nc_metrics(single, None, "nc1")
    nc1_panel = fig.axes[0]
    assert len(nc1_panel.get_lines()) == N_LAYERS * 2  # no TPT line
    assert all(line.get_marker() == "o" for line in nc1_panel.get_lines())  # single points stay visible


def test_svd_nc1_has_one_panel_per_layer_with_shared_stage_colours():
    fig = fig_svd_nc1(synthetic_metrics(), TPT_EPOCH, "nc1_trace", "train")
    assert [ax.get_title() for ax in fig.axes] == [f"Layer {layer}" for layer in range(1, N_LAYERS + 1)]
    for ax in fig.axes:
        curves = [line for line in ax.get_lines() if len(line.get_xdata()) == len(EPOCHS)]
        assert len(curves) == 4  # input, right, agop, activation ("left" equals "right" and is omitted)
        assert [line.get_color() for line in curves] == [line.get_color() for line in fig.axes[0].get_lines()
                                                         if len(line.get_xdata()) == len(EPOCHS)]
    assert len(fig.legends) == 1


def test_svd_nc1_without_stage_rows_is_not_drawable():
    metrics = synthetic_metrics()
    with pytest.raises(NotDrawable):
        fig_svd_nc1(metrics[metrics["stage"] == ""], None)


def test_nfa_has_three_panels_and_correlations_in_unit_interval():
    fig = fig_nfa(synthetic_metrics(), synthetic_train_log(), TPT_EPOCH)
    panels = fig.axes
    assert len(panels) == 3
    variance_panel, nfa_panel, loss_panel = panels
    assert len([line for line in variance_panel.get_lines() if len(line.get_xdata()) == len(EPOCHS)]) == 2
    assert len([line for line in nfa_panel.get_lines() if len(line.get_xdata()) == len(EPOCHS)]) == N_LAYERS
    assert nfa_panel.get_ylim() == (0, 1.02)
    assert loss_panel.get_yscale() == "log"
    metrics = synthetic_metrics()
    with pytest.raises(NotDrawable):
        fig_nfa(metrics[~metrics["metric"].str.startswith("nfa")], synthetic_train_log())
    assert len(fig_nfa(metrics, None).axes) == 2  # no loss panel without a train log


def test_layers_shows_init_tpt_and_final_across_depth():
    fig = fig_layers(synthetic_metrics(), TPT_EPOCH, "nc1_trace", "train")
    panels = fig.axes
    assert len(panels) == 2
    labels = [line.get_label() for line in panels[0].get_lines()]
    assert labels == ["init (epoch 0)", f"TPT (epoch {TPT_EPOCH})", "final (epoch 50)"]
    assert list(panels[0].get_lines()[0].get_xdata()) == list(range(N_LAYERS + 1))
    no_tpt = fig_layers(synthetic_metrics(), None)
    assert [line.get_label() for line in no_tpt.axes[0].get_lines()] == ["init (epoch 0)", "final (epoch 50)"]
    late_tpt = fig_layers(synthetic_metrics(), 45)
    assert [line.get_label() for line in late_tpt.axes[0].get_lines()][-1] == "TPT = final (epoch 50)"


def test_gram_shows_at_most_five_evenly_spaced_layers():
    arrays = synthetic_gram(n_layers=8)
    features = {int(k.split("_")[1]): v for k, v in arrays.items() if k.startswith("layer_")}
    fig = fig_gram(arrays["labels"], features)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    titles = [ax.get_title() for ax in panels]
    assert titles == ["Layer 0 (input)", "Layer 2", "Layer 4", "Layer 6", "Layer 8"]
    gram = panels[-1].get_images()[0].get_array()
    assert gram.shape == (N_CLASSES * 30, N_CLASSES * 30)
    assert np.allclose(np.diag(gram), 1.0)
    assert panels[-1].get_images()[0].get_clim() == (-1, 1)


def test_training_has_loss_and_accuracy_panels():
    fig = fig_training(synthetic_train_log(), TPT_EPOCH)
    loss_panel, accuracy_panel = fig.axes
    assert loss_panel.get_yscale() == "log" and accuracy_panel.get_yscale() == "linear"
    assert [line.get_label() for line in loss_panel.get_lines()][:2] == ["train", "test"]


def test_rfm_layers_zigzag_has_every_stage_of_every_layer():
    depth = 6
    fig = fig_rfm_layers(synthetic_rfm_metrics(depth), "nc1_trace", "train")
    assert len(fig.axes) == 2
    nc1_panel = fig.axes[0]
    zigzag = [line for line in nc1_panel.get_lines() if len(line.get_xdata()) > 1][0]
    assert list(zigzag.get_xdata()) == list(range(3 * depth))
    assert len(nc1_panel.collections) == 3  # one marker set per stage: input, agop, activation
    values = np.asarray(zigzag.get_ydata())
    assert np.all(values[1::3] < values[0::3])  # the drop at the AGOP step is what is drawn


# -----------------------------------------------------------------------------
# plot_run: files, determinism, skips, usage errors


def test_plot_run_writes_every_figure_as_png_and_pdf_byte_identically(tmp_path):
    run_dir = make_network_run(tmp_path / "run")
    written = plot_run(run_dir, dpi=60)
    expected = {run_dir / "figures" / f"{name}.{fmt}" for name in FIGURES for fmt in ("png", "pdf")}
    assert set(written) == expected
    for path in written:
        if path.suffix == ".png":
            image = matplotlib.image.imread(path)
            assert image.shape[0] > 100 and image.shape[1] > 200
        else:
            assert path.read_bytes().startswith(b"%PDF")
    first = {path: path.read_bytes() for path in written}
    again = plot_run(run_dir, ["layers", "gram"], dpi=60)  # lines and images: no timestamps, no random ids
    assert len(again) == 4 and all(path.read_bytes() == first[path] for path in again)


def test_plot_run_on_deep_rfm_draws_rfm_figures(tmp_path, caplog):
    run_dir = make_rfm_run(tmp_path / "rfm")
    written = plot_run(run_dir, formats=("png",), dpi=50)
    assert sorted(p.name for p in written) == sorted(f"{name}.png" for name in RFM_FIGURES)
    with caplog.at_level(logging.WARNING):
        assert plot_run(run_dir, ["nc_metrics"], formats=("png",), dpi=50) == []
    assert "nc_metrics" in caplog.text


def test_plot_run_skips_figures_without_data_with_a_warning(tmp_path, caplog):
    run_dir = make_network_run(tmp_path / "run", tpt_epoch=None)
    metrics = synthetic_metrics()
    without_nfa = metrics[~metrics["metric"].str.startswith("nfa")]
    without_nfa.to_csv(run_dir / "analysis" / "metrics.csv", index=False)
    for gram_file in (run_dir / "analysis").glob("gram_*.npz"):
        gram_file.unlink()
    with caplog.at_level(logging.WARNING):
        written = plot_run(run_dir, ["nfa", "gram", "layers"], formats=("png",), dpi=50)
    assert [p.name for p in written] == ["layers.png"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "nfa" in warnings[0] and "gram" in warnings[1]
    assert all("\n" not in w for w in warnings)


def test_plot_run_without_analysis_asks_for_dnc_analyze(tmp_path):
    with pytest.raises(UsageError, match="dnc analyze"):
        plot_run(tmp_path)


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"figures": ["nc_metrics", "spaghetti"]}, "spaghetti"),
    ({"nc1_form": "nc1_fancy"}, "nc1_fancy"),
    ({"split": "validation"}, "validation"),
    ({"formats": ("png", "svg")}, "svg"),
])
def test_plot_run_rejects_bad_options(tmp_path, kwargs, needle):
    run_dir = make_network_run(tmp_path / "run")
    with pytest.raises(UsageError, match=needle) as error:
        plot_run(run_dir, **kwargs)
    assert "\n" not in str(error.value)
    if needle == "spaghetti":
        assert "nc_metrics" in str(error.value) and "rfm_layers" in str(error.value)  # lists the valid names


def test_find_runs_lists_run_folders_sorted(tmp_path):
    make_network_run(tmp_path / "sweep" / "b")
    make_rfm_run(tmp_path / "sweep" / "a")
    assert find_runs(tmp_path / "sweep") == [tmp_path / "sweep" / "a", tmp_path / "sweep" / "b"]


def test_importing_plot_does_not_import_torch():
    code = "import dnc_cli.plot, sys; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
