"""How `dnc` reports bad input: a `UsageError` anywhere, turned into one line on stderr and exit status 2 by `fail`;
`reading(path)` turns a file that is missing, unreadable or damaged into such an error, naming the file.

Every command imports this module and nothing else of the CLI, so the dispatcher (dnc_cli/cli.py) can import the
commands without an import cycle.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
import traceback
import zipfile
from pathlib import Path

import yaml
from omegaconf.errors import OmegaConfBaseException

# What reading and parsing a damaged file raises, and nothing broader (a bug elsewhere keeps its traceback):
# the parsers' own errors (YAML, OmegaConf's schema, JSON, CSV, NumPy and unicode decoding are ValueErrors), a
# truncated file (EOFError), torch.load's archive reader (RuntimeError) and its weights_only unpickler, zip
# archives (.pt, .npz), content of the wrong shape (KeyError, TypeError, IndexError, AttributeError), the OS.
DAMAGED_FILE_ERRORS = (OSError, ValueError, EOFError, RuntimeError, KeyError, TypeError, IndexError, AttributeError,
                       pickle.UnpicklingError, zipfile.BadZipFile, yaml.YAMLError, OmegaConfBaseException)
MESSAGE_LENGTH = 200  # a parser's message, cut to keep the error on one readable line


class UsageError(Exception):
    """Bad user input: printed as one line, exit status 2, no traceback."""


def fail(command: str, message: str) -> None:
    """The one way a command reports bad input: one line on stderr, exit status 2. HYDRA_FULL_ERROR=1 also prints
    the traceback of the exception being handled (with the parser's error it came from), for debugging."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1" and sys.exc_info()[0] is not None:
        traceback.print_exc()
    print(f"dnc {command}: error: {' '.join(message.split())}", file=sys.stderr)
    raise SystemExit(2)


def short(exc: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    text = text[:MESSAGE_LENGTH] + ("..." if len(text) > MESSAGE_LENGTH else "")
    key = getattr(exc, "full_key", None)  # OmegaConf's errors know the key whose value is wrong
    text = f"{key}: {text}" if key else text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def unpickling_detail(exc: BaseException) -> str:
    """What torch.load(weights_only=True) refused, from its long message (whose first line is generic advice)."""
    lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
    detail = [line for line in lines if not line.startswith(("Please file", "Check the documentation",
                                                             "WeightsUnpickler error"))]
    return (detail or lines or [type(exc).__name__])[0][:MESSAGE_LENGTH]


@contextlib.contextmanager
def reading(path, hint: str = "", *, library: bool = False):
    """Read and parse `path` inside this block: any failure of the file becomes a UsageError that names it (and adds
    `hint`, e.g. how to rebuild the file). A UsageError raised inside passes through unchanged.

    `library=True` when the block is a third-party reader's call alone (torch.load, np.load, pandas, torchvision's
    datasets): such a reader raises whatever its checks raise on bytes it does not expect (torchvision's IDX reader
    an AssertionError), so any exception from it is the file's. Our own parsing stays outside such a block, so that
    a bug of ours keeps its traceback."""
    path = Path(path)
    suffix = f"; {hint}" if hint else ""
    try:
        yield
    except UsageError:
        raise
    except FileNotFoundError as exc:
        raise UsageError(f"{path} is missing{suffix}") from exc
    except PermissionError as exc:
        raise UsageError(f"{path} cannot be read ({exc.strerror}){suffix}") from exc
    except pickle.UnpicklingError as exc:  # weights_only=True met an object that is not tensors and plain data
        raise UsageError(f"{path} is not a file of tensors that loads safely (weights_only=True refused it: "
                         f"{unpickling_detail(exc)}){suffix}") from exc
    except DAMAGED_FILE_ERRORS as exc:
        raise UsageError(f"{path} is damaged or not what dnc wrote ({short(exc)}){suffix}") from exc
    except Exception as exc:
        if not library:
            raise
        raise UsageError(f"{path} is damaged or not what dnc wrote ({short(exc)}){suffix}") from exc


def need(condition: bool, path, what: str, hint: str = "") -> None:
    """A read file's content check: UsageError naming `path` unless `condition`."""
    if not condition:
        raise UsageError(f"{path} is damaged or not what dnc wrote ({what})" + (f"; {hint}" if hint else ""))
