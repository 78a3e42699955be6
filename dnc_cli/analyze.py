"""`dnc analyze`: per checkpoint, split, layer and stage, the neural-collapse metrics, the SVD-decomposed NC1 and
the NFA correlation, as one tidy table `<run_dir>/analysis/metrics.csv`.

Per checkpoint and split the data is swept twice (PAPER.md, NC1): sweep 1 runs the network once per batch, gets
every representation from the layer protocol's `trace`, accumulates class sums and (train split) all layers'
AGOPs (`LayerAGOPs`); sweep 2 runs it again and accumulates the within-class projections, traces and
nearest-class-centre decisions. No m x m matrix is formed for NC1; the AGOPs are m_{l-1} x m_{l-1} by definition.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from dnc_cli.cli import fail
from dnc_cli.config import AnalyzeConfig, ModelName, TrainConfig, resolve_device, to_object, validate_analyze
from dnc_cli.data import load_dataset
from dnc_cli.errors import UsageError
from dnc_cli.metrics import ClassMeans, NeuralCollapse, nc3, nfa_correlation, psd_eigh, psd_power
from dnc_cli.models import build_model
from dnc_cli.runs import (
    CONFIG_FILE,
    atomic_path,
    checkpoint_epochs,
    checkpoint_name,
    find_runs,
    read_json,
    require_run_dir,
    write_json,
)

log = logging.getLogger("dnc.analyze")
COLUMNS = ["epoch", "split", "layer", "stage", "metric", "value"]


def check(cfg: DictConfig) -> AnalyzeConfig:
    acfg = validate_analyze(to_object(cfg, AnalyzeConfig))
    require_run_dir(acfg.run_dir)
    return acfg


def load_run_config(run_dir: Path) -> TrainConfig:
    return to_object(OmegaConf.load(run_dir / CONFIG_FILE), TrainConfig)


# ---------------------------------------------------------------------------------------------------- a batch
GRAM_BLOCK = 128  # column block of `add_gram`: measured fastest on a 2-core AVX-512 CPU (64: 0.12 s, 512: 0.15 s)


def add_gram(total: torch.Tensor, rows: torch.Tensor) -> None:
    """total += rowsᵀ rows on and above the diagonal blocks only (≈ 5/8 of the GEMM work at m = 512; the Gram is
    symmetric, `symmetrised` restores the rest). Products in the rows' dtype, sums in total's (float64)."""
    m = rows.shape[1]
    for start in range(0, m, GRAM_BLOCK):
        block = slice(start, start + GRAM_BLOCK)
        total[block, start:] += (rows[:, block].T @ rows[:, start:]).to(total.dtype)


def symmetrised(upper_blocks: torch.Tensor) -> torch.Tensor:
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
    Products in the features' dtype, sums in float64. Checked against per-sample autograd Jacobians in the
    tests and against vmap(jacrev) in `make bench`."""

    def __init__(self, model):
        if not isinstance(model.act, torch.nn.ReLU):  # the masks below are ReLU's derivative
            raise TypeError(f"LayerAGOPs needs ReLU layers, got {type(model.act).__name__}")
        self.model = model
        device = model.classifier.weight.device
        self.preact_sums = [torch.zeros(layer.out_features, layer.out_features, dtype=torch.float64, device=device)
                            for layer in model.layers]
        # Σ_i g̃_ic per output c (K x m_l): the mean gradient that the centred-Jacobian AGOP subtracts
        self.preact_grad_sums = [torch.zeros(model.classifier.out_features, layer.out_features, dtype=torch.float64,
                                             device=device) for layer in model.layers]
        self.num_samples = 0

    def update(self, h0: torch.Tensor):
        """Adds this batch (h0: (B, m_0)) to every layer's sum; returns the batch's trace for reuse."""
        with torch.no_grad():
            trace = self.model.trace(h0)
            classifier = self.model.classifier.weight.to(h0.dtype)  # A, (K, m_L)
            grad_out = None  # ∂logits/∂h_l for the K outputs, (K, B, m_l); for l = L it is A's rows
            for l in range(len(self.model.layers), 0, -1):
                active = trace.outputs[l - 1] > 0  # ReLU'(W_l h_{l-1}); torch's ReLU backward uses the same test
                if grad_out is None:
                    mask = active.to(h0.dtype)
                    self.preact_sums[l - 1] += (classifier.T @ classifier).double() * (mask.T @ mask).double()
                    preact_grad = classifier.unsqueeze(1) * mask  # (K, B, m_L)
                    self.preact_grad_sums[l - 1] += (classifier * mask.sum(0)).double()
                else:
                    preact_grad = grad_out * active
                    add_gram(self.preact_sums[l - 1], preact_grad.reshape(-1, preact_grad.shape[-1]))
                    self.preact_grad_sums[l - 1] += preact_grad.sum(1).double()
                if l > 1:
                    grad_out = preact_grad @ self.model.layers[l - 1].weight.to(h0.dtype)
        self.num_samples += h0.shape[0]
        return trace

    def preactivation_grams(self, centred: bool = False) -> list[torch.Tensor]:
        """Per layer P_l = (1/N) Σ_i Σ_c g̃_ic g̃_icᵀ (m_l x m_l, float64), so that AGOP_l = W_lᵀ P_l W_l. `centred`:
        with each output's mean gradient ḡ_c = (1/N) Σ_i g̃_ic subtracted, P_l - Σ_c ḡ_c ḡ_cᵀ: then W_lᵀ P_l W_l is
        the AGOP of the Jacobians centred over the samples (aradha/agop_feature_learning, centering=True)."""
        grams = []
        for l, (total, grad_sum) in enumerate(zip(self.preact_sums, self.preact_grad_sums), start=1):
            gram = (total if l == len(self.model.layers) else symmetrised(total)) / self.num_samples
            if centred:
                mean_grad = grad_sum / self.num_samples
                gram = gram - mean_grad.T @ mean_grad
            grams.append(gram)
        return grams

    def compute(self) -> list[torch.Tensor]:
        """[AGOP_1, ..., AGOP_L], each (m_{l-1}, m_{l-1}) float64."""
        return [sandwich(layer.weight, gram) for layer, gram in zip(self.model.layers, self.preactivation_grams())]


