"""`dnc <command> [hydra overrides]`: a small dispatcher over one Hydra app per command.

The dispatcher strips the subcommand from argv, composes the command's config once to turn Hydra's multi-line
composition errors into one-line usage errors (exit 2), then hands over to the command's `@hydra.main`.
Commands are imported lazily so that `dnc plot` never imports torch.
"""

from __future__ import annotations

import importlib
import itertools
import sys

from omegaconf import OmegaConf, open_dict

from dnc_cli.errors import UsageError, fail
from dnc_cli.runs import RESUME_IN_SWEEPS

# each command's module: its Hydra app `main` and `check(cfg)`, the validation the dispatcher runs first (and
# SHORTHANDS, {key: full key} for keys that would otherwise name a config group: dnc measure's model=; and
# help_text(overrides), a --help of its own instead of Hydra's)
COMMANDS = {
    "train": ("dnc_cli.train.command", "train a network (or build a Deep RFM) and save checkpoints"),
    "analyze": ("dnc_cli.analyze.command", "NC1-NC4, SVD-decomposed NC1 and NFA per layer and checkpoint"),
    "plot": ("dnc_cli.plot.command", "the paper's figures from the analysis tables"),
    "report": ("dnc_cli.report.command", "the paper's claims, judged from a run's or a sweep's tables (report.md)"),
    "measure": ("dnc_cli.measure.command", "the same tables for any PyTorch model's layers, or for saved embeddings"),
}

USAGE = "usage: dnc <command> [key=value ...] [-m] [--help] [--cfg job]\n\ncommands:\n" + "\n".join(
    f"  {name:<9} {help_}" for name, (_, help_) in COMMANDS.items()
) + "\n\n`dnc <command> --help` shows the command's options (Hydra's help)."

# launchers from the optional Hydra plugins (pip install -e '.[sweeps]'); slurm is ours, built on submitit_slurm
_PLUGIN_LAUNCHERS = ("joblib", "submitit_local", "submitit_slurm", "slurm")
# Hydra flags that take a value; the value is not an override
_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-path", "-cp",
                     "--config-dir", "-cd", "--experimental-rerun"}
# Hydra flags after which we do not pre-compose (Hydra prints help/info itself)
_INFO_FLAGS = {"--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc", "--version"}
# Hydra flags that print the config instead of running: the config is composed (bad values still fail in one line)
# but the command's checks of what it would act on (run_dir=, out_dir=) do not run
_PRINT_FLAGS = {"--cfg", "-c"}
_MULTIRUN_FLAGS = {"-m", "--multirun"}


def _overrides(args: list[str]) -> list[str] | None:
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in _INFO_FLAGS:
            return None
        elif arg in _FLAGS_WITH_VALUE:
            skip = True
        elif not arg.startswith("-"):
            out.append(arg)
    return out


def _compose_error(exc: Exception) -> str:
    from hydra.errors import MissingConfigException

    if isinstance(exc, MissingConfigException) and exc.options is not None:
        group = (exc.missing_cfg_file or "").rsplit("/", 1)[0]
        bad = (exc.missing_cfg_file or "").rsplit("/", 1)[-1]
        message = f"{group}={bad} is not a choice; valid: {', '.join(sorted(exc.options))}"
        if group == "hydra/launcher" and bad in _PLUGIN_LAUNCHERS:
            message += f" ({', '.join(_PLUGIN_LAUNCHERS)} need the optional plugins: pip install -e '.[sweeps]')"
        return message
    parts = [str(exc)] + ([str(exc.__cause__)] if exc.__cause__ is not None else [])
    if any("Could not load 'hydra/launcher/submitit_" in part for part in parts):  # our slurm.yaml, no plugin
        return "hydra/launcher=slurm needs the optional plugin hydra-submitit-launcher: pip install -e '.[sweeps]'"
    lines = [line.strip() for part in parts for line in part.splitlines()]
    lines = [line for line in lines if line and not line.startswith(("full_key", "object_type", "reference_type",
                                                                      "Set the environment variable"))]
    return " ".join(dict.fromkeys(lines))  # unique, in order


def _stand_in_job(cfg) -> None:
    """A sweep job's number and id exist only at launch: stand-ins let `${hydra:job.num}` resolve in the check."""
    from hydra.core.hydra_config import HydraConfig

    with open_dict(cfg):
        for key, value in (("num", 0), ("id", "0")):
            if OmegaConf.is_missing(cfg.hydra.job, key):
                cfg.hydra.job[key] = value
    HydraConfig.instance().set_config(cfg)


