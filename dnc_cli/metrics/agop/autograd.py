"""The AGOP of any nn.Linear or nn.Conv2d inside any model from vector-Jacobian products (PAPER.md, "AGOP and the
NFA"), exact or sketched, for a generic model (`dnc measure`).

For a layer with input h and the model's outputs f_1..f_K:

    AGOP = (1/N) Σ_i J_iᵀ J_i = (1/N) Σ_i Σ_c ∇_h f_c(x_i) ∇_h f_c(x_i)ᵀ,   J_i = ∂f(x_i)/∂h  (K x m).

* exact: K backward passes per batch, one per output c with the probe e_c, each batched over the samples (the
  samples of a batch are independent in eval mode, so the gradient of Σ_i f_c(x_i) w.r.t. sample i's h is
  ∇f_c(x_i)). All selected layers are served by the same passes.
* sketch: s < K backward passes per batch with random probes g_ij (one per sample i and pass j). Since
  J_iᵀ J_i = E_g[J_iᵀ g gᵀ J_i] for any g with E[g gᵀ] = I/s per probe, Σ_j (J_iᵀ g_ij)(J_iᵀ g_ij)ᵀ is an unbiased
  estimate of J_iᵀ J_i (Hutchinson's trick, one VJP per probe). A sample's s probes are orthogonal
  (`OrthogonalProbes`), so for s = K they give J_iᵀ J_i exactly. Each sample has its own probes, so the error
  also averages over the samples.
  What the estimate serves, and at what error: README, "Measure your own model"; BENCHMARKS.md section 8.

The rows (J_iᵀ g or the gradient w.r.t. the layer's output, in the model's dtype) are accumulated in a Gram,
products and sums in float64 (float32 products round an AGOP's small eigenvalues away: mlp.py, BENCHMARKS.md
section 6):
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
dnc_cli/distributed.py's sync_all) before `compute`. A layer whose output reaches the model's outputs through
linear maps only needs none of this: dnc_cli/metrics/agop/closed_form.py.
"""

from __future__ import annotations

import torch
from torch import nn

from dnc_cli.metrics.agop.mlp import sandwich

# the ways a layer's AGOP is computed (layers.csv's agop_method): from the weights, from K exact VJPs per batch, or
# estimated from s < K random VJPs per batch (dnc_analyze's layer-protocol networks use the hand-written MLP
# backward, dnc_cli/metrics/agop/mlp.py)
CLOSED_FORM, AUTOGRAD, SKETCH = "closed_form", "autograd", "sketch"


# rows cast to float64 per Gram GEMM: ~2 MB, cache-resident. A conv map's (B·positions) x C_out rows cast at once
# cost 0.087 s per VJP against 0.027 s in chunks (500 x 62 x 62 x 16 rows; float32 products: 0.013 s)
GRAM_CHUNK_ELEMENTS = 1 << 18


