"""bench/gpu_check.py (`make gpu-check`) on a machine without CUDA: its one line, its CPU dry run of every step, where
it writes its report, and the `cuda` marker it selects the CUDA tests by."""

from __future__ import annotations

import ast
import importlib.util
import sys

import pytest
import torch
from conftest import REPO

SCRIPT = REPO / "bench" / "gpu_check.py"


def _script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_without_cuda_it_says_so_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _script().main([]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "no CUDA device" in out and "--cpu-dry-run" in out


def test_where_the_report_goes(monkeypatch, tmp_path):
    script = _script()
    monkeypatch.delenv("DNC_GPU_CHECK_OUT", raising=False)
    monkeypatch.delenv("OUT", raising=False)
    assert script.output_path(None) is None
    monkeypatch.setenv("OUT", str(tmp_path))
    assert script.output_path(None) == tmp_path / "gpu_check.md"
    monkeypatch.setenv("DNC_GPU_CHECK_OUT", str(tmp_path / "a.md"))
    assert script.output_path(None) == tmp_path / "a.md"
    assert script.output_path(str(tmp_path / "b.md")) == tmp_path / "b.md"


def test_every_test_that_skips_without_cuda_is_marked_cuda():
    """`pytest -m cuda` is how the check finds the CUDA tests: a new one without the marker would never run."""
    found = []
    for path in sorted((REPO / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                decorators = [ast.unparse(d) for d in node.decorator_list]
                if any("cuda.is_available" in d for d in decorators):
                    found.append(node.name)
                    assert "pytest.mark.cuda" in decorators, f"{path.name}::{node.name} lacks @pytest.mark.cuda"
    assert len(found) >= 2, found


@pytest.mark.slow
def test_the_cpu_dry_run_passes_every_step(tmp_path, capsys):
    """Every step at toy sizes on the CPU (the CUDA tests skip): the same code paths as on a GPU."""
    out = tmp_path / "report" / "gpu_check.md"
    assert _script().main(["--cpu-dry-run", "--out", str(out)]) == 0
    text = out.read_text()
    assert text in capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| step")]
    assert len(rows) == 5 and all("| yes |" in row for row in rows), text
    assert "skipped" in rows[0] and "every family (nc, svd, nfa, geometry)" in text and "float64 Gram)" in text
