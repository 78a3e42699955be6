"""Analysing a network run (the `network` kind of `dnc analyze`): per checkpoint, split, layer and stage, the
neural-collapse metrics, the SVD-decomposed NC1 and the NFA correlations, as rows of the metrics table
(dnc_cli/tables.py).

Per checkpoint and split the data is swept twice (PAPER.md, NC1): sweep 1 runs the network once per batch, gets
every representation from the layer protocol's `trace`, accumulates class sums and (train split) all layers'
AGOPs (`LayerAGOPs`); sweep 2 runs it again and accumulates the within-class projections, traces and
nearest-class-centre decisions. No m x m matrix is formed for NC1; the AGOPs are m_{l-1} x m_{l-1} by definition.

Under torchrun each rank sweeps its shard of every split and the accumulators are synchronised after each sweep
(dnc_cli/distributed.py): sweep 2 measures scatter around the global class means; rank 0 writes the files.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch

from dnc_cli.config import AnalyzeConfig, TrainConfig
from dnc_cli.data import load_dataset
from dnc_cli.distributed import is_writer, require_agreement, shard, sync_all
from dnc_cli.errors import UsageError
from dnc_cli.guards import require_finite
from dnc_cli.metrics.agop import LayerAGOPs, nfa_correlation, psd_eigh, psd_power, sandwich
from dnc_cli.metrics.collapse import ClassMeans, NeuralCollapse, NonFiniteFeatures, nc3
from dnc_cli.models.networks import build_model
from dnc_cli.runs import (
    ANALYSIS_DIR,
    LABELS_FILE,
    analysable_epochs,
    atomic_path,
    checkpoint_path,
    gram_file_name,
    load_tensors,
    read_summary,
    read_train_labels,
    write_json,
    write_text,
)
from dnc_cli.tables import (
    COLUMNS,
    METRICS_FILE,
    NC_TABLE_FILE,
    SETTINGS_FILE,
    check_settings,
    markdown_frame,
    nfa_metric,
    read_metrics,
    save_table,
    undefined_values,
)

log = logging.getLogger("dnc.analyze")


# ---------------------------------------------------------------------------------------------------- a batch
def representations(trace, svd: bool, right_maps: list[torch.Tensor] | None = None,
                    agop_roots: list[torch.Tensor] | None = None) -> dict[tuple[int, str], torch.Tensor]:
    """The batch's distinct representations keyed by (layer, stage). Stage "" is the layer's own h_l; the SVD
    stages of layer l (PAPER.md, SVD-decomposed NC1) are `left` = W_l h_{l-1} (+ bias: the pre-activation) and,
    given the maps, `right` = S Vᵀ h_{l-1} and `agop` = AGOP_l^½ h_{l-1}; `input` and `activation` are the layers'
    h_{l-1} and h_l (see ALIASES). The `agop` stage is formed in float64 whatever the features' dtype: Σ_B^† weighs
    the directions of AGOP's small eigenvalues fully, and a float32 product rounds them away (LayerAGOPs)."""
    reps = {(0, ""): trace.inputs[0].detach()}
    for l, (h_in, pre, out) in enumerate(zip(trace.inputs, trace.preacts, trace.outputs), start=1):
        reps[(l, "")] = out.detach()
        if svd:
            reps[(l, "left")] = pre.detach()
        if right_maps is not None:
            reps[(l, "right")] = h_in.detach() @ right_maps[l - 1].T
            reps[(l, "agop")] = h_in.detach().double() @ agop_roots[l - 1]
    return reps


def aliases(num_layers: int) -> dict[tuple[int, str], tuple[int, str]]:
    return {**{(l, "input"): (l - 1, "") for l in range(1, num_layers + 1)},
            **{(l, "activation"): (l, "") for l in range(1, num_layers + 1)}}


