"""`dnc <command> [hydra overrides]`: a small dispatcher over one Hydra app per command.

The dispatcher strips the subcommand from argv, composes the command's config once to turn Hydra's multi-line
composition errors into one-line usage errors (exit 2), then hands over to the command's `@hydra.main`.
Commands are imported lazily so that `dnc plot` never imports torch.
"""

from __future__ import annotations

import importlib
import itertools
import sys

COMMANDS = {
    "train": ("dnc_cli.train", "train a network (or build a Deep RFM) and save checkpoints"),
    "analyze": ("dnc_cli.analyze", "NC1-NC4, SVD-decomposed NC1 and NFA per layer and checkpoint"),
    "plot": ("dnc_cli.plot_cmd", "the paper's figures from the analysis tables"),
}

USAGE = "usage: dnc <command> [key=value ...] [-m] [--help] [--cfg job]\n\ncommands:\n" + "\n".join(
    f"  {name:<9} {help_}" for name, (_, help_) in COMMANDS.items()
) + "\n\n`dnc <command> --help` shows the command's options (Hydra's help)."

# Hydra flags that take a value; the value is not an override
_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-path", "-cp",
                     "--config-dir", "-cd", "--experimental-rerun"}
# Hydra flags after which we do not pre-compose (Hydra prints help/info itself)
_INFO_FLAGS = {"--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc", "--version"}


def fail(command: str, message: str) -> None:
    """The one way a command reports bad input: one line on stderr, exit status 2."""
    print(f"dnc {command}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


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
        return f"{group}={bad} is not a choice; valid: {', '.join(sorted(exc.options))}"
    parts = [str(exc)] + ([str(exc.__cause__)] if exc.__cause__ is not None else [])
    lines = [line.strip() for part in parts for line in part.splitlines()]
    lines = [line for line in lines if line and not line.startswith(("full_key", "object_type", "reference_type",
                                                                      "Set the environment variable"))]
    return " ".join(dict.fromkeys(lines))  # unique, in order


def _check_config(command: str, module, overrides: list[str]) -> None:
    """Compose the config once per sweep value so that every bad value fails here, in one line."""
    from hydra import compose, initialize_config_module
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from dnc_cli.errors import UsageError

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
    with initialize_config_module("dnc_cli.conf", version_base="1.3"):
        for combo in itertools.islice(combos, 64):
            try:
                cfg = compose(config_name=command, overrides=[f"{k}={v}" for k, v in zip(keys, combo)],
                              return_hydra_config=True)
            except Exception as exc:
                fail(command, _compose_error(exc))
            try:
                module.check(cfg)
            except UsageError as exc:
                fail(command, str(exc))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, args = argv[0], argv[1:]
    if command not in COMMANDS:
        fail(command, f"unknown command '{command}'; valid: {', '.join(COMMANDS)}")
    module = importlib.import_module(COMMANDS[command][0])
    overrides = _overrides(args)
    if overrides is not None:
        _check_config(command, module, overrides)
    sys.argv = [f"dnc {command}", *args]
    module.main()


if __name__ == "__main__":
    main()