def _did_you_mean(defaults, keys: list[str]) -> str:
    """For a key that is not in the config, the full keys it may be short for (labels.x -> dataset.labels.x)."""
    def flat(node, prefix=""):
        for key, value in node.items():
            yield f"{prefix}{key}"
            if OmegaConf.is_dict(value):
                yield from flat(value, f"{prefix}{key}.")

    known = list(flat(defaults))
    hints = [full for key in keys if key.lstrip("+~") not in known
             for full in known if full.endswith("." + key.lstrip("+~"))]
    return f" (did you mean {', '.join(hints)}?)" if hints else ""


def _check_config(command: str, module, overrides: list[str], multirun: bool = False, checks: bool = True) -> bool:
    """Compose the config once per sweep value so that every bad value fails here, in one line, and run the
    command's `check` on it (unless `checks` is off: --cfg prints the config only). Returns whether the command is
    a multirun: `multirun` (-m given) or the config asks for one (hydra.mode: MULTIRUN, as the +sweep=... presets
    do); a comma list without either is refused (Hydra would print a five-line error)."""
    from hydra import compose, initialize_config_module
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode
    from omegaconf.errors import OmegaConfBaseException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        choices = [list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.input_line.split("=", 1)[1]]
                   for o in parsed]
        keys = [o.input_line.split("=", 1)[0] for o in parsed]
    except Exception as exc:  # malformed override: let Hydra's own message through, condensed
        fail(command, _compose_error(exc))
    # vary one override at a time (linear, not the full product)
    combos = [[c[0] for c in choices]]
    for i, values in enumerate(choices):
        combos += [[*(c[0] for c in choices[:i]), v, *(c[0] for c in choices[i + 1:])] for v in values[1:]]
    sweeps = [o.input_line for o in parsed if o.is_sweep_override()]
    with initialize_config_module("dnc_cli.conf", version_base="1.3"):
        for combo in itertools.islice(combos, 64):
            try:
                cfg = compose(config_name=command, overrides=[f"{k}={v}" for k, v in zip(keys, combo)],
                              return_hydra_config=True)
            except Exception as exc:
                fail(command, _compose_error(exc) + _did_you_mean(compose(config_name=command), keys))
            multirun = multirun or cfg.hydra.mode == RunMode.MULTIRUN
            if sweeps and not multirun:
                fail(command, f"{sweeps[0]} is a list of values to sweep over: add -m (dnc {command} -m ...) to "
                              "run one job per value")
            _stand_in_job(cfg)
            if not checks:
                continue
            try:
                module.check(cfg)
            except UsageError as exc:
                fail(command, str(exc))
            except OmegaConfBaseException as exc:  # e.g. an interpolation in an override that does not resolve
                fail(command, _compose_error(exc))
    return multirun


def _expand_shorthands(args: list[str], shorthands: dict[str, str]) -> list[str]:
    """A command's `key=value` whose key names a config group of the shared conf/ (dnc measure's model=, conf/model
    being dnc train's): Hydra would take the value for a group choice, so the key becomes the command's own."""
    expanded = []
    for arg in args:
        key, equals, value = arg.partition("=")
        expanded.append(f"{shorthands[key]}={value}" if equals and key in shorthands else arg)
    return expanded


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, args = argv[0], argv[1:]
    if command not in COMMANDS:
        fail(command, f"unknown command '{command}'; valid: {', '.join(COMMANDS)}")
    module = importlib.import_module(COMMANDS[command][0])
    args = _expand_shorthands(args, getattr(module, "SHORTHANDS", {}))
    help_text = getattr(module, "help_text", None)  # a command's own --help (measure: only what it reads)
    if help_text is not None and {"--help", "-h"} & set(args):
        try:
            print(help_text([arg for arg in args if not arg.startswith("-")]))
        except Exception as exc:  # a bad override: Hydra's composition error, in one line
            fail(command, _compose_error(exc))
        return
    overrides = _overrides(args)
    if overrides is not None:
        multirun = _check_config(command, module, overrides, multirun=bool(_MULTIRUN_FLAGS & set(args)),
                                 checks=not _PRINT_FLAGS & set(args))
        if command == "train" and multirun and not any(o.lstrip("+").startswith("resume=") for o in overrides):
            args = [*args, RESUME_IN_SWEEPS]  # sweep jobs continue their own folder when it holds last.pt
    launch = getattr(module, "launch", None)  # a command that drives a Hydra launcher itself (analyze: a job per run)
    if overrides is not None and launch is not None and launch(args, overrides):
        return
    sys.argv = [f"dnc {command}", *args]
    module.main()


if __name__ == "__main__":
    main()