# ---------------------------------------------------------------------------------------------------- a checkpoint
def analyze_checkpoint(model, data, acfg: AnalyzeConfig, device,
                       initial_weights: list[torch.Tensor] | None = None) -> list[tuple]:
    """All rows (split, layer, stage, metric, value) for one checkpoint's model. `initial_weights`: the layers' W₀
    (epoch 0), for the NFA forms that remove the initialisation."""
    model.eval()
    families = set(acfg.families)
    want_svd, want_nc = "svd" in families, "nc" in families
    want_agop = bool(families & {"svd", "nfa"})
    num_layers, num_classes = len(model.layers), data.num_classes
    gm, rows = acfg.nc1.global_mean.value, []
    right_maps = None
    if want_svd:
        # W_l = U S Vᵀ  ->  the `right` representation is S Vᵀ h_{l-1}
        right_maps = []
        for layer in model.layers:
            _, s, vh = torch.linalg.svd(layer.weight.detach(), full_matrices=False)
            right_maps.append(s[:, None] * vh)
    agop_powers = agop_roots = train_agops = None

    for split in ("train", "test"):
        if split not in acfg.splits and not (split == "train" and want_agop):
            continue
        x, labels = getattr(data, split).x, getattr(data, split).labels
        with_agop = split == "train" and want_agop
        if with_agop:  # the shift of the AGOP sums: the split's first batch, the same on every rank
            with torch.no_grad():
                layer_agops = LayerAGOPs(model, shift_inputs=model.embed(x[:acfg.batch_size]))
        index = shard(len(x))  # this rank's samples (all of them in one process)
        x, labels = x[index], labels[index]
        batches = [(x[i:i + acfg.batch_size], labels[i:i + acfg.batch_size]) for i in range(0, len(x),
                                                                                         acfg.batch_size)]
        means: dict = {}
        # sweep 1: class sums (and the AGOPs)
        for xb, yb in batches:
            with torch.no_grad():
                h0 = model.embed(xb)
                stages = model.backbone_stages(xb) if want_nc else []
            trace = layer_agops.update(h0) if with_agop else _no_grad_trace(model, h0)
            reps = representations(trace, want_svd)
            reps.update({(0, name): f for name, f in stages})
            for key, features in reps.items():
                means.setdefault(key, ClassMeans(num_classes)).update(features, yb)
        sync_all([*means.values(), *([layer_agops] if with_agop else [])])  # the ranks' sums: global means, AGOPs
        means = {key: acc.compute() for key, acc in means.items()}
        if with_agop:
            train_agops, agops = layer_agops, layer_agops.compute()
            eighs = [psd_eigh(a) for a in agops]  # one decomposition per AGOP serves every power
            powers = set(acfg.nfa.powers if "nfa" in families else []) | ({0.5} if want_svd else set())
            agop_powers = {p: [psd_power(a, p, e) for a, e in zip(agops, eighs)] for p in sorted(powers)}
            if want_svd:
                agop_roots = agop_powers[0.5]
        if split not in acfg.splits:
            continue
        if want_svd:
            for l in range(1, num_layers + 1):  # class means commute with linear maps: no sweep needed for them
                means[(l, "right")] = means[(l - 1, "")].transformed(right_maps[l - 1])
                means[(l, "agop")] = means[(l - 1, "")].transformed(agop_roots[l - 1])
        # sweep 2: within-class projections, traces, nearest class centres
        collapse = {key: NeuralCollapse(m, global_mean=gm, official_scaling=acfg.nc1.official_scaling)
                    for key, m in means.items()}
        for xb, yb in batches:
            with torch.no_grad():
                h0 = model.embed(xb)
                trace = model.trace(h0)
                reps = representations(trace, want_svd, right_maps, agop_roots)
                reps.update({(0, name): f for name, f in (model.backbone_stages(xb) if want_nc else [])})
                predictions = trace.logits.argmax(1)
            for key, features in reps.items():
                collapse[key].update(features, yb, predictions)
        sync_all(collapse.values())
        results = {key: acc.compute() for key, acc in collapse.items()}
        for key, metrics in results.items():
            layer, stage = key
            if (stage == "" or stage.startswith("backbone.")) and not want_nc:
                continue
            if stage in ("right", "left", "agop") and not want_svd:
                continue
            rows += [(split, layer, stage, name, value) for name, value in metrics.items()]
        if want_svd:
            for alias, key in aliases(num_layers).items():
                rows += [(split, *alias, name, value) for name, value in results[key].items()]
        if want_nc:
            rows.append((split, num_layers, "", "nc3",
                         nc3(model.classifier.weight.detach(), means[(num_layers, "")], gm)))
    if "nfa" in families:
        rows += nfa_rows(model, train_agops, agop_powers, acfg.nfa, initial_weights)
    return rows


