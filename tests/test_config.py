"""dnc_cli/config.py and conf/: the schemas hold every default, the YAML files only what differs per option, and
every command composes as it did before the refactor (tests/data/defaults)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import REPO, composed, pop_rff_gamma

from dnc_cli.config import (
    AnalyzeConfig,
    DatasetConfig,
    MeasureConfig,
    ModelConfig,
    OptimizerConfig,
    PlotConfig,
    ReportConfig,
    TrainConfig,
    to_plain,
    validate_analyze,
    validate_report,
)
from dnc_cli.errors import UsageError

CONF = REPO / "conf"
DEFAULTS = sorted((Path(__file__).parent / "data" / "defaults").glob("*.yaml"))
SCHEMAS = {"train": TrainConfig, "analyze": AnalyzeConfig, "plot": PlotConfig, "report": ReportConfig,
           "measure": MeasureConfig, "dataset": DatasetConfig, "model": ModelConfig, "optimizer": OptimizerConfig}


@pytest.mark.parametrize("path", DEFAULTS, ids=[p.stem for p in DEFAULTS])
def test_commands_compose_as_before(path):
    """`dnc <command> [<group>=<option>] --cfg job` as before the refactor: the defaults moved from YAML into the
    schemas without changing."""
    command, _, override = path.stem.partition("_")
    config = composed(command, [override] if override else [])
    if command == "train":
        pop_rff_gamma(config)
    assert config == yaml.safe_load(path.read_text())


def flat(node: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out |= flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


YAML_FILES = [CONF / f"{c}.yaml" for c in ("train", "analyze", "plot", "report", "measure")] + sorted(
    p for group in ("dataset", "model", "optimizer") for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("path", YAML_FILES, ids=[p.relative_to(CONF).as_posix() for p in YAML_FILES])
def test_yaml_holds_no_schema_default(path):
    """A command's or a group option's YAML holds the defaults list, Hydra's settings and the values its option
    changes, never a value the schema holds already (one source of defaults: dnc_cli/config.py)."""
    text = yaml.safe_load(path.read_text()) or {}
    values = flat({k: v for k, v in text.items() if k not in ("defaults", "hydra")})
    group = path.parent.name if path.parent != CONF else path.stem
    defaults = flat(to_plain(SCHEMAS[group]()))
    restated = {k: v for k, v in values.items() if k != "name" and k in defaults and defaults[k] == v}
    assert not restated, f"{path.relative_to(REPO)} restates the schema's defaults {restated}"
    assert not set(values) - set(defaults), "a key the schema lacks"


def test_validation_names_the_bad_value():
    with pytest.raises(UsageError, match="jobs=0"):
        validate_analyze(AnalyzeConfig(jobs=0))
    with pytest.raises(UsageError, match="majority=1.5 must be in"):
        validate_report(ReportConfig(majority=1.5))
    with pytest.raises(UsageError, match="nc1_form=nc5 is not one of nc1_trace, nc1"):
        validate_report(ReportConfig(nc1_form="nc5"))
    with pytest.raises(UsageError, match="collapse_factor=0.5 must be a factor >= 1"):
        validate_report(ReportConfig(collapse_factor=0.5))
