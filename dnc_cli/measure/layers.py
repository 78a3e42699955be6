"""One selected module of a measurement (`MeasuredLayer`): the maps of its SVD stages, its streaming AGOP, what
comes of them between the two sweeps (AGOP powers, the `right` and `agop` class means, the NFA rows), and its
description (`LayerInfo`: analysis/layers.csv of `dnc measure`).

An nn.Linear W = U S Vᵀ (PAPER.md, "SVD-decomposed per-layer NC1") has the stages `input` h, `right` S Vᵀ h,
`left` W h (+ b), `activation` σ(W h) and `agop` AGOP^½ h; `right` and `agop` are formed in sweep 2 by one GEMM with
[V S | AGOP^½] (`stage_map_t`), and their class means come from those of `input` (means commute with linear maps).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from dnc_cli.measure.hooks import layer_kind
from dnc_cli.measure.stats import SplitStats, transformed_means
from dnc_cli.metrics.agop import SKETCH, LayerAGOP, nfa_correlation, psd_eigh, psd_power
from dnc_cli.tables import SVD_STAGES, nfa_metric

log = logging.getLogger("dnc.measure")
AGOP_STAGE_POWER = 0.5  # the `agop` stage projects with AGOP^½ (PAPER.md, "SVD-decomposed per-layer NC1")
# the table's row of the VJPs per batch that estimated a layer's AGOP; 0: not estimated (closed form or exact)
SKETCH_METRIC = "agop_sketch_probes"
LINEAR_STAGES = (*SVD_STAGES, "agop")  # an nn.Linear's stages, in table order


@dataclass
class LayerInfo:
    """One selected module: what the table's `layer` number stands for (analysis/layers.csv of `dnc measure`)."""

    layer: int
    module: str
    type: str
    shape: tuple = ()  # the output's shape without the batch dim
    features: int = 0  # m after flattening / pooling
    activation: str = ""  # the activation module whose output is the `activation` stage
    agop: bool = False
    agop_method: str = ""  # closed_form | autograd | sketch (dnc_cli/metrics/agop/)
    nc3: str = ""  # the stage(s) the final classifier reads, if any


@dataclass
class MeasuredLayer:
    index: int  # l, the table's `layer`
    name: str
    module: nn.Module
    kind: str  # hooks.layer_kind: linear | conv2d | module
    agop: LayerAGOP | None = None
    right_map: torch.Tensor | None = None  # S Vᵀ (r x m_in)
    stage_map_t: torch.Tensor | None = None  # [V S | AGOP^½]: one GEMM gives `right` and `agop`
    agop_matrix: torch.Tensor | None = None
    agop_powers: dict = field(default_factory=dict)  # α -> AGOP^α
    activation: str = ""
    calls: int = 0  # forward calls in the current batch (a shared module runs more than once)
    shape: tuple = ()
    features: int = 0

    @classmethod
    def selected(cls, index: int, name: str, module: nn.Module, families: set) -> MeasuredLayer:
        """The layer with what its families need: an AGOP (svd: an nn.Linear's `agop` stage; nfa: any nn.Linear or
        groups=1 nn.Conv2d) and, for svd, the `right` map of an nn.Linear."""
        layer = cls(index, name, module, layer_kind(module))
        if (layer.kind == "linear" and families & {"svd", "nfa"}) or (layer.kind == "conv2d" and "nfa" in families):
            try:
                layer.agop = LayerAGOP(module)
            except ValueError as exc:
                log.warning("layer %s: %s; no AGOP/NFA for it", name, exc)
        if layer.kind == "linear" and "svd" in families:
            _, singular, vh = torch.linalg.svd(module.weight.detach(), full_matrices=False)
            layer.right_map = singular[:, None] * vh  # W = U S Vᵀ -> `right` = S Vᵀ h
            layer.stage_map_t = layer.right_map.T
        return layer

    @property
    def has_svd_stages(self) -> bool:
        return self.right_map is not None

    def finish_agop(self, powers: set[float], sketched_stage: bool) -> None:
        """After sweep 1: AGOP^α from one eigh; for an SVD layer, AGOP^½ joins the `right` map, unless the AGOP is
        sketched and `sketched_stage` is False: the `agop` stage's nc1 weighs the AGOP's smallest eigenvalues,
        which a sketch gets wrong (README, "Measure your own model"; BENCHMARKS.md section 8)."""
        if self.agop is None:
            return
        if not self.agop.influences_output:
            log.warning("layer %s does not influence the model's outputs: no AGOP, no NFA for it", self.name)
            self.agop = None
            return
        agop = self.agop_matrix = self.agop.compute()
        eigh = psd_eigh(agop)
        stage = self.has_svd_stages and (sketched_stage or self.agop.method != SKETCH)
        if self.has_svd_stages and not stage:
            log.warning("layer %s: no `agop` stage from a sketched AGOP (its nc1 weighs the smallest eigenvalues); "
                        "agop_probes=exact or a number of probes gives it", self.name)
        wanted = powers | ({AGOP_STAGE_POWER} if stage else set())
        self.agop_powers = {p: psd_power(agop, p, eigh) for p in sorted(wanted)}
        if stage:
            root = self.agop_powers[AGOP_STAGE_POWER].to(self.right_map.dtype)
            self.stage_map_t = torch.cat([self.right_map.T, root], 1)

    def stage_widths(self) -> list[int]:
        """The widths of `right` (and `agop`) in the columns of h @ stage_map_t."""
        rank = self.right_map.shape[0]
        return [rank, self.stage_map_t.shape[1] - rank] if self.has_agop_stage else [rank]

    @property
    def has_agop_stage(self) -> bool:
        return self.has_svd_stages and self.stage_map_t.shape[1] > self.right_map.shape[0]

    def derive_means(self, stats: SplitStats) -> None:
        """Between the sweeps: the class means of `right` and `agop` from those of `input`."""
        source = stats.means.get((self.index, "input"))
        if not self.has_svd_stages or source is None:
            return
        stats.means[(self.index, "right")] = transformed_means(source, self.right_map)
        if self.has_agop_stage:
            stats.means[(self.index, "agop")] = transformed_means(source, self.agop_powers[AGOP_STAGE_POWER])

    def agop_rows(self, split: str, powers: tuple[float, ...]) -> list[tuple]:
        """At stage "": how the AGOP was estimated (SKETCH_METRIC: the probes per batch, 0 if exact) and
        corr(WᵀW, AGOP^α) (PAPER.md, "AGOP and the NFA"; a conv's filter matrix and patch AGOP)."""
        if self.agop is None or not self.agop_powers:
            return []
        weight = self.agop.weight_matrix()
        return [(None, split, self.index, "", SKETCH_METRIC, float(self.agop.probes), self.name)] + [
            (None, split, self.index, "", nfa_metric("standard", p), nfa_correlation(weight, self.agop_powers[p]),
             self.name) for p in powers]

    def info(self, nc3_stages: list[str]) -> LayerInfo:
        return LayerInfo(self.index, self.name, type(self.module).__name__, self.shape, self.features, self.activation,
                         bool(self.agop_powers), self.agop.method if self.agop_powers else "",
                         " ".join(sorted(stage or "''" for stage in nc3_stages)))