def nfa_rows(model, layer_agops: LayerAGOPs, agop_powers: dict, options, initial_weights) -> list[tuple]:
    """The NFA correlations of every layer, in each of `options.forms` (PAPER.md, AGOP and the NFA; W̃ = W - W₀):
    * standard: corr(WᵀW, AGOP^α) (the paper);
    * centered: corr(W̃ᵀW̃, (W̃ᵀ P W̃)^α), P the pre-activation gradient Gram: dmbeaglehole/centered_NFA
      (MLP/main.py: c_nfm = Wbᵀ Wb, c_agop = Wbᵀ K Wb, Wb = W - W0; its number is α = 1);
    * init_removed: corr(W̃ᵀW̃, AGOP^α): aradha/agop_feature_learning, ansatz_verification/mlps/verify_deep_NFA.py
      (remove_init, centering=False; α = 1/2 there);
    * init_removed_centered: the same with the Jacobians centred over the samples (that script's centering=True).
    Forms that need W₀ are skipped when the run has no epoch-0 checkpoint (initial_weights is None)."""
    rows, grams, centred_grams = [], None, None
    for form in options.forms:
        if form != "standard" and initial_weights is None:
            continue
        for l, layer in enumerate(model.layers, start=1):
            weight = layer.weight.detach()
            if form == "standard":
                nfm_weight, powers = weight, [agop_powers[p][l - 1] for p in options.powers]
            else:
                nfm_weight = weight.double() - initial_weights[l - 1].double()
                if not nfm_weight.any():  # at initialisation W̃ = 0: no correlation is defined
                    continue
                if form == "init_removed":
                    powers = [agop_powers[p][l - 1] for p in options.powers]
                else:
                    if form == "centered":
                        grams = grams or layer_agops.preactivation_grams()
                        agop = sandwich(nfm_weight, grams[l - 1])
                    else:
                        centred_grams = centred_grams or layer_agops.preactivation_grams(centred=True)
                        if centred_grams[l - 1] is None:  # the Jacobians do not vary beyond rounding: no row
                            continue
                        agop = sandwich(weight, centred_grams[l - 1])
                    eigh = psd_eigh(agop)
                    powers = [psd_power(agop, p, eigh) for p in options.powers]
            rows += [("train", l, "", nfa_metric(form, p), nfa_correlation(nfm_weight, agop_power))
                     for p, agop_power in zip(options.powers, powers)]
    return rows


def _no_grad_trace(model, h0):
    with torch.no_grad():
        return model.trace(h0)


# ---------------------------------------------------------------------------------------------------- a run
def _save_gram_samples(path: Path, model, data, per_class: int) -> None:
    """A class-stratified sample of every layer's features for `dnc plot`'s Gram figure (keeps plot torch-free)."""
    import numpy as np

    labels = data.train.labels
    index = torch.cat([(labels == k).nonzero().squeeze(1)[:per_class] for k in range(data.num_classes)])
    with torch.no_grad():
        trace = model.trace(model.embed(data.train.x[index]))
    arrays = {"labels": labels[index].cpu().numpy(), "layer_0": trace.inputs[0].cpu().numpy()}
    arrays |= {f"layer_{l}": h.cpu().numpy() for l, h in enumerate(trace.outputs, start=1)}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)


def write_nc_table(path: Path, df, status: str) -> None:
    """A readable markdown table: NC metrics of the last hidden layer per checkpoint, and per layer at the end."""
    main = df[(df.split == "train") & (df.stage.fillna("") == "")]
    if main.empty:
        return
    last_layer, final = int(main.layer.max()), int(main.epoch.max())
    names = [m for m in ("nc1", "nc1_trace", "nc2", "nc3", "nc4", "ncc_acc") if m in set(main.metric)]
    by_epoch = main[(main.layer == last_layer) & main.metric.isin(names)].pivot(index="epoch", columns="metric",
                                                                                values="value")[names]
    layer_names = names + [m for m in sorted(set(main.metric)) if m.startswith("nfa_corr")]
    by_layer = main[(main.epoch == final) & main.metric.isin(layer_names)].pivot(
        index="layer", columns="metric", values="value").reindex(columns=[m for m in layer_names if m != "nc3"])

    text = (f"# Neural collapse ({status})\n\nTrain split, last hidden layer (layer {last_layer}), per checkpoint:\n\n"
            f"{markdown_frame(by_epoch, 'epoch')}\n\nPer layer at the final checkpoint (epoch {final}); layer 0 is the "
            f"input of the analysed layers:\n\n{markdown_frame(by_layer, 'layer')}\n")
    write_text(path, text)