class LayerAGOP:
    """Streaming AGOP of one layer: `target(...)` says which tensor to differentiate, `add(grad)` per VJP and
    batch, `add_samples(B)` per batch, `compute()` at the end. `method` says how it is computed; `set_closed_form`
    replaces the streamed Gram with the weights' exact answer."""

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
        self.method = AUTOGRAD
        self.probes = 0  # VJPs per batch of a sketch (0: not sketched)
        self.closed_form: torch.Tensor | None = None

    def set_closed_form(self, agop: torch.Tensor) -> None:
        self.closed_form, self.method = agop.to(torch.float64), CLOSED_FORM

    def set_sketch(self, probes: int) -> None:
        self.method, self.probes = SKETCH, probes

    def rows(self, grad: torch.Tensor) -> torch.Tensor:
        """One row per (sample, position): the gradient vectors whose outer products are summed."""
        if self.kind == "conv2d":  # (B, C_out, H', W') -> (B·H'·W', C_out)
            return grad.permute(0, 2, 3, 1).reshape(-1, grad.shape[1])
        return grad.reshape(-1, grad.shape[-1])  # (B, ..., m) -> (B·positions, m)

    def add(self, grad: torch.Tensor) -> None:
        rows = self.rows(grad)
        step = max(1, GRAM_CHUNK_ELEMENTS // max(rows.shape[1], 1))
        for start in range(0, rows.shape[0], step):
            chunk = rows[start:start + step].to(torch.float64)
            self.gram.addmm_(chunk.T, chunk)

    def add_samples(self, count: int) -> None:
        self.num_samples += count

    def sum_states(self) -> list[torch.Tensor]:
        """The state, all sums: the gradient Gram (float64) and the sample count (int64, 0-d)."""
        return [self.gram, self.num_samples]

    def compute(self) -> torch.Tensor:
        """The AGOP w.r.t. the layer's input (Linear) or input patch (Conv2d): m_in (C_in·kh·kw) square, float64."""
        if self.closed_form is not None:
            return self.closed_form
        gram = self.gram / max(int(self.num_samples), 1)
        return gram if self.wrt == "input" else sandwich(self.filters, gram)

    def weight_matrix(self) -> torch.Tensor:
        """The W whose WᵀW the NFA compares with AGOP^α (the filter matrix for a conv)."""
        return self.filters


# the sketch's probes are columns of one Haar-random rotation of R^K up to this K (its QR: ~1 s at K = 4,096, once
# per measurement); above it, of the identity (the outputs themselves, sampled)
MIXED_MAX_OUTPUTS = 4096


class OrthogonalProbes:
    """The sketch's probes: for sample i and pass j, g_ij = sqrt(K/s)·σ_ij·q_{π_i(j)}, with q_1..q_K the columns of
    a rotation Q (Haar-random, drawn once, for K <= MIXED_MAX_OUTPUTS; else the identity), π_i a random s-subset of
    the K columns and σ_ij random signs, all independent per sample. A sample's s probes are orthogonal, E[g gᵀ] = I
    over π and σ for any fixed Q (so the estimate is unbiased), and for s = K Σ_j g_ij g_ijᵀ = Q Qᵀ·K/s = I: exact.
    The rotation mixes the outputs, so that no single output's gradient is left to chance when a few dominate.
    Cheap: a (B, K) gather per pass, no per-sample orthogonalisation (a per-sample QR of (B, K, s) costs B·K·s² and
    holds B·K·s floats)."""

    def __init__(self, num_outputs: int, probes: int, generator: torch.Generator, dtype=torch.float32, device=None):
        if not 1 <= probes <= num_outputs:
            raise ValueError(f"probes={probes} must be in [1, {num_outputs}]")
        self.num_outputs, self.probes, self.generator = num_outputs, probes, generator
        self.scale = (num_outputs / probes) ** 0.5
        self.rotation_t = None  # Qᵀ: row c is q_c
        if num_outputs <= MIXED_MAX_OUTPUTS:
            gaussian = torch.randn(num_outputs, num_outputs, generator=generator, dtype=torch.float64, device=device)
            q, r = torch.linalg.qr(gaussian)
            signs = torch.where(torch.diagonal(r) < 0, -1.0, 1.0)  # R's diagonal positive: Q is Haar
            self.rotation_t = (q * signs).T.to(dtype).contiguous()
        self.dtype, self.device = dtype, device
        self.columns = self.signs = None

    def draw(self, batch: int) -> None:
        """This batch's subsets π_i and signs σ_ij, (batch, s) each."""
        keys = torch.rand(batch, self.num_outputs, generator=self.generator, device=self.device)
        self.columns = keys.argsort(dim=1)[:, :self.probes]
        coins = torch.rand(batch, self.probes, generator=self.generator, device=self.device)
        self.signs = torch.where(coins < 0.5, -self.scale, self.scale).to(self.dtype)

    def direction(self, j: int) -> torch.Tensor:
        """(batch, K): every sample's probe of pass j."""
        if self.rotation_t is not None:
            return self.rotation_t[self.columns[:, j]] * self.signs[:, j, None]
        direction = torch.zeros(len(self.columns), self.num_outputs, dtype=self.dtype, device=self.device)
        return direction.scatter_(1, self.columns[:, j, None], self.signs[:, j, None])


def backward_rows(out: torch.Tensor, pending: list[tuple[LayerAGOP, torch.Tensor]], probes: int,
                  sketch: OrthogonalProbes | None, batch_size: int) -> None:
    """The VJPs of one batch into every pending layer's Gram: out (B, K) the model's outputs, `pending` the layers
    and the tensors their AGOPs differentiate. probes >= K: the K exact passes (probe e_c); else `probes` passes
    with the `sketch`'s probes."""
    if not out.requires_grad:
        for agop, _ in pending:
            agop.influences_output = False
        return
    tensors = [tensor for _, tensor in pending]
    num_outputs = out.shape[1]
    exact = probes >= num_outputs
    count = num_outputs if exact else probes
    if not exact:
        sketch.draw(out.shape[0])
    for j in range(count):
        target = out[:, j].sum() if exact else (out * sketch.direction(j)).sum()
        grads = torch.autograd.grad(target, tensors, retain_graph=j < count - 1, allow_unused=True)
        for (agop, _), grad in zip(pending, grads):
            if grad is None:
                agop.influences_output = False
            else:
                agop.add(grad.detach())
    for agop, _ in pending:
        agop.add_samples(batch_size)
