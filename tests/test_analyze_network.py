"""dnc_cli/analyze/network.py: the pipeline against naive float64 references straight from PAPER.md, the NFA
forms, the run-level contract (table, resume, precision, settings)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY, assert_usage_error, naive_agops, naive_jacobians, run_cli, train_config

from dnc_cli.analyze.command import analyze_run
from dnc_cli.analyze.network import analyze_checkpoint
from dnc_cli.config import AnalyzeConfig, ModelConfig
from dnc_cli.data import load_dataset
from dnc_cli.metrics.agop import LayerAGOPs
from dnc_cli.metrics.agop import mlp as agop_module
from dnc_cli.models.networks import build_model
from dnc_cli.runs import read_run_config
from dnc_cli.train.command import run


def naive_nc(features, labels, predictions, num_classes):
    h = features.double()
    n = len(h)
    means = torch.stack([h[labels == k].mean(0) for k in range(num_classes)])
    centred = means - means.mean(0)  # unweighted global mean
    within = h - means[labels]
    sigma_w = within.T @ within / n  # full m x m
    sigma_b = centred.T @ centred / num_classes
    unit = centred / centred.norm(dim=1, keepdim=True)
    gram = unit @ unit.T
    etf = (torch.eye(num_classes) - 1 / num_classes) / (num_classes - 1) ** 0.5
    ncc = torch.cdist(h, means).argmin(1)
    return {"nc1": torch.trace(sigma_w @ torch.linalg.pinv(sigma_b)).item() / num_classes,
            "nc1_trace": (torch.trace(sigma_w) / torch.trace(sigma_b)).item(),
            "nc2": torch.linalg.norm(gram / torch.linalg.norm(gram) - etf).item(),
            "ncc_acc": (ncc == labels).double().mean().item(),
            "nc4": (ncc != predictions).double().mean().item()}


def _rows_dict(rows):
    return {(split, layer, stage, metric): value for split, layer, stage, metric, value in rows}


def test_pipeline_matches_naive_reference(random_net_and_data):
    model, data = random_net_and_data
    rows = _rows_dict(analyze_checkpoint(model, data, AnalyzeConfig(batch_size=37), torch.device("cpu")))
    h0 = model.embed(data.train.x)
    agops = naive_agops(model, h0)
    for split in ("train", "test"):
        x, labels = getattr(data, split).x, getattr(data, split).labels
        with torch.no_grad():
            trace = model.trace(model.embed(x))
        predictions = trace.logits.argmax(1)
        reps = {(0, ""): trace.inputs[0]}
        for l, layer in enumerate(model.layers, start=1):
            u, s, vh = torch.linalg.svd(layer.weight.detach())
            h_in = trace.inputs[l - 1]
            reps |= {(l, ""): trace.outputs[l - 1], (l, "input"): h_in, (l, "activation"): trace.outputs[l - 1],
                     (l, "right"): h_in @ (torch.diag(s) @ vh[: len(s)]).T, (l, "left"): h_in @ layer.weight.T,
                     (l, "agop"): h_in @ _naive_sqrt(agops[l - 1])}
        for (layer, stage), features in reps.items():
            expected = naive_nc(features.detach(), labels, predictions, 4)
            for metric, value in expected.items():
                got = rows[(split, layer, stage, metric)]
                assert got == pytest.approx(value, rel=1e-6, abs=1e-12), (split, layer, stage, metric)
    for l, layer in enumerate(model.layers, start=1):
        for power in (0.5, 1.0):
            target = (_naive_sqrt(agops[l - 1]) if power == 0.5 else agops[l - 1]).flatten().numpy()
            wtw = (layer.weight.T @ layer.weight).detach().flatten().numpy()
            expected = np.corrcoef(wtw, target)[0, 1]
            assert rows[("train", l, "", f"nfa_corr_{power:g}")] == pytest.approx(expected, rel=1e-6)


def _naive_sqrt(matrix):
    values, vectors = np.linalg.eigh(matrix.detach().numpy())
    return torch.from_numpy(vectors @ np.diag(np.sqrt(np.clip(values, 0, None))) @ vectors.T)


def test_right_and_left_nc1_agree_and_families_filter(random_net_and_data):
    model, data = random_net_and_data
    rows = _rows_dict(analyze_checkpoint(model, data, AnalyzeConfig(), torch.device("cpu")))
    for l in (1, 2):
        for metric in ("nc1", "nc1_trace", "nc2"):  # U is orthogonal: the left map preserves the geometry
            assert rows[("train", l, "right", metric)] == pytest.approx(rows[("train", l, "left", metric)],
                                                                        rel=1e-9)
    only_nc = _rows_dict(analyze_checkpoint(model, data, AnalyzeConfig(families=["nc"], splits=["test"]),
                                            torch.device("cpu")))
    assert {k[2] for k in only_nc} == {""} and {k[0] for k in only_nc} == {"test"}
    assert not any(k[3].startswith("nfa") for k in only_nc)


def test_analyze_run_contract_and_resume(tmp_path, tiny_run, monkeypatch):
    acfg = AnalyzeConfig(progress=False)
    assert analyze_run(tiny_run, acfg, torch.device("cpu")) == []
    df = pd.read_csv(tiny_run / "analysis/metrics.csv", keep_default_na=False)
    assert list(df.columns) == ["epoch", "split", "layer", "stage", "metric", "value"]
    assert sorted(set(df.epoch)) == [0, 2, 4, 6] and set(df.split) == {"train", "test"}
    assert set(df.layer) == {0, 1, 2, 3}
    assert set(df.stage) == {"", "input", "right", "left", "activation", "agop"}
    assert {"nc1", "nc1_trace", "nc2", "nc2_gram", "nc3", "nc4", "ncc_acc", "cdnv", "tr_sw_over_st",
            "tr_sb_over_st", "nfa_corr_0.5", "nfa_corr_1"} <= set(df.metric)
    assert not df.duplicated(["epoch", "split", "layer", "stage", "metric"]).any()
    for epoch in (0, 2, 4, 6):  # every family at every checkpoint
        part = df[df.epoch == epoch]
        assert len(part[(part.metric == "nfa_corr_0.5")]) == 3 and len(part[part.stage == "agop"]) > 0
    assert (tiny_run / "analysis/nc_table.md").read_text().count("|") > 20
    gram = np.load(tiny_run / "analysis/gram_epoch_000006_train.npz")
    assert gram["layer_3"].shape == (200, 32) and (np.diff(gram["labels"]) >= 0).all()
    reference = (tiny_run / "analysis/metrics.csv").read_bytes()

    # interrupted after two checkpoints, then rerun: identical table
    import dnc_cli.analyze.network as analyze_module

    real, calls = analyze_module.analyze_checkpoint, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(analyze_module, "analyze_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):
        analyze_run(tiny_run, AnalyzeConfig(progress=False, force=True), torch.device("cpu"))
    assert len(set(pd.read_csv(tiny_run / "analysis/metrics.csv").epoch)) == 2
    monkeypatch.setattr(analyze_module, "analyze_checkpoint", real)
    analyze_run(tiny_run, acfg, torch.device("cpu"))
    assert (tiny_run / "analysis/metrics.csv").read_bytes() == reference
    # already analysed: nothing recomputed
    monkeypatch.setattr(analyze_module, "analyze_checkpoint", lambda *a, **k: pytest.fail("recomputed"))
    analyze_run(tiny_run, acfg, torch.device("cpu"))


@pytest.mark.slow
def test_backbone_stages_are_analysed(tmp_path):
    cfg = train_config(["model=resnet18_mlp", "model.width=16", "model.depth=2", "epochs=1", "dataset.n_train=60",
                        "dataset.n_test=30"])
    run(cfg, tmp_path)
    analyze_run(tmp_path, AnalyzeConfig(progress=False, families=["nc"], gram_samples_per_class=0),
                torch.device("cpu"))
    df = pd.read_csv(tmp_path / "analysis/metrics.csv", keep_default_na=False)
    stages = set(df[df.layer == 0].stage)
    assert {"backbone.layer1", "backbone.layer4", ""} <= stages


def test_unfinished_run_is_analysed(tmp_path):
    run(train_config(TINY + ["epochs=2"]), tmp_path)
    summary = tmp_path / "summary.json"
    summary.write_text(summary.read_text().replace('"done"', '"running"'))
    analyze_run(tmp_path, AnalyzeConfig(progress=False, families=["nc"]), torch.device("cpu"))
    assert "running" in (tmp_path / "analysis/nc_table.md").read_text()


@pytest.mark.slow
def test_precision_float64_and_settings_guard(tmp_path, tiny_run):
    """precision=float64 runs the network and every metric in float64 (the same rows as analyze_checkpoint on a
    float64 copy); the settings are recorded and a resume with other settings is refused, tables untouched."""
    from dnc_cli.config import Precision

    acfg = AnalyzeConfig(progress=False, splits=["train"], precision=Precision.float64, gram_samples_per_class=0)
    analyze_run(tiny_run, acfg, torch.device("cpu"))
    df = pd.read_csv(tiny_run / "analysis/metrics.csv", keep_default_na=False)
    cfg = read_run_config(tiny_run)
    data = load_dataset(cfg.dataset, cfg.seed).to("cpu", torch.float64)
    model = build_model(cfg.model, data.input_shape, data.num_classes).double()
    model.load_state_dict(torch.load(tiny_run / "checkpoints/epoch_000000.pt", weights_only=True)["model"])
    initial = [layer.weight.detach().clone() for layer in model.layers]  # W₀ for the NFA forms
    model.load_state_dict(torch.load(tiny_run / "checkpoints/epoch_000006.pt", weights_only=True)["model"])
    float64 = _rows_dict(analyze_checkpoint(model, data, acfg, torch.device("cpu"), initial_weights=initial))
    float32 = _rows_dict(analyze_checkpoint(model.float(), data.to("cpu", torch.float32), acfg, torch.device("cpu"),
                                            initial_weights=initial))
    final = df[df.epoch == 6]
    got = {(r.split, r.layer, r.stage, r.metric): r.value for r in final.itertuples()}
    assert got.keys() == float64.keys()
    for key, value in float64.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key  # the csv keeps 10 digits
    assert max(abs(float32[k] - v) / max(abs(v), 1e-12) for k, v in float64.items()) > 1e-9  # not float32
    assert '"precision": "float64"' in (tiny_run / "analysis/settings.json").read_text()

    table = (tiny_run / "analysis/metrics.csv").read_bytes()
    result = run_cli("analyze", f"run_dir={tiny_run}", "splits=[train]", cwd=tmp_path)
    assert_usage_error(result, "precision=float64", "force=true")
    assert (tiny_run / "analysis/metrics.csv").read_bytes() == table
    assert_usage_error(run_cli("analyze", f"run_dir={tiny_run}", "precision=float16", cwd=tmp_path), "float16",
                       "float64")
    result = run_cli("analyze", f"run_dir={tiny_run}", "splits=[train]", "force=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert '"precision": "float32"' in (tiny_run / "analysis/settings.json").read_text()


def test_agop_stage_is_right_in_float32(tmp_path):
    """Regression (issue #14): float32 products of the gradients round an AGOP's small eigenvalues away, and the
    `agop` stage's nc1 (the Σ_B^† form) weighs exactly those directions. At epoch 3 of the default digits MLP,
    layer 2, an AGOP summed in float32 from float32 Jacobians gives nc1 ≈ 1.75 where float64 gives ≈ 8.6. The
    default float32 analysis (float32 gradients, float64 products and sums) must give float64's."""
    from torch.func import jacrev, vmap

    from dnc_cli.metrics.agop import psd_power
    from dnc_cli.metrics.collapse import ClassMeans, NeuralCollapse

    cfg = train_config(["epochs=3", "checkpoints.schedule=list", "checkpoints.epochs=[3]"])
    run(cfg, tmp_path)
    data = load_dataset(cfg.dataset, cfg.seed)
    model = build_model(cfg.model, data.input_shape, data.num_classes).eval()
    model.load_state_dict(torch.load(tmp_path / "checkpoints/epoch_000003.pt", weights_only=True)["model"])
    acfg, cpu = AnalyzeConfig(splits=["test"], families=["svd"]), torch.device("cpu")
    in_float32 = _rows_dict(analyze_checkpoint(model.float(), data.to(cpu, torch.float32), acfg, cpu))
    in_float64 = _rows_dict(analyze_checkpoint(model.double(), data.to(cpu, torch.float64), acfg, cpu))
    agop_nc1 = {key: value for key, value in in_float64.items() if key[2:] == ("agop", "nc1")}
    assert len(agop_nc1) == 5
    for key, value in agop_nc1.items():
        assert in_float32[key] == pytest.approx(value, rel=1e-3), key  # float32 features: 3e-4 at layer 5

    # the case is one that float32 products get wrong: layer 2's AGOP summed in float32 from per-sample Jacobians
    model = model.float()
    with torch.no_grad():
        h1 = model.trace(model.embed(data.train.x)).inputs[1]  # the input of layer 2

    def head_from_layer_2(h):
        for layer in model.layers[1:]:
            h = model.act(layer(h))
        return model.classifier(h)

    jacobians = vmap(jacrev(head_from_layer_2))(h1)  # (N, K, m) in float32
    agop_float32 = torch.einsum("nkd,nke->de", jacobians, jacobians) / len(h1)
    with torch.no_grad():
        test_h1 = model.trace(model.embed(data.test.x)).inputs[1].double() @ psd_power(agop_float32, 0.5)
    means = ClassMeans(10)
    means.update(test_h1, data.test.labels)
    collapse = NeuralCollapse(means.compute())
    collapse.update(test_h1, data.test.labels)
    assert collapse.compute()["nc1"] < agop_nc1[("test", 2, "agop", "nc1")] / 2


def test_nfa_forms_match_naive_references(random_net_and_data):
    """Each NFA form against its definition from per-sample autograd Jacobians (numpy's corrcoef as Pearson)."""
    model, data = random_net_and_data
    torch.manual_seed(1)
    initial = [torch.randn_like(layer.weight) * 0.3 for layer in model.layers]
    acfg = AnalyzeConfig(batch_size=37, families=["nfa"])
    rows = _rows_dict(analyze_checkpoint(model, data, acfg, torch.device("cpu"), initial_weights=initial))
    h0 = model.embed(data.train.x)
    n = len(h0)
    input_jac, preact_jac = naive_jacobians(model, h0, "input"), naive_jacobians(model, h0, "preact")

    def power(matrix, alpha):
        values, vectors = np.linalg.eigh(matrix)
        return (vectors * np.clip(values, 0, None) ** alpha) @ vectors.T

    def corr(a, b):
        return np.corrcoef(a.flatten(), b.flatten())[0, 1]

    for l, layer in enumerate(model.layers, start=1):
        weight = layer.weight.detach().numpy()
        delta = weight - initial[l - 1].numpy()
        jac, pre = input_jac[l - 1].numpy(), preact_jac[l - 1].numpy()
        agop = np.einsum("nkd,nke->de", jac, jac) / n
        centred = jac - jac.mean(0, keepdims=True)
        agop_centred_grads = np.einsum("nkd,nke->de", centred, centred) / n
        preact_gram = np.einsum("nkd,nke->de", pre, pre) / n
        for alpha in (0.5, 1.0):
            expected = {"nfa_corr": corr(weight.T @ weight, power(agop, alpha)),
                        "nfa_centered_corr": corr(delta.T @ delta, power(delta.T @ preact_gram @ delta, alpha)),
                        "nfa_init_removed_corr": corr(delta.T @ delta, power(agop, alpha)),
                        "nfa_init_removed_centered_corr": corr(delta.T @ delta, power(agop_centred_grads, alpha))}
            for name, value in expected.items():
                assert rows[("train", l, "", f"{name}_{alpha:g}")] == pytest.approx(value, rel=1e-9), (l, name)


def _biased_net(bias: float):
    torch.manual_seed(3)
    model = build_model(ModelConfig(depth=2, width=9, init_gain=1.0, bias=True), (1, 1, 6), 4).double().eval()
    with torch.no_grad():
        for layer in model.layers:
            layer.bias.fill_(bias)
    return model


def test_centred_form_has_no_row_where_the_jacobians_do_not_vary(random_net_and_data, monkeypatch):
    """Every ReLU on for every sample (a large bias): each sample's Jacobian is the same product of weights, so the
    centred Jacobians are 0: no nfa_init_removed_centered row, while the other forms keep theirs. With biases of 0
    the rows are there. The decision has a margin of many orders of magnitude on both sides of the floor (the
    relative spread of the Jacobians), so that no BLAS kernel, thread count or CPU moves it."""
    _, data = random_net_and_data
    acfg = AnalyzeConfig(families=["nfa"])
    for bias, expected in ((100.0, set()), (0.0, {1, 2})):
        model = _biased_net(bias)
        initial = [torch.randn_like(layer.weight) * 0.3 for layer in model.layers]
        rows = analyze_checkpoint(model, data, acfg, torch.device("cpu"), initial_weights=initial)
        layers = {metric: {layer for _, layer, _, name, _ in rows if name == metric}
                  for metric in ("nfa_init_removed_centered_corr_0.5", "nfa_init_removed_corr_0.5")}
        assert layers["nfa_init_removed_centered_corr_0.5"] == expected, bias
        assert layers["nfa_init_removed_corr_0.5"] == {1, 2}
        h0 = model.embed(data.train.x)
        agops = LayerAGOPs(model)
        for i in range(0, len(h0), 50):
            agops.update(h0[i:i + 50])
        with monkeypatch.context() as patch:  # the spread itself, without the floor
            patch.setattr(agop_module, "CENTRED_SPREAD_FLOOR", -1.0)
            centred = agops.preactivation_grams(centred=True)
        spreads = [float(torch.trace(c) / torch.trace(g))
                   for c, g in zip(centred, agops.preactivation_grams(), strict=True)]
        for spread in spreads:  # far from CENTRED_SPREAD_FLOOR (1e-8) on the side the expectation says
            assert (spread < 1e-20) if bias else (spread > 1e-4), (bias, spreads)


def test_centred_grams_do_not_move_with_the_batches_or_the_shift(random_net_and_data):
    """The centred pre-activation Grams against per-sample autograd Jacobians centred in float64 (numpy), and the
    same to 1e-12 whatever the batch size and the shift batch: they are sums of small terms, not differences of
    large ones (that difference moved with the BLAS kernel: issue #21)."""
    model, data = random_net_and_data
    h0 = model.embed(data.train.x).double()
    pre = naive_jacobians(model, h0, "preact")
    expected = []
    for jac in pre:
        centred = (jac - jac.mean(0, keepdim=True)).numpy()
        expected.append(np.einsum("nkd,nke->de", centred, centred) / len(h0))
    results = []
    for batch, shift in ((len(h0), None), (37, h0[100:110]), (5, h0[-3:])):
        agops = LayerAGOPs(model, shift_inputs=shift)
        for i in range(0, len(h0), batch):
            agops.update(h0[i:i + batch])
        results.append(agops.preactivation_grams(centred=True))
    for grams in results:
        for gram, reference in zip(grams, expected, strict=True):
            np.testing.assert_allclose(gram.numpy(), reference, rtol=1e-9, atol=1e-12 * np.abs(reference).max())
    for grams in results[1:]:
        for gram, first in zip(grams, results[0], strict=True):
            torch.testing.assert_close(gram, first, rtol=1e-12, atol=1e-13 * float(first.abs().max()))


def test_nfa_forms_closed_form_cases(random_net_and_data):
    """W₀ = 0: removing the initialisation changes nothing, so centered and init_removed equal the paper's form;
    W₀ = W (the epoch-0 checkpoint itself): W̃ = 0 has no correlation, and no row is written."""
    model, data = random_net_and_data
    acfg = AnalyzeConfig(families=["nfa"])
    zeros = [torch.zeros_like(layer.weight) for layer in model.layers]
    rows = _rows_dict(analyze_checkpoint(model, data, acfg, torch.device("cpu"), initial_weights=zeros))
    for l in (1, 2):
        for alpha in ("0.5", "1"):
            standard = rows[("train", l, "", f"nfa_corr_{alpha}")]
            assert rows[("train", l, "", f"nfa_centered_corr_{alpha}")] == pytest.approx(standard, rel=1e-12)
            assert rows[("train", l, "", f"nfa_init_removed_corr_{alpha}")] == pytest.approx(standard, rel=1e-12)
    same = [layer.weight.detach().clone() for layer in model.layers]
    metrics = {key[3] for key in _rows_dict(analyze_checkpoint(model, data, acfg, torch.device("cpu"),
                                                               initial_weights=same))}
    assert metrics == {"nfa_corr_0.5", "nfa_corr_1"}