def load_weights(model, path: Path, device) -> None:
    """A checkpoint's weights into `model`; UsageError naming the file when it cannot be read or does not fit."""
    state = load_tensors(path, device, ("model",))["model"]
    if isinstance(state, dict):
        require_finite(state, path)  # a diverged training's checkpoint: skipped and named, as a damaged one
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        # torch's first line only says "Error(s) in loading state_dict"; the next names the mismatch
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise UsageError(f"{path} does not match the run's model ({(lines[1:] or lines or [''])[0][:200]})") from exc


def analyze_run(run_dir: Path, cfg: TrainConfig, acfg: AnalyzeConfig, device: torch.device) -> list[str]:
    """Analyse every checkpoint of one run not analysed yet; returns the problems met (checkpoints that cannot be
    read are skipped and listed, the others analysed)."""
    status = read_summary(run_dir).get("status", "unknown")
    out_dir = run_dir / ANALYSIS_DIR
    settings = check_settings(out_dir, acfg, precision=True)
    table = out_dir / METRICS_FILE
    old = read_metrics(table) if table.exists() and not acfg.force else None
    rows = [] if old is None else old.to_dict("records")
    done = set() if old is None else set(old.epoch)
    epochs = [e for e in analysable_epochs(run_dir, acfg.epochs) if e not in done]
    require_agreement(f"the checkpoints of {run_dir} to analyse", epochs)
    if status != "done":
        log.warning("%s: run is %s; analysing its checkpoints so far", run_dir, status)
    data = load_dataset(cfg.dataset, cfg.seed)
    if (run_dir / LABELS_FILE).exists():  # the labels actually trained on (random labels included)
        data.train.labels = read_train_labels(run_dir, data.num_classes, len(data.train.labels))
    dtype = getattr(torch, acfg.precision.value)
    data = data.to(device, dtype)
    model = build_model(cfg.model, data.input_shape, data.num_classes).to(device, dtype)
    problems, analysed, initial_weights = [], [], None
    if "nfa" in acfg.families and set(acfg.nfa.forms) - {"standard"}:
        first = checkpoint_path(run_dir, 0)
        if first.exists():
            load_weights(model, first, device)
            initial_weights = [layer.weight.detach().clone() for layer in model.layers]
        else:
            log.warning("%s: no epoch-0 checkpoint, so no W0: NFA forms %s skipped", run_dir,
                        ", ".join(f for f in acfg.nfa.forms if f != "standard"))
    from tqdm import tqdm

    for epoch in tqdm(epochs, desc=f"analyze {run_dir.name}", unit="ckpt",
                      disable=not (acfg.progress and sys.stderr.isatty())):
        path = checkpoint_path(run_dir, epoch)
        try:
            load_weights(model, path, device)
        except UsageError as exc:  # one damaged checkpoint of a long run: report it, analyse the rest
            problems.append(f"{exc}; skipped")
            log.error(problems[-1])
            continue
        require_agreement("the checkpoint to analyse", str(path))  # a rank that skipped one stops every rank
        try:
            checkpoint_rows = analyze_checkpoint(model, data, acfg, device, initial_weights)
        except NonFiniteFeatures as exc:  # finite weights that overflow: named and skipped as a damaged checkpoint
            problems.append(f"{path}: {exc}; skipped")
            log.error(problems[-1])
            continue
        rows += [dict(zip(COLUMNS, (epoch, *row))) for row in checkpoint_rows]
        if is_writer():  # after every checkpoint: an interrupted analysis resumes from here
            save_table(table, rows)
            write_json(out_dir / SETTINGS_FILE, settings)
        analysed.append(epoch)
        log.info("%s epoch %d analysed", run_dir.name, epoch)
    if not rows or not is_writer():
        return problems
    # every file again, written only where it changed: a rerun after an interruption completes what it left behind
    df = save_table(table, rows)
    undefined = undefined_values(df)
    if undefined:
        log.warning("%s: undefined values: %s", table, undefined)
    write_json(out_dir / SETTINGS_FILE, settings)
    write_nc_table(out_dir / NC_TABLE_FILE, df, status)
    final = int(df.epoch.max())
    gram = out_dir / gram_file_name(final, "train")
    if acfg.gram_samples_per_class > 0 and (analysed or not gram.exists()):
        load_weights(model, checkpoint_path(run_dir, final), device)
        _save_gram_samples(gram, model.eval(), data, acfg.gram_samples_per_class)
    return problems
