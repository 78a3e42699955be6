"""One measurement of a model (`Session`): forward hooks on the selected modules, the two sweeps per split, the
AGOPs' backward passes, the final classifier for NC3, and the rows of the table.

Per split the data is swept twice, as `dnc analyze` does (PAPER.md, NC1): the hooks feed every representation to
`SplitStats`' ClassMeans in sweep 1 and, given the class means, to its NeuralCollapse in sweep 2; each batch's
features are used inside the hook that sees them and dropped, so no N x m and no m x m matrix is formed. On the
AGOP split sweep 1 also runs the backward passes of dnc_cli/metrics/agop/autograd.py (C exact ones, or s < C
sketched ones: `agop_probes`), except for the layers whose AGOP has a closed form (dnc_cli/metrics/agop/closed_form.py:
decided from the first batch's forward pass, which runs before its backward passes).

Representations are keyed (layer l, stage) as in metrics.csv: stage "" is the module's output (hooks.as_features);
an nn.Linear's SVD stages are dnc_cli/measure/layers.py's.

NC3 (PAPER.md, "The four neural-collapse metrics") needs the classifier A that reads a representation: the last
nn.Linear with out_features == num_classes to run in the forward pass, compared with every representation equal to
its input (checked on the first batch's first rows). Without one, no nc3 rows. NC4 needs predictions: the argmax of
the model's outputs when they have num_classes columns; otherwise no nc4 rows. Both cases are logged.

Under torchrun (dnc_cli/distributed.py) every rank sweeps its own batches and the ranks' sums are added after each
sweep (the class means and the AGOPs after sweep 1, the scatter after sweep 2): every rank then holds one process's
results. The classifier and the representations it reads are decided alike on every rank (a representation counts
when it equals the classifier's input on the first rows of every rank's first batch); the Gram figure's sample is
each rank's own (rank 0's is written).
"""

from __future__ import annotations

import logging
import sys

import torch
from torch import nn

from dnc_cli.distributed import all_reduce_sum, rank, require_agreement, sync_all, world_size
from dnc_cli.errors import UsageError
from dnc_cli.measure.hooks import ACTIVATIONS, as_features, channels_last, close_names, linear_stages, resolve_output
from dnc_cli.measure.inputs import TRAIN_SPLIT, Source, batch_size_of, call_model, check_labels, to_device
from dnc_cli.measure.layers import LINEAR_STAGES, LayerInfo, MeasuredLayer
from dnc_cli.measure.stats import GramSample, SplitStats
from dnc_cli.metrics.agop import CLOSED_FORM, SKETCH, LinearCalls, OrthogonalProbes, backward_rows, closed_form_agop
from dnc_cli.metrics.collapse import nc3
from dnc_cli.metrics.geometry import ERANK_MAX_FEATURES, unc3

log = logging.getLogger("dnc.measure")
# agop_probes=auto: this many random VJPs per batch, which is the exact K passes when K <= it (PAPER.md, AGOP; the
# error it gives at K = 1,000: BENCHMARKS.md section 8)
AUTO_PROBES = 128
FINGERPRINT_ROWS = 4  # rows of the first batch that identify the classifier's input among the representations


