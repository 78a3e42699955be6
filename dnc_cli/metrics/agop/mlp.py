"""The hand-written MLP backward: the AGOP of every layer of a layer-protocol network (Linear + ReLU layers, the
networks of `dnc train`), for `dnc analyze` (PAPER.md, "AGOP and the NFA"):

    AGOP_l = (1/N) Σ_i Σ_c ∇f_c(h_{l-1,i}) ∇f_c(h_{l-1,i})ᵀ

`LayerAGOPs` streams all layers' AGOPs over batches (`update(h0)` then `compute()`), like the collapse metrics.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dnc_cli.distributed import all_reduce_sum, world_size

# the relative spread tr(centred Gram)/tr(Gram) of the Jacobians below which they count as not varying over the
# samples, and no centred AGOP is defined (LayerAGOPs.preactivation_grams): the tool's choice, far above rounding
CENTRED_SPREAD_FLOOR = 1e-8
GRAM_BLOCK = 128  # column block of `add_gram`: measured fastest on a 2-core AVX-512 CPU (64: 0.12 s, 512: 0.15 s)


def add_gram(total: Tensor, rows: Tensor) -> None:
    """total += rowsᵀ rows on and above the diagonal blocks only (≈ 5/8 of the GEMM work at m = 512; the Gram is
    symmetric, `symmetrised` restores the rest). Products in the rows' dtype, sums in total's (float64)."""
    m = rows.shape[1]
    for start in range(0, m, GRAM_BLOCK):
        block = slice(start, start + GRAM_BLOCK)
        total[block, start:] += (rows[:, block].T @ rows[:, start:]).to(total.dtype)


def symmetrised(upper_blocks: Tensor) -> Tensor:
    """The symmetric matrix whose upper triangle `add_gram` accumulated."""
    return torch.triu(upper_blocks) + torch.triu(upper_blocks, 1).T


class LayerAGOPs:
    """Every analysed layer's AGOP (PAPER.md, AGOP and the NFA), streamed over batches: `update(h0)`, `compute()`.

    AGOP_l = (1/N) Σ_i Σ_c ∇f_c(h_{l-1,i}) ∇f_c(h_{l-1,i})ᵀ, f = the sub-network from h_{l-1} to the K logits.
    Exact, and cheaper than K autograd backward passes into every h_{l-1} because the layer protocol's layers are
    Linear + ReLU:
    * the gradient w.r.t. h_{l-1} is W_lᵀ g̃, g̃ = the gradient w.r.t. the pre-activation W_l h_{l-1}. So
      AGOP_l = W_lᵀ P_l W_l with P_l = (1/N) Σ g̃ g̃ᵀ (m_l x m_l), formed once in compute(): no backward into
      h_0 and layer 1's per-row product is m_1² (512²) instead of d² (784² on MNIST);
    * the last layer's g̃ for output c is s_i ⊙ a_c (s_i = ReLU'(W_L h_{L-1,i}) ∈ {0,1}^m, a_c = classifier row
      c), so Σ_i Σ_c g̃ g̃ᵀ = (AᵀA) ⊙ (SᵀS): N m² work instead of N K m²;
    * the other layers' g̃ come from one hand-written backward of all K outputs at once, (K, B, m) per layer,
      and their P_l sums from `add_gram` (upper blocks only).
    Precision: the forward and the backward run in the model's own dtype (no copy); the gradients are cast to
    `dtype` (float64 by default) before their products, and every sum is float64. A float32 product rounds each
    Gram entry by ε₃₂ times the rows' magnitude, which can drown an AGOP's small eigenvalues, and AGOP^½ and the
    Σ_B^† of the `agop` stage weigh exactly those directions (issue #14: on MNIST, width 128, epoch 10, test split,
    agop-stage nc1 67 from unshifted float32 products, 219 in float64). Float32 gradients only move an eigenvalue
    λ by about 2ε₃₂√(λ·λ_max). Measured on two ill-conditioned checkpoints (BENCHMARKS.md section 6): every row an
    AGOP enters within 3.4e-4 of the float64 analysis (the float32 features' rounding: a float64 copy of the head
    gives the same), at 1.2× the time of float32 products instead of 1.6× for a float64 copy of the head. (The
    shifted sums below made float32 products as accurate on those two cases; they shrink the rows only where the
    gradients vary little over the samples, so the default keeps float64 products.)
    Checked against per-sample autograd Jacobians in the tests and against vmap(jacrev) in `make bench`.

    The hidden layers' sums are of g̃ - s (shifted sums), s = the mean g̃ of a fixed batch, `shift_inputs`: the
    Gram of the Jacobians centred over the samples (`preactivation_grams(centred=True)`) is then a small
    correction of a sum of small terms instead of a difference of two large equal sums, so it is accurate where the
    Jacobians barely vary (every sample with the same ReLU pattern) and it does not move with the order of the
    additions, i.e. with the BLAS kernel or the number of ranks. Under torchrun every rank must be given the same
    `shift_inputs` (the split's first batch before sharding): sums about one shift add up. Without them the first
    batch's gradients are the shift, which is right in one process."""

    def __init__(self, model, dtype: torch.dtype = torch.float64, shift_inputs: Tensor | None = None):
        if not isinstance(model.act, torch.nn.ReLU):  # the masks below are ReLU's derivative
            raise TypeError(f"LayerAGOPs needs ReLU layers, got {type(model.act).__name__}")
        self.dtype = dtype  # of the Gram's products; the forward and backward run in the model's own dtype
        self.model = model
        device = model.classifier.weight.device
        # per hidden layer Σ (g̃ - s)(g̃ - s)ᵀ over samples and outputs (upper blocks); for the last layer SᵀS, the
        # ReLU masks' Gram (exact integers in float64: its g̃ g̃ᵀ sum is (AᵀA) ⊙ SᵀS)
        self.preact_sums = [torch.zeros(layer.out_features, layer.out_features, dtype=torch.float64, device=device)
                            for layer in model.layers]
        # per hidden layer Σ_i (g̃_ic - s_c) per output c (K x m_l); for the last layer Σ_i s_i, the ReLU masks' sum
        num_outputs = model.classifier.out_features
        self.preact_grad_sums = [torch.zeros(num_outputs, layer.out_features, dtype=torch.float64, device=device)
                                 for layer in model.layers[:-1]]
        self.preact_grad_sums.append(torch.zeros(model.layers[-1].out_features, dtype=torch.float64, device=device))
        self.num_samples = torch.zeros((), dtype=torch.int64, device=device)
        self.shifts = None  # per hidden layer s (K x m_l, float64): not a sum, the same on every rank
        self.shift_shared = shift_inputs is not None
        if self.shift_shared:
            self.shifts = self._mean_gradients(shift_inputs)

    def _preact_grads(self, trace):
        """Per layer l, from the last: (l, its ReLU mask, the pre-activation gradients of all K outputs (K, B, m_l)),
        by the hand-written backward of the batch's `trace`; one layer's gradients alive at a time."""
        classifier = self.model.classifier.weight  # A, (K, m_L)
        grad_out = None  # ∂logits/∂h_l for the K outputs, (K, B, m_l); for l = L it is A's rows
        for l in range(len(self.model.layers), 0, -1):
            active = trace.outputs[l - 1] > 0  # ReLU'(W_l h_{l-1}); torch's ReLU backward uses the same test
            preact_grad = classifier.unsqueeze(1) * active if grad_out is None else grad_out * active
            yield l, active, preact_grad
            if l > 1:
                grad_out = preact_grad @ self.model.layers[l - 1].weight

    def _mean_gradients(self, h0: Tensor) -> list[Tensor]:
        """Per hidden layer the batch's mean pre-activation gradient per output, (K, m_l) float64: the shift."""
        with torch.no_grad():
            means = {l: g.double().mean(1) for l, _, g in self._preact_grads(self.model.trace(h0))}
        return [means[l] for l in range(1, len(self.model.layers))]

    def update(self, h0: Tensor):
        """Adds this batch (h0: (B, m_0)) to every layer's sum; returns the batch's trace for reuse."""
        if self.shifts is None:
            self.shifts = self._mean_gradients(h0)
        with torch.no_grad():
            trace = self.model.trace(h0)
            for l, active, preact_grad in self._preact_grads(trace):
                if l == len(self.model.layers):  # closed form from the masks' Gram and sum: exact integers
                    mask = active.double()
                    self.preact_sums[l - 1] += mask.T @ mask
                    self.preact_grad_sums[l - 1] += mask.sum(0)
                else:
                    # cast before the shift: the shifted rows, their products and sums are float64, so only
                    # the gradients' own rounding (float32 in a float32 model) remains
                    shifted = preact_grad.to(self.dtype) - self.shifts[l - 1].to(self.dtype).unsqueeze(1)
                    add_gram(self.preact_sums[l - 1], shifted.reshape(-1, shifted.shape[-1]))
                    self.preact_grad_sums[l - 1] += shifted.double().sum(1)
        self.num_samples += h0.shape[0]
        return trace

    def sum_states(self) -> list[Tensor]:
        """The state, all sums: per layer the shifted pre-activation gradient Gram (upper blocks) and gradient sums
        (float64), and the sample count (int64). The shifts are the same on every rank (`shift_inputs`)."""
        if world_size() > 1 and not self.shift_shared:
            raise ValueError("LayerAGOPs under torchrun needs shift_inputs, the same on every rank")
        return [*self.preact_sums, *self.preact_grad_sums, self.num_samples]

    def sync(self) -> None:
        """Add every rank's sums (no-op in one process): then compute() gives the AGOPs over all ranks' samples.
        Every rank's `add_gram` fills the same upper blocks, so the sum of the upper blocks is the upper blocks of
        the sum."""
        all_reduce_sum(self.sum_states())

    def preactivation_grams(self, centred: bool = False) -> list[Tensor | None]:
        """Per layer P_l = (1/N) Σ_i Σ_c g̃_ic g̃_icᵀ (m_l x m_l, float64), so that AGOP_l = W_lᵀ P_l W_l. `centred`:
        with each output's mean gradient ḡ_c = (1/N) Σ_i g̃_ic subtracted, (1/N) Σ (g̃_ic - ḡ_c)(g̃_ic - ḡ_c)ᵀ:
        then W_lᵀ P_l W_l is the AGOP of the Jacobians centred over the samples (aradha/agop_feature_learning,
        centering=True). From the shifted sums, with d_c = (1/N) Σ_i (g̃_ic - s_c):
            P_l = (1/N) Σ (g̃ - s)(g̃ - s)ᵀ + dᵀs + sᵀd + sᵀs,   centred = (1/N) Σ (g̃ - s)(g̃ - s)ᵀ - dᵀd,
        and for the last layer (AᵀA) ⊙ (SᵀS - (Σ_i s_i)(Σ_i s_i)ᵀ/N)/N from the masks' exact integer sums.

        Where the Jacobians do not vary over the samples (early in training every sample's ReLU pattern in the last
        layers can be the same) no centred AGOP is defined: a layer whose relative spread
        tr(centred)/tr(P_l) is below CENTRED_SPREAD_FLOOR gets None. That floor is the tool's choice, 8 orders of
        magnitude above the shifted sums' rounding (ε² ≈ 5e-32 relative) and where the centred Gram is still
        accurate to ~ε/√1e-8 ≈ 2e-12: no table gains or loses a row with the BLAS kernel or the number of ranks."""
        grams = []
        n = self.num_samples.double()
        num_layers = len(self.model.layers)
        classifier_gram = self.model.classifier.weight.detach().double()
        classifier_gram = classifier_gram.T @ classifier_gram
        for l, (total, grad_sum) in enumerate(zip(self.preact_sums, self.preact_grad_sums), start=1):
            if l == num_layers:
                gram = classifier_gram * total / n
                centred_gram = classifier_gram * (total - torch.outer(grad_sum, grad_sum) / n) / n
            else:
                shifted_gram, shift, mean_shifted = symmetrised(total) / n, self.shifts[l - 1], grad_sum / n
                cross = mean_shifted.T @ shift
                gram = shifted_gram + cross + cross.T + shift.T @ shift
                centred_gram = shifted_gram - mean_shifted.T @ mean_shifted
            if centred:
                spread = torch.trace(centred_gram) / torch.trace(gram)
                gram = centred_gram if spread > CENTRED_SPREAD_FLOOR else None
            grams.append(gram)
        return grams

    def compute(self) -> list[Tensor]:
        """[AGOP_1, ..., AGOP_L], each (m_{l-1}, m_{l-1}) float64."""
        return [sandwich(layer.weight, gram) for layer, gram in zip(self.model.layers, self.preactivation_grams())]


def sandwich(weight: Tensor, gram: Tensor) -> Tensor:
    """weightᵀ gram weight in float64: the AGOP w.r.t. a layer's input from the Gram of its pre-activation
    gradients (chain rule through W h)."""
    weight = weight.detach().double()
    return weight.T @ gram @ weight
