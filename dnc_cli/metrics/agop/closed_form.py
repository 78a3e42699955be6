"""The AGOP from the weights, for a layer whose output reaches the model's outputs through linear maps only
(PAPER.md, "AGOP and the NFA").

If the outputs are f(x) = W_n ⋯ W_2 (W_1 h + b_1) + c for the measured nn.Linear W_1 and nn.Linear maps W_2..W_n
after it (nn.Identity and other ops that hand their input on as the same tensor are transparent), the Jacobian
J = ∂f/∂h = W_n ⋯ W_1 is the same for every sample, so

    AGOP = (1/N) Σ_i Jᵀ J = Jᵀ J      (the final nn.Linear: WᵀW),

exactly, with no backward pass. This replaces K backward passes per batch for the head of a classifier.

The tail is found safely, from the first batch's forward pass rather than from the module tree: every nn.Linear's
call is recorded (its input and output tensors, and their version counters, which every in-place op bumps), and
the chain is followed back from the model's outputs through calls whose output IS the next call's input (the same
tensor object, unmodified in between). Anything else between the layer and the outputs (an activation, a reshape,
a scale, a residual add, an in-place op, a functional call) breaks the chain and the layer keeps its autograd
AGOP. A layer whose output has more than 2 dims (tokens, positions) keeps it too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class LinearCall:
    module: nn.Linear
    input: torch.Tensor
    input_version: int
    output: torch.Tensor
    output_version: int


class LinearCalls:
    """Records every nn.Linear call of one forward pass (`install` before, `remove` after); `tail_jacobian` then
    gives the closed-form Jacobian of the outputs w.r.t. a layer's input, or None."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.calls: list[LinearCall] = []
        self.inputs: dict[int, tuple[torch.Tensor, int]] = {}  # id(module) -> its input as called, and its version
        self.handles: list = []

    def install(self) -> None:
        """Hooks that see a call's input before, and its output after, the hooks the caller installed earlier
        (which may hand on copies: the copies are what flows)."""
        for module in self.model.modules():
            if isinstance(module, nn.Linear):
                self.handles.append(module.register_forward_pre_hook(self._record_input, prepend=True))
                self.handles.append(module.register_forward_hook(self._record))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def _record_input(self, module, args):
        if args and isinstance(args[0], torch.Tensor):
            self.inputs[id(module)] = (args[0], args[0]._version)

    def _record(self, module, args, output):
        called = self.inputs.pop(id(module), None)
        if called is not None and isinstance(output, torch.Tensor):
            self.calls.append(LinearCall(module, *called, output, output._version))

    def tail_jacobian(self, layer: nn.Module, out: torch.Tensor) -> torch.Tensor | None:
        """J = W_n ⋯ W_1 (K x m_in, float64) when `layer` (an nn.Linear with 2-d output) reaches `out` (the
        model's outputs, after the forward pass) through nn.Linear calls only, each output unmodified and handed on
        as the next call's input; else None."""
        if not isinstance(layer, nn.Linear) or out.ndim != 2:
            return None
        tensor, version = out, out._version
        jacobian = None
        while True:
            call = next((c for c in reversed(self.calls) if c.output is tensor), None)
            if call is None or call.output_version != version or call.output.ndim != 2:
                return None
            weight = call.module.weight.detach().to(torch.float64)
            jacobian = weight if jacobian is None else jacobian @ weight
            if call.module is layer:
                return jacobian
            tensor, version = call.input, call.input_version


def closed_form_agop(jacobian: torch.Tensor) -> torch.Tensor:
    """Jᵀ J (float64): the AGOP of a layer whose Jacobian J is the same for every sample."""
    return jacobian.T @ jacobian