class Session:
    """Hooks and state of one measurement. Per batch: labels and mode set, the model's forward pass (the hooks
    record), the backward passes (AGOP split, sweep 1), end_batch."""

    def __init__(self, model: nn.Module, selected: list[tuple[str, nn.Module]], options, device, dtype):
        self.model, self.options, self.device, self.dtype = model, options, device, dtype
        self.want_svd, self.want_nc = "svd" in options.families, "nc" in options.families
        self.want_geometry = "geometry" in options.families
        self.layers = [MeasuredLayer.selected(index, name, module, options.families)
                       for index, (name, module) in enumerate(selected, start=1)]
        self.handles: list = []
        self.names = {module: name for name, module in model.named_modules()}
        # per batch
        self.mode = "means"
        self.stats: SplitStats | None = None
        self.labels = self.predictions = None
        self.batch_size = 0
        self.collect_agop = False
        self.targets: dict[int, torch.Tensor] = {}  # layer index -> the tensor its AGOP differentiates
        self.linear_outputs: dict[int, tuple[torch.Tensor, MeasuredLayer]] = {}  # for their activation modules
        self.captured_output = None
        self.gram: GramSample | None = None  # while sweep 2 of the train split samples it
        self.gram_arrays: dict = {}  # the sample, as GramSample.arrays()
        # first batch: which representation the classifier reads (NC3)
        self.first_batch = True
        self.fingerprints: dict = {}
        self.candidates: list = []
        self.classifier: nn.Linear | None = None
        self.classifier_name: str | None = None
        self.nc3_keys: list = []
        self.split_sizes: dict[str, int] = {}
        self.probes = 0  # VJPs per batch of the autograd AGOPs (>= the outputs' count: exact); set on the first batch
        self.sketch: OrthogonalProbes | None = None  # the sketch's probes, when some layer is sketched

    # ------------------------------------------------------------------ hooks
    def install(self) -> None:
        for layer in self.layers:
            if layer.agop is not None:
                self.handles.append(layer.module.register_forward_pre_hook(self._input_hook(layer)))
            self.handles.append(layer.module.register_forward_hook(self._output_hook(layer)))
        if any(layer.has_svd_stages for layer in self.layers):
            for module in self.model.modules():
                if isinstance(module, ACTIVATIONS):
                    self.handles.append(module.register_forward_hook(self._activation_hook))
        if isinstance(self.options.output, str):
            modules = dict(self.model.named_modules())
            if self.options.output not in modules:
                close = close_names(self.model, self.options.output)
                raise UsageError(f"output='{self.options.output}' is no module of the model"
                                 + (f"; close matches: {', '.join(close)}" if close else ""))
            self.handles.append(modules[self.options.output].register_forward_hook(self._capture_output))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def _input_hook(self, layer: MeasuredLayer):
        def hook(module, args):
            if not self.collect_agop or layer.agop.method == CLOSED_FORM:
                return None
            if not args or not isinstance(args[0], torch.Tensor):
                raise UsageError(f"layer '{layer.name}' was called without a tensor as its first argument")
            # the graph for the backward passes starts at the first AGOP layer: what runs before it needs none
            torch.set_grad_enabled(True)
            h = args[0]
            if not h.requires_grad:
                h = h.detach().clone().requires_grad_(True)
            elif layer.agop.wrt == "input":
                h = h.clone()  # our own tensor: an in-place op on the caller's later cannot redirect its gradient
            if layer.agop.wrt == "input":
                self.targets[layer.index] = h
            return (h, *args[1:])

        return hook

    def _output_hook(self, layer: MeasuredLayer):
        def hook(module, args, output):
            layer.calls += 1
            if layer.calls > 1:
                raise UsageError(f"layer '{layer.name}' runs more than once in one forward pass (a shared module): "
                                 "select modules that run once")
            is_tensor = isinstance(output, torch.Tensor)
            features = as_features(output, layer.name, self.batch_size, self.options.pool,
                                   is_tensor and channels_last(module, output.ndim))
            if self.first_batch:
                layer.shape, layer.features = tuple(output.shape[1:]), features.shape[1]
            self.record(layer, "", features)
            if layer.has_svd_stages:
                if not args:
                    raise UsageError(f"layer '{layer.name}' was called without a positional input")
                h = args[0]
                self.record(layer, "input", as_features(h, f"{layer.name} (input)", self.batch_size,
                                                        self.options.pool, True))
                if self.mode == "collapse":
                    stages = linear_stages(h, layer.stage_map_t, layer.stage_widths(), self.options.pool)
                    for stage, stage_features in zip(("right", "agop"), stages):
                        self.record(layer, stage, stage_features)
            returned = None
            if self.collect_agop and layer.agop is not None and layer.agop.wrt == "output" and \
                    layer.agop.method != CLOSED_FORM:
                self.targets[layer.index] = output
                returned = output.clone()  # downstream in-place ops (ReLU(inplace=True)) act on the copy
            if layer.has_svd_stages:
                passed = output if returned is None else returned
                self.linear_outputs[id(passed)] = (passed, layer)
            return returned

        return hook

    def _activation_hook(self, module, args, output):
        """The `activation` stage of a Linear: the output of the activation module that receives its output."""
        if not args or not self.linear_outputs:
            return
        entry = self.linear_outputs.get(id(args[0]))
        if entry is None or entry[0] is not args[0]:
            return
        del self.linear_outputs[id(args[0])]
        layer = entry[1]
        if self.first_batch:
            layer.activation = self.names.get(module, type(module).__name__)
        self.record(layer, "activation", as_features(output, f"{layer.name} (activation)", self.batch_size,
                                                     self.options.pool, True))

    def _capture_output(self, module, args, output):
        self.captured_output = output

    def _candidate_hook(self, module, args, output):
        h = args[0] if args else None
        fingerprint = h.detach()[:FINGERPRINT_ROWS].to(torch.float64).clone() if isinstance(h, torch.Tensor) and \
            h.ndim == 2 else None
        self.candidates.append((module, fingerprint))

    def record(self, layer: MeasuredLayer, stage: str, features: torch.Tensor) -> None:
        key = (layer.index, stage)
        if self.first_batch:
            self.fingerprints[key] = features[:FINGERPRINT_ROWS].to(torch.float64).clone()
        if self.mode == "means":
            self.stats.add_means(key, features, self.labels)
            return
        self.stats.add_collapse(key, features, self.labels, self.predictions)
        if stage == "" and self.gram is not None:
            self.gram.add(layer.index, features)

    # ------------------------------------------------------------------ sweeps
    def run(self, sources: dict[str, Source], gram_per_class: int) -> list[tuple]:
        """Both sweeps of every split (the first is the AGOP split); the table's rows."""
        rows: list[tuple] = []
        agop_split = next(iter(sources))
        families = self.options.families
        powers = set(self.options.nfa_powers if "nfa" in families else ())
        for split, source in sources.items():
            stats = SplitStats(split, self.options.num_classes, self.options.global_mean,
                               self.options.official_scaling, self.want_geometry)
            with_agop = split == agop_split and any(layer.agop is not None for layer in self.layers)
            labels, predictions = self.sweep(source, stats, "means", with_agop)
            stats.finish_means()
            if with_agop:
                sync_all([layer.agop for layer in self.layers if layer.agop is not None])
            for layer in self.layers:
                if with_agop:
                    layer.finish_agop(powers, sketched_stage=isinstance(self.options.agop_probes, int))
                layer.derive_means(stats)
            stats.start_collapse()
            if split == TRAIN_SPLIT and gram_per_class:
                self.gram = GramSample(self.options.num_classes, gram_per_class)
            self.sweep(source, stats, "collapse", False, labels, predictions)
            if self.gram is not None:
                self.gram_arrays, self.gram = self.gram.arrays(), None
            rows += self.split_rows(stats, stats.results())
            size = torch.tensor(sum(len(y) for y in labels), dtype=torch.int64)
            all_reduce_sum([size])  # every rank's samples
            self.split_sizes[split] = int(size)
            if with_agop:
                rows += [row for layer in self.layers for row in layer.agop_rows(split, self.options.nfa_powers
                                                                                 if "nfa" in families else ())]
        return rows

    def sweep(self, source: Source, stats: SplitStats, mode: str, with_agop: bool, labels_seen=None,
              predictions_seen=None):
        """One pass over a split. Sweep 1 ("means") returns the labels and predictions per batch; sweep 2
        ("collapse") is given them back: the data must come in the same order, and the predictions are known before
        the hooks need them."""
        from tqdm import tqdm

        self.stats, self.mode = stats, mode
        labels_out, predictions_out = [], []
        bar = tqdm(source, total=source.num_batches, desc=f"measure {source.name} {1 if mode == 'means' else 2}/2",
                   unit="batch", leave=False, disable=not (self.options.progress and sys.stderr.isatty()))
        for number, (x, y) in enumerate(bar):
            x = to_device(x, self.device, self.dtype)
            batch = batch_size_of(x)
            labels = check_labels(y, source.name, batch, self.options.num_classes, self.device)
            if labels_seen is not None:
                if number >= len(labels_seen) or not torch.equal(labels, labels_seen[number]):
                    raise UsageError(f"split '{source.name}': the second pass over the data gave other batches than "
                                     "the first (a shuffling DataLoader?); measure needs the same order twice: "
                                     "shuffle=False")
                self.predictions = predictions_seen[number]
            if self.gram is not None:
                self.gram.choose(labels)
            self.labels, self.batch_size, self.collect_agop = labels, batch, with_agop
            out = self.forward(x)
            labels_out.append(labels)
            if mode == "means":
                predicted = out.shape[1] == self.options.num_classes
                predictions_out.append(out.detach().argmax(1) if predicted else None)
            if with_agop:
                self.backward(out)
            self.end_batch()
        if labels_seen is not None and len(labels_out) != len(labels_seen):
            raise UsageError(f"split '{source.name}': the second pass over the data gave {len(labels_out)} batches, "
                             f"the first {len(labels_seen)}; measure needs the same data twice")
        return labels_out, predictions_out

    def forward(self, x) -> torch.Tensor:
        for layer in self.layers:
            layer.calls = 0
        handles = []
        linear_calls = LinearCalls(self.model)
        if self.first_batch:  # which nn.Linear with K outputs runs last (NC3's classifier)
            handles = [m.register_forward_hook(self._candidate_hook) for m in self.model.modules()
                       if isinstance(m, nn.Linear) and m.out_features == self.options.num_classes]
            if self.collect_agop:
                linear_calls.install()  # after the session's hooks: it sees the outputs they hand on
        try:
            with torch.no_grad():  # the AGOP layers' input hooks switch gradients on from the first of them
                returned = call_model(self.model, x)
        finally:
            for handle in handles:
                handle.remove()
            linear_calls.remove()
        for layer in self.layers:
            if layer.calls == 0:
                raise UsageError(f"layer '{layer.name}' did not run in the model's forward pass")
        out = resolve_output(returned, self.options.output, self.captured_output, self.batch_size)
        if self.first_batch and self.collect_agop:
            self.choose_agop_ways(linear_calls, out)
        if self.first_batch:
            self.find_classifier()
            if out.shape[1] != self.options.num_classes and self.want_nc:
                log.warning("the model's outputs have %d columns, not num_classes=%d: no predictions, no nc4 rows",
                            out.shape[1], self.options.num_classes)
            wide = [f"{layer.name} (m={layer.features})" for layer in self.layers
                    if self.want_geometry and layer.features > ERANK_MAX_FEATURES]
            if wide:
                log.warning("no erank rows for %s: the effective ranks need an m x m covariance, m <= %d (pool=avg "
                            "averages a conv map over its positions)", ", ".join(wide), ERANK_MAX_FEATURES)
            self.first_batch = False
        return out

    def choose_agop_ways(self, linear_calls: LinearCalls, out: torch.Tensor) -> None:
        """On the first AGOP batch, per AGOP layer: the closed form where its output reaches `out` through linear
        maps only, else autograd, sketched when the probes asked for are fewer than the outputs (the same on every
        rank: it depends on the model and the options only)."""
        num_outputs = out.shape[1] if out.ndim == 2 else 0
        wanted = self.options.agop_probes
        self.probes = num_outputs if wanted == "exact" else AUTO_PROBES if wanted == "auto" else wanted
        for layer in self.layers:
            if layer.agop is None:
                continue
            jacobian = linear_calls.tail_jacobian(layer.module, out)
            if jacobian is not None:
                layer.agop.set_closed_form(closed_form_agop(jacobian))
                self.targets.pop(layer.index, None)
            elif self.probes < num_outputs:
                layer.agop.set_sketch(self.probes)
        sketched = [layer.name for layer in self.layers if layer.agop is not None and layer.agop.method == SKETCH]
        if sketched:
            # each rank its own probes (independent estimates add up); the same seed, the same probes again
            generator = torch.Generator(device=out.device).manual_seed(self.options.agop_seed + 1_000_003 * rank())
            self.sketch = OrthogonalProbes(num_outputs, self.probes, generator, out.dtype, out.device)
            log.info("AGOP of %s sketched from %d random VJPs per batch (of %d outputs)", ", ".join(sketched),
                     self.probes, num_outputs)

    def backward(self, out: torch.Tensor) -> None:
        """The VJPs of this batch (C exact ones, or `probes` sketched ones), batched over the samples: every
        autograd AGOP layer's gradient rows."""
        pending = [(layer.agop, self.targets[layer.index]) for layer in self.layers if layer.index in self.targets]
        if pending:
            backward_rows(out, pending, self.probes, self.sketch, self.batch_size)

    def end_batch(self) -> None:
        self.targets.clear()
        self.linear_outputs.clear()
        self.captured_output = None
        self.labels = self.predictions = None

    # ------------------------------------------------------------------ NC3's classifier
    def find_classifier(self) -> None:
        """The final classifier (NC3): the last nn.Linear with K outputs to run; the representations it reads are
        those equal to its input on the first batch's first rows (under torchrun: on every rank's)."""
        found = [(module, fingerprint) for module, fingerprint in self.candidates if fingerprint is not None]
        self.candidates = []
        require_agreement("the model's final classifier", [self.names.get(module) for module, _ in found],
                          [list(key) for key in self.fingerprints])
        if not found:
            if self.want_nc:
                log.warning("no nn.Linear with num_classes=%d outputs runs in the model: no final classifier, no "
                            "nc3 rows", self.options.num_classes)
            return
        self.classifier, reads = found[-1]
        self.classifier_name = self.names.get(self.classifier)
        matches = torch.tensor([fingerprint.shape == reads.shape and torch.allclose(
            fingerprint, reads, rtol=1e-5, atol=1e-6 * float(reads.abs().max()) + 1e-30)
            for fingerprint in self.fingerprints.values()], dtype=torch.int64)
        all_reduce_sum([matches])  # under torchrun: the representations that match on every rank's rows
        self.nc3_keys = [key for key, hits in zip(self.fingerprints, matches.tolist()) if hits == world_size()]

    # ------------------------------------------------------------------ rows
    def split_rows(self, stats: SplitStats, results: dict) -> list[tuple]:
        rows = []
        geometry = stats.geometry_results() if self.want_geometry else {}

        def emit(layer, stage, metrics):
            rows.extend((None, stats.split, layer.index, stage, name, value, layer.name)
                        for name, value in metrics.items())

        for layer in self.layers:
            index = layer.index
            if self.want_nc:
                emit(layer, "", results[(index, "")])
            if self.want_geometry:
                emit(layer, "", geometry[(index, "")])
            if self.want_svd and layer.has_svd_stages:
                for stage in LINEAR_STAGES:
                    key = (index, "" if stage == "left" else stage)  # `left` W h (+ b) is the Linear's own output
                    if key in results:
                        emit(layer, stage, results[key])
            duality = [("nc3", nc3)] * self.want_nc + [("unc3", unc3)] * self.want_geometry
            for key in self.nc3_keys if self.classifier is not None else ():
                if key[0] != index or key not in results or (key[1] and not self.want_svd):
                    continue
                for name, metric in duality:
                    try:
                        value = metric(self.classifier.weight.detach(), stats.means[key], self.options.global_mean)
                    except ValueError:  # the classifier's width is not this representation's (a coincidence)
                        continue
                    rows.append((None, stats.split, index, key[1], name, value, layer.name))
        return rows

    def layer_infos(self) -> list[LayerInfo]:
        return [layer.info([stage for index, stage in self.nc3_keys if index == layer.index]) for layer in self.layers]
