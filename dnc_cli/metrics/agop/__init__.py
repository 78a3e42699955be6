"""The AGOP (average gradient outer product) and the NFA (PAPER.md, "AGOP and the NFA"): one module, four ways of
computing a layer's

    AGOP = (1/N) Σ_i J_iᵀ J_i,   J_i = ∂f(x_i)/∂h  (the K outputs w.r.t. the layer's input),

chosen per layer:

* closed form (closed_form.py): the layer's output reaches the outputs through linear maps only (a final
  nn.Linear: WᵀW). Exact, no backward pass. `dnc measure`, wherever the first batch's forward pass shows it.
* hand-written MLP backward (mlp.py, `LayerAGOPs`): every layer of a layer-protocol network (Linear + ReLU, the
  networks of `dnc train`) at once, exactly, in float64. `dnc analyze`.
* exact autograd (autograd.py, `LayerAGOP`): K vector-Jacobian products per batch into any nn.Linear / nn.Conv2d
  of any model. `dnc measure`, when K <= the probes asked for (`agop_probes`).
* sketch (autograd.py): s < K VJPs per batch with random orthogonal probes, an unbiased estimate. `dnc measure`
  with many outputs; which quantities it may serve: README, "Measure your own model".

nfa.py has the matrix powers AGOP^α and the NFA correlation built on any of them.
"""

from dnc_cli.metrics.agop.autograd import AUTOGRAD, CLOSED_FORM, SKETCH, LayerAGOP, OrthogonalProbes, backward_rows
from dnc_cli.metrics.agop.closed_form import LinearCalls, closed_form_agop
from dnc_cli.metrics.agop.mlp import CENTRED_SPREAD_FLOOR, LayerAGOPs, add_gram, sandwich, symmetrised
from dnc_cli.metrics.agop.nfa import nfa_correlation, pearson, psd_eigh, psd_power

__all__ = ["AUTOGRAD", "CENTRED_SPREAD_FLOOR", "CLOSED_FORM", "SKETCH", "LayerAGOP", "LayerAGOPs", "LinearCalls",
           "add_gram", "backward_rows", "closed_form_agop", "nfa_correlation", "OrthogonalProbes", "pearson",
           "psd_eigh", "psd_power", "sandwich", "symmetrised"]
