"""dnc_cli/plot/command.py `plot_run` on synthetic run folders: files, determinism, each kind's figures, skips,
usage errors."""

from __future__ import annotations

import logging

import matplotlib.image
import pytest
from plot_tables import make_network_run, make_rfm_run, synthetic_metrics

from dnc_cli.errors import UsageError
from dnc_cli.plot.command import plot_run
from dnc_cli.plot.figures import RUN_FIGURES
from dnc_cli.runs import DEEP_RFM, NETWORK


@pytest.mark.slow
def test_plot_run_writes_every_figure_as_png_and_pdf_byte_identically(tmp_path):
    run_dir = make_network_run(tmp_path / "run")
    written = plot_run(run_dir, dpi=60)
    expected = {run_dir / "figures" / f"{name}.{fmt}" for name in RUN_FIGURES[NETWORK] for fmt in ("png", "pdf")}
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
    assert sorted(p.name for p in written) == sorted(f"{name}.png" for name in RUN_FIGURES[DEEP_RFM])
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