def sandwich(weight: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """weightᵀ gram weight in float64: the AGOP w.r.t. a layer's input from the Gram of its pre-activation
    gradients (chain rule through W h)."""
    weight = weight.detach().double()
    return weight.T @ gram @ weight


def representations(trace, svd: bool, stage_maps: list[torch.Tensor] | None = None,
                    ) -> dict[tuple[int, str], torch.Tensor]:
    """The batch's distinct representations keyed by (layer, stage). Stage "" is the layer's own h_l; the SVD
    stages of layer l (PAPER.md, SVD-decomposed NC1) are `left` = W_l h_{l-1} (+ bias: the pre-activation) and,
    given `stage_maps` (per layer the matrix [V S | AGOP_l^½], so that one GEMM gives both), `right` = S Vᵀ h_{l-1}
    and `agop` = AGOP_l^½ h_{l-1}; `input` and `activation` are the layers' h_{l-1} and h_l (see ALIASES)."""
    reps = {(0, ""): trace.inputs[0].detach()}
    for l, (h_in, pre, out) in enumerate(zip(trace.inputs, trace.preacts, trace.outputs), start=1):
        reps[(l, "")] = out.detach()
        if svd:
            reps[(l, "left")] = pre.detach()
        if stage_maps is not None:
            both = h_in.detach() @ stage_maps[l - 1]
            width = h_in.shape[1]  # AGOP^½ h keeps h's width; S Vᵀ h has min(m_l, m_{l-1})
            reps[(l, "right")], reps[(l, "agop")] = both.split([both.shape[1] - width, width], dim=1)
    return reps


def aliases(num_layers: int) -> dict[tuple[int, str], tuple[int, str]]:
    return {**{(l, "input"): (l - 1, "") for l in range(1, num_layers + 1)},
            **{(l, "activation"): (l, "") for l in range(1, num_layers + 1)}}


# ---------------------------------------------------------------------------------------------------- a checkpoint
def analyze_checkpoint(model, data, acfg: AnalyzeConfig, device, unresolved: list[int] | None = None,
                       initial_weights: list[torch.Tensor] | None = None) -> list[tuple]:
    """All rows (split, layer, stage, metric, value) for one checkpoint's model. `unresolved`, when given, receives
    the layers whose `agop`-stage nc1 is set by rounding (README, "Precision"). `initial_weights`: the layers' W₀
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
    agop_powers = agop_roots = stage_maps = train_agops = None

    for split in ("train", "test"):
        if split not in acfg.splits and not (split == "train" and want_agop):
            continue
        x, labels = getattr(data, split).x, getattr(data, split).labels
        batches = [(x[i:i + acfg.batch_size], labels[i:i + acfg.batch_size]) for i in range(0, len(x),
                                                                                         acfg.batch_size)]
        with_agop = split == "train" and want_agop
        layer_agops = LayerAGOPs(model) if with_agop else None
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
        means = {key: acc.compute() for key, acc in means.items()}
        if with_agop:
            train_agops, agops = layer_agops, layer_agops.compute()
            eighs = [psd_eigh(a) for a in agops]  # one decomposition per AGOP serves every power
            if want_svd and unresolved is not None and x.dtype != torch.float64:
                # Σ_B^† of the agop stage needs K-1 directions; an AGOP resolving fewer at the gradients'
                # precision lets rounding supply the rest (float64's rounding stays below Σ_B^†'s cut-off)
                eps = torch.finfo(x.dtype).eps
                unresolved += [l for l, (values, _) in enumerate(eighs, start=1)
                               if int((values > eps * values.max()).sum()) < num_classes - 1]
            powers = set(acfg.nfa.powers if "nfa" in families else []) | ({0.5} if want_svd else set())
            agop_powers = {p: [psd_power(a, p, e) for a, e in zip(agops, eighs)] for p in sorted(powers)}
            if want_svd:
                agop_roots = agop_powers[0.5]
                stage_maps = [torch.cat([r.T, a.to(r.dtype)], 1) for r, a in zip(right_maps, agop_roots)]
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
                reps = representations(trace, want_svd, stage_maps)
                reps.update({(0, name): f for name, f in (model.backbone_stages(xb) if want_nc else [])})
                predictions = trace.logits.argmax(1)
            for key, features in reps.items():
                collapse[key].update(features, yb, predictions)
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


def nfa_metric(form: str, power: float) -> str:
    return f"nfa_corr_{power:g}" if form == "standard" else f"nfa_{form}_corr_{power:g}"


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
SETTINGS_FILE = "settings.json"


def check_settings(out_dir: Path, acfg: AnalyzeConfig, network: bool = True) -> dict:
    """The options that change metric values, as recorded in <run>/analysis/settings.json; raises when the table
    there was computed with other values (resuming would mix them) unless force=true recomputes it."""
    settings = {"nc1.global_mean": acfg.nc1.global_mean.value, "nc1.official_scaling": acfg.nc1.official_scaling}
    if network:  # Deep RFM's features come from its own float32 pipeline
        settings["precision"] = acfg.precision.value
    path = out_dir / SETTINGS_FILE
    recorded = read_json(path) if path.exists() and (out_dir / "metrics.csv").exists() and not acfg.force else {}
    for key, value in settings.items():
        if key in recorded and recorded[key] != value:
            raise UsageError(f"{out_dir} was analysed with {key}={recorded[key]}, not {value}; add force=true to "
                             f"recompute it with {key}={value}")
    return settings


def save_table(path: Path, rows: list[dict]):
    import pandas as pd

    df = pd.DataFrame(rows, columns=COLUMNS).sort_values(COLUMNS[:5], kind="stable", ignore_index=True)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.10g")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return df
    with atomic_path(path.with_suffix(".parquet")) as tmp:
        df.to_parquet(tmp, index=False)
    return df


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


def markdown_table(table, index_name: str) -> str:
    head = f"| {index_name} | " + " | ".join(map(str, table.columns)) + " |"
    rule = "|---" * (len(table.columns) + 1) + "|"
    body = ["| " + str(i) + " | " + " | ".join("" if math.isnan(v) else f"{v:.4g}" for v in row) + " |"
            for i, row in zip(table.index, table.to_numpy())]
    return "\n".join([head, rule, *body])


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
            f"{markdown_table(by_epoch, 'epoch')}\n\nPer layer at the final checkpoint (epoch {final}); layer 0 is the "
            f"input of the analysed layers:\n\n{markdown_table(by_layer, 'layer')}\n")
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def analyze_run(run_dir: Path, acfg: AnalyzeConfig, device: torch.device) -> list[str]:
    """Analyse every checkpoint of one run not analysed yet; returns the problems met (bad checkpoints)."""
    import pandas as pd

    cfg = load_run_config(run_dir)
    summary = read_json(run_dir / "summary.json") if (run_dir / "summary.json").exists() else {}
    status = summary.get("status", "unknown")
    if cfg.model.name == ModelName.deep_rfm:
        from dnc_cli.rfm import analyze_deep_rfm

        return analyze_deep_rfm(run_dir, cfg, acfg, device)
    out_dir = run_dir / "analysis"
    settings = check_settings(out_dir, acfg)
    table = out_dir / "metrics.csv"
    old = pd.read_csv(table, keep_default_na=False) if table.exists() and not acfg.force else None
    rows = [] if old is None else old.to_dict("records")
    done = set() if old is None else set(old.epoch)
    epochs = [e for e in checkpoint_epochs(run_dir) if e not in done and (acfg.epochs is None or e in acfg.epochs)]
    if status != "done":
        log.warning("%s: run is %s; analysing its checkpoints so far", run_dir, status)
    data = load_dataset(cfg.dataset, cfg.seed)
    if (run_dir / "labels.pt").exists():  # the labels actually trained on (random labels included)
        data.train.labels = torch.load(run_dir / "labels.pt", weights_only=True)["train_labels"]
    dtype = getattr(torch, acfg.precision.value)
    data = data.to(device, dtype)
    model = build_model(cfg.model, data.input_shape, data.num_classes).to(device, dtype)
    problems, unresolved = [], {}  # unresolved: epoch -> layers whose agop-stage nc1 float32 cannot resolve
    initial_weights = None
    if "nfa" in acfg.families and set(acfg.nfa.forms) - {"standard"}:
        first = run_dir / "checkpoints" / checkpoint_name(0)
        if first.exists():
            model.load_state_dict(torch.load(first, map_location=device, weights_only=True)["model"])
            initial_weights = [layer.weight.detach().clone() for layer in model.layers]
        else:
            log.warning("%s: no epoch-0 checkpoint, so no W0: NFA forms %s skipped", run_dir,
                        ", ".join(f for f in acfg.nfa.forms if f != "standard"))
    from tqdm import tqdm

    for epoch in tqdm(epochs, desc=f"analyze {run_dir.name}", unit="ckpt",
                      disable=not (acfg.progress and sys.stderr.isatty())):
        path = run_dir / "checkpoints" / checkpoint_name(epoch)
        try:
            state = torch.load(path, map_location=device, weights_only=True)["model"]
        except Exception as exc:  # truncated or corrupt file: report it, analyse the rest
            problems.append(f"{path}: unreadable checkpoint ({type(exc).__name__}); skipped")
            log.error(problems[-1])
            continue
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise UsageError(f"{path} does not match the run's model ({str(exc).splitlines()[0]})") from None
        layers = unresolved.setdefault(epoch, [])
        rows += [dict(zip(COLUMNS, (epoch, *row))) for row in analyze_checkpoint(model, data, acfg, device, layers,
                                                                               initial_weights)]
        df = save_table(table, rows)  # after every checkpoint: an interrupted analysis resumes from here
        write_json(out_dir / SETTINGS_FILE, settings)
        log.info("%s epoch %d analysed", run_dir.name, epoch)
    unresolved = {epoch: layers for epoch, layers in unresolved.items() if layers}
    if unresolved:
        log.warning("%s: at epoch(s) %s the AGOPs of layer(s) %s have fewer than K-1 eigenvalues above "
                    "eps*lambda_max in float32, so their agop-stage nc1 (the Sigma_B^+ form; nc1_trace is fine) is set "
                    "by rounding: precision=float64 force=true resolves it (README, Precision)", run_dir,
                    ", ".join(map(str, unresolved)), ", ".join(map(str, sorted(set().union(*unresolved.values())))))
    if rows:
        df = save_table(table, rows)
        write_nc_table(out_dir / "nc_table.md", df, status)
        final = int(df.epoch.max())
        gram = out_dir / f"gram_epoch_{final:06d}_train.npz"
        if acfg.gram_samples_per_class > 0 and (epochs or not gram.exists()):
            model.load_state_dict(torch.load(run_dir / "checkpoints" / checkpoint_name(final), map_location=device,
                                             weights_only=True)["model"])
            _save_gram_samples(gram, model.eval(), data, acfg.gram_samples_per_class)
    return problems


@hydra.main(version_base="1.3", config_path="pkg://dnc_cli.conf", config_name="analyze")
def main(cfg: DictConfig) -> None:
    from dnc_cli.sweep import analyze_runs, find_sweeps, write_sweep_tables

    try:
        acfg = check(cfg)
        runs = find_runs(Path(acfg.run_dir))
        sweeps = find_sweeps(Path(acfg.run_dir), runs)
        if not runs and not sweeps:
            raise UsageError(f"run_dir={acfg.run_dir} holds no run (no {CONFIG_FILE} below it)")
        # every run (acfg.jobs at a time); with several runs, one that cannot be analysed is listed, not fatal
        problems, errors = analyze_runs(runs, acfg, resolve_device(acfg.device), analyze_run)
        for sweep_dir in sweeps:
            digest = write_sweep_tables(sweep_dir, runs, errors)
            print(f"{digest['dir']}/runs.csv: {digest['runs']} runs, {digest['done']} done; swept: "
                  f"{', '.join(digest['keys']) or 'nothing'}")
            for line in digest["not_done"]:
                print(f"  not done: {line}")
    except UsageError as exc:
        fail("analyze", str(exc))
    except KeyboardInterrupt:
        print("dnc analyze: interrupted; rerun the same command to finish", file=sys.stderr)
        raise SystemExit(130) from None
    report = [f"{len(problems)} checkpoint(s) skipped: " + "; ".join(problems)] if problems else []
    if errors:
        report.append(f"{len(errors)} run(s) not analysed: " + "; ".join(f"{r}: {e}" for r, e in errors.items()))
    if report:
        fail("analyze", "; ".join(report))
