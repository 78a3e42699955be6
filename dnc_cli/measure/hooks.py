"""Which modules `measure` reads and how a module's output becomes a feature matrix (N x m).

* Layers are chosen by their `model.named_modules()` names; a pattern may be a glob (`fnmatch`: `blocks.*.mlp.fc2`,
  `layer[34]`). Layer l (1-based, the `layer` column of the table) is the l-th selected module in
  `named_modules()` order, whatever the order of the patterns.
* A module's output (B, ...) is one sample per row: flattened to (B, m), or averaged over its positions with
  `pool="avg"`. Positions are the spatial dims of a channels-first map (B, C, H, W) -> (B, C), the tokens of a
  sequence (B, T, d) -> (B, d), and, for an `nn.Linear` (which acts on the last dim), every dim between the batch and
  the last. A 3-d output of a module whose class name ends in `1d` (Conv1d, BatchNorm1d, ...) is channels-first.
* The `activation` stage of an `nn.Linear` (PAPER.md, SVD-decomposed NC1: σ(W h)) is the output of the activation
  *module* (nn.ReLU, nn.GELU, ... see ACTIVATIONS) that receives the Linear's output tensor itself, possibly through
  an eval-mode Dropout. A functional nonlinearity (F.relu) or none means the Linear has no `activation` stage.
"""

from __future__ import annotations

import difflib
import fnmatch

import torch
from torch import nn

from dnc_cli.errors import UsageError

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
               nn.Mish, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign, nn.Hardswish, nn.Hardtanh, nn.Hardsigmoid,
               nn.Tanhshrink, nn.LogSigmoid)
POOLS = (None, "avg")


def select_layers(model: nn.Module, patterns: list[str] | None) -> list[tuple[str, nn.Module]]:
    """[(name, module)] in `named_modules()` order. None: every nn.Linear (the layers the paper analyses).

    A pattern matching no module is a UsageError that lists the closest names (difflib)."""
    named = [(name, module) for name, module in model.named_modules() if name]
    if patterns is None:
        chosen = [(name, module) for name, module in named if isinstance(module, nn.Linear)]
        if not chosen:
            raise UsageError("the model has no nn.Linear module; name the layers to measure: layers=[...]")
        return chosen
    if isinstance(patterns, str):
        patterns = [patterns]
    names = [name for name, _ in named]
    wanted = set()
    for pattern in patterns:
        hits = [name for name in names if fnmatch.fnmatchcase(name, str(pattern))]
        if not hits:
            close = difflib.get_close_matches(str(pattern), names, n=5, cutoff=0.5)
            hint = f"; close matches: {', '.join(close)}" if close else f"; modules: {_some(names)}"
            raise UsageError(f"layer '{pattern}' matches no module of the model{hint}")
        wanted.update(hits)
    return [(name, module) for name, module in named if name in wanted]


def _some(names: list[str], at_most: int = 12) -> str:
    shown = ", ".join(names[:at_most])
    return shown + (f", ... ({len(names)} in all)" if len(names) > at_most else "")


def layer_kind(module: nn.Module) -> str:
    """linear | conv2d | module: what the SVD stages and the AGOP can be computed for."""
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Conv2d) and type(module).__name__ == "Conv2d":
        return "conv2d"
    return "module"


def channels_last(module: nn.Module, ndim: int) -> bool:
    """Whether the feature dim of a (B, ..., d) output of `module` is the last one (see the module docstring)."""
    if isinstance(module, nn.Linear) and ndim >= 3:
        return True
    return ndim == 3 and not type(module).__name__.endswith("1d")


def as_features(output, name: str, batch_size: int, pool: str | None, last: bool) -> torch.Tensor:
    """A module output as (B, m) features: flattened, or averaged over its positions (pool="avg")."""
    if not isinstance(output, torch.Tensor):
        raise UsageError(f"layer '{name}' outputs a {type(output).__name__}, not a tensor: select a module whose "
                         f"output is one tensor (one of its submodules, say)")
    if output.ndim == 0 or output.shape[0] != batch_size:
        raise UsageError(f"layer '{name}' outputs shape {tuple(output.shape)}, whose first dim is not the batch "
                         f"({batch_size} samples)")
    if not output.is_floating_point():
        raise UsageError(f"layer '{name}' outputs {output.dtype} values, not floating-point features")
    output = output.detach()
    if output.ndim == 2:
        return output
    if pool is None:
        return output.reshape(batch_size, -1)
    dims = tuple(range(1, output.ndim - 1)) if last else tuple(range(2, output.ndim))
    return output.mean(dims)


def linear_stages(h: torch.Tensor, matrix_t: torch.Tensor, widths: list[int], pool: str | None) -> list[torch.Tensor]:
    """Features of linear maps applied along the last dim of a Linear's input h (B, ..., d): h @ matrix_t, whose
    columns are the maps side by side (`right` = S Vᵀ h, `agop` = AGOP^½ h; one GEMM for both), split into `widths`.
    Averaging over positions commutes with the maps, so a pooled input is averaged first."""
    h = h.detach()
    batch = h.shape[0]
    if h.ndim > 2 and pool is not None:
        h = h.mean(tuple(range(1, h.ndim - 1)))
    mapped = h @ matrix_t.to(h.dtype)
    return [part.reshape(batch, -1) for part in mapped.split(widths, dim=-1)]


def resolve_output(returned, spec, captured: torch.Tensor | None, batch_size: int) -> torch.Tensor:
    """The tensor whose C columns are the model's outputs f_1..f_C: NC4's predictions are its argmax, the AGOP
    differentiates each column. `spec`: None (the model's return value, or its `.logits` / ["logits"]), a module
    name (that module's output, `captured`) or a callable applied to the return value."""
    if isinstance(spec, str):
        out, what = captured, f"output='{spec}'"
        if out is None:
            raise UsageError(f"output='{spec}': that module did not run in the forward pass")
    elif callable(spec):
        out, what = spec(returned), "output(...)"
    else:
        out, what = returned, "the model's return value"
        if not isinstance(out, torch.Tensor):
            logits = getattr(out, "logits", None)
            if logits is None and isinstance(out, dict):
                logits = out.get("logits")
            if not isinstance(logits, torch.Tensor):
                raise UsageError(f"the model returns a {type(returned).__name__}, not a tensor of outputs: pass "
                                 "output=<module name> or output=<callable picking the logits>")
            out = logits
    if not isinstance(out, torch.Tensor):
        raise UsageError(f"{what} is a {type(out).__name__}, not a tensor")
    if out.ndim != 2 or out.shape[0] != batch_size:
        raise UsageError(f"{what} has shape {tuple(out.shape)}; expected (batch, outputs) = ({batch_size}, C)")
    return out


def close_names(model: nn.Module, name: str) -> list[str]:
    return difflib.get_close_matches(name, [n for n, _ in model.named_modules() if n], n=5, cutoff=0.5)
