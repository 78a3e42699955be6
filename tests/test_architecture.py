"""The shape of dnc_cli/: no import cycle (imports inside functions included), no module over ~400 lines, the
dispatcher apart from the commands, no command that tests a run's kind itself, the packages pyproject.toml lists
(and the wheel holds), and torch-free plotting and reporting."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
from conftest import REPO

PACKAGE = REPO / "dnc_cli"
MODULES = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
           for p in sorted(PACKAGE.rglob("*.py"))}
MAX_LINES = 400


def imported(module: str, path: Path) -> set[str]:
    """The dnc_cli modules `module` imports anywhere in its body (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from a.b import c`: a.b, and a.b.c when c is a module
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in MODULES and name != module}
    return found


def test_no_import_cycle():
    graph = {module: imported(module, path) for module, path in MODULES.items()}
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                pytest.fail("import cycle: " + " -> ".join(trail[trail.index(target):] + [module, target]))
            if target not in state:
                visit(target, trail + [module])
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module, [])


def test_the_commands_do_not_import_the_dispatcher():
    importers = [module for module, path in MODULES.items() if "dnc_cli.cli" in imported(module, path)]
    assert importers == ["dnc_cli.__main__"], importers
    assert "def fail(" not in (PACKAGE / "cli.py").read_text()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_over_400_lines(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module}: {lines} lines"


def test_no_command_tests_the_run_kind_itself():
    """The kind of a run is decided once (dnc_cli/runs.py); commands look their code up in a registry by kind."""
    for module, path in MODULES.items():
        text = path.read_text()
        assert "is_rfm" not in text, module
        if module not in ("dnc_cli.config", "dnc_cli.runs"):
            assert "ModelName.deep_rfm" not in text, module


def test_pyproject_lists_every_package():
    listed = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    packages = {".".join(p.parent.relative_to(REPO).parts) for p in PACKAGE.rglob("__init__.py")}
    assert set(listed) == packages | {"dnc_cli.conf"}


def test_plot_and_report_import_no_torch():
    code = ("import sys, dnc_cli.plot.command, dnc_cli.report.command, dnc_cli.plot.sweep\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_wheel_holds_every_package_and_config(tmp_path):
    """Build the wheel, install it into a clean venv (the dependencies, not the editable dnc), compose."""
    build = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", tmp_path / "dist",
                            REPO], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("dnc-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    modules = {str(path.relative_to(REPO)) for path in MODULES.values()}
    assert modules <= set(names), sorted(modules - set(names))
    assert "dnc_cli/conf/train.yaml" in names and "dnc_cli/conf/model/mlp.yaml" in names
    assert "dnc_cli/conf/experiment/paper_mlp.yaml" in names and "dnc_cli/conf/sweep/paper_mlp.yaml" in names
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    deps = next(Path(p) for p in sys.path if p.endswith("site-packages") and (Path(p) / "hydra").exists())
    (site / "deps.pth").write_text(str(deps) + "\n")  # the dependencies, but not the editable dnc
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", site,
                    wheel], check=True)
    python = venv / "bin" / "python"
    where = subprocess.run([python, "-c", "import dnc_cli.report.command; print(dnc_cli.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert str(site) in where.stdout, where
    result = subprocess.run([python, "-m", "dnc_cli", "train", "experiment=paper_deep_rfm", "--cfg", "job"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0 and "name: deep_rfm" in result.stdout, result.stderr
    for command in ("analyze", "plot", "report"):
        result = subprocess.run([python, "-m", "dnc_cli", command, "run_dir=.", "--cfg", "job"], capture_output=True,
                                text=True, cwd=tmp_path, timeout=120)
        assert result.returncode == 0, (command, result.stderr)
