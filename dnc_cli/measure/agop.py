"""The exact AGOP of any nn.Linear or nn.Conv2d inside any model, from autograd (PAPER.md, "AGOP and the NFA":
its K backward passes batched over the samples, for a generic model).

For a layer with input h and the model's outputs f_1..f_C:

    AGOP = (1/N) Σ_i Σ_c ∇_h f_c(x_i) ∇_h f_c(x_i)ᵀ.

All selected layers are served by the same K backward passes per batch (one per output c, each batched over the
samples: the samples of a batch are independent in eval mode, so the gradient of Σ_i f_c(x_i) w.r.t. sample i's h
is ∇f_c(x_i)). Gradient products are formed in the model's dtype and summed in float64.

* nn.Linear, W (m_out x m_in): the gradient w.r.t. the input is Wᵀ g̃, g̃ the gradient w.r.t. the output W h + b,
  so AGOP = Wᵀ P W with P = (1/N) Σ g̃ g̃ᵀ. The Gram is taken on the narrower side: w.r.t. the input when
  m_in <= m_out, else w.r.t. the output and sandwiched (as `dnc analyze` does, PAPER.md). An input with more dims,
  (B, ..., m_in) (tokens, positions), sums over those positions: each is an input of the same W.
* nn.Conv2d (groups = 1), W reshaped to the filter matrix W_mat (C_out x C_in·kh·kw): the conv is
  out[i, :, p] = W_mat · patch_{i,p} (+ b), with patch_{i,p} the unfolded input patch at output location p. Taking
  each patch as an input of W_mat (Beaglehole et al.'s convolutional NFA), ∂f_c/∂patch_{i,p} = W_matᵀ ∂f_c/∂out[i,:,p],
  and

      AGOP_patch = (1/N) Σ_i Σ_c Σ_p W_matᵀ g_{icp} g_{icp}ᵀ W_mat = W_matᵀ P W_mat,   P = (1/N) Σ_{icp} g gᵀ,

  C_in·kh·kw square like W_matᵀ W_mat, the filters' Gram it is compared with. Normalisation: summed over the
  locations p, averaged over the N samples (a scale the NFA correlation does not see).

Both the Gram and the sample count are sums over samples: under torchrun the ranks' are added (`sum_states`,
dnc_cli/distributed.py's sync_all) before `compute`.
"""

from __future__ import annotations

import torch
from torch import nn

from dnc_cli.metrics.agop import sandwich


class LayerAGOP:
    """Streaming AGOP of one layer: `target(...)` says which tensor to differentiate, `add(grad)` per output and
    batch, `add_samples(B)` per batch, `compute()` at the end."""

    def __init__(self, module: nn.Module):
        weight = module.weight.detach()
        if isinstance(module, nn.Linear):
            self.kind = "linear"
            self.filters = weight  # W (m_out, m_in)
            out_dim, in_dim = weight.shape
            self.wrt = "input" if in_dim <= out_dim else "output"
        elif isinstance(module, nn.Conv2d):
            if module.groups != 1:
                raise ValueError(f"a Conv2d with groups={module.groups} has no single filter matrix")
            self.kind = "conv2d"
            self.filters = weight.reshape(weight.shape[0], -1)  # W_mat (C_out, C_in·kh·kw)
            self.wrt = "output"
        else:
            raise ValueError(f"no AGOP for a {type(module).__name__}")
        dim = self.filters.shape[1] if self.wrt == "input" else self.filters.shape[0]
        self.gram = torch.zeros(dim, dim, dtype=torch.float64, device=weight.device)
        self.num_samples = torch.zeros((), dtype=torch.int64, device=weight.device)
        self.influences_output = True

    def rows(self, grad: torch.Tensor) -> torch.Tensor:
        """One row per (sample, position): the gradient vectors whose outer products are summed."""
        if self.kind == "conv2d":  # (B, C_out, H', W') -> (B·H'·W', C_out)
            return grad.permute(0, 2, 3, 1).reshape(-1, grad.shape[1])
        return grad.reshape(-1, grad.shape[-1])  # (B, ..., m) -> (B·positions, m)

    def add(self, grad: torch.Tensor) -> None:
        rows = self.rows(grad)
        self.gram += (rows.T @ rows).to(torch.float64)

    def add_samples(self, count: int) -> None:
        self.num_samples += count

    def sum_states(self) -> list[torch.Tensor]:
        """The state, all sums: the gradient Gram (float64) and the sample count (int64, 0-d)."""
        return [self.gram, self.num_samples]

    def compute(self) -> torch.Tensor:
        """The AGOP w.r.t. the layer's input (Linear) or input patch (Conv2d): m_in (C_in·kh·kw) square, float64."""
        gram = self.gram / max(int(self.num_samples), 1)
        return gram if self.wrt == "input" else sandwich(self.filters, gram)

    def weight_matrix(self) -> torch.Tensor:
        """The W whose WᵀW the NFA compares with AGOP^α (the filter matrix for a conv)."""
        return self.filters
