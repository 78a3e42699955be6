"""dnc_cli/measure/api.py (and the session, hooks, layers and AGOPs behind it): the generic hook + autograd path
against `dnc analyze` and against per-sample Jacobians, generic models and data, the streaming memory bound, bad
input."""

from __future__ import annotations

import re
import time

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from dnc_cli.errors import UsageError
from dnc_cli.measure import run_measure


def _rows(table: pd.DataFrame) -> dict:
    return {(r.split, r.layer, r.stage, r.metric): r.value for r in table.itertuples()}


def _jacobian_agop(function, inputs: torch.Tensor) -> torch.Tensor:
    """(1/N) Σ_i Σ_c ∇f_c ∇f_cᵀ from per-sample autograd Jacobians; extra input dims (positions) are summed over."""
    total = 0
    for sample in inputs:
        jac = torch.autograd.functional.jacobian(function, sample)  # (K, *sample.shape)
        jac = jac.reshape(jac.shape[0], -1, sample.shape[-1])  # (K, positions, d)
        total = total + torch.einsum("kpd,kpe->de", jac, jac)
    return total / len(inputs)


def _patch_agop(model: nn.Module, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The conv's AGOP over input patches, straight from its definition: the model's outputs as a function of the
    unfolded patches P (the conv's output replaced by W_mat P), per-sample Jacobians w.r.t. P, summed over the
    locations, averaged over the samples."""
    filters = conv.weight.detach().reshape(conv.out_channels, -1)
    conv_inputs = []
    handle = conv.register_forward_pre_hook(lambda m, a: conv_inputs.append(a[0].detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    total = 0
    for sample, conv_input in zip(x, conv_inputs[0]):
        sample = sample[None]
        patches = nn.functional.unfold(conv_input[None], conv.kernel_size, dilation=conv.dilation,
                                       padding=conv.padding, stride=conv.stride)[0]  # (C_in·kh·kw, L)

        def outputs(p, sample=sample):
            bias = 0 if conv.bias is None else conv.bias[:, None]
            handle = conv.register_forward_hook(lambda m, a, o: (filters @ p + bias).reshape(o.shape))
            try:
                return model(sample)[0]
            finally:
                handle.remove()

        jac = torch.autograd.functional.jacobian(outputs, patches)  # (K, C_in·kh·kw, L)
        total = total + torch.einsum("kdl,kel->de", jac, jac)
    return total / len(x)


def _resnet_with_head(num_classes: int = 4) -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=num_classes)
    # a head like the paper's ResNet runs; ReLU(inplace=True) right after a hooked Linear on purpose
    net.fc = nn.Sequential(nn.Linear(512, 16), nn.ReLU(inplace=True), nn.Linear(16, num_classes))
    return net.double().eval()


# ------------------------------------------------------------------------------------ (a) the same numbers as analyze
def test_measure_equals_analyze_on_a_dnc_train_run(tiny_run):
    """`measure` through forward hooks and K autograd backward passes gives every number `dnc analyze` gives (its
    hand-written LayerAGOPs and traced representations), to 1e-6, on a `dnc train` MLP run."""
    from dnc_cli.analyze.command import analyze_run
    from dnc_cli.config import AnalyzeConfig, NFAOptions, Precision
    from dnc_cli.data import load_dataset
    from dnc_cli.models.networks import build_model
    from dnc_cli.runs import LABELS_FILE, checkpoint_path, read_run_config
    from dnc_cli.tables import read_run_metrics

    acfg = AnalyzeConfig(precision=Precision.float64, nfa=NFAOptions(forms=["standard"]), gram_samples_per_class=0,
                         progress=False)
    analyze_run(tiny_run, acfg, torch.device("cpu"))
    analysed = read_run_metrics(tiny_run)
    cfg = read_run_config(tiny_run)
    data = load_dataset(cfg.dataset, cfg.seed)
    data.train.labels = torch.load(tiny_run / LABELS_FILE, weights_only=True)["train_labels"]
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    for epoch in (0, int(analysed.epoch.max())):
        model.load_state_dict(torch.load(checkpoint_path(tiny_run, epoch), weights_only=True)["model"])
        table = run_measure(model, num_classes=data.num_classes, layers=["layers.*"], dtype=torch.float64,
                            batch_size=64, progress=False, epoch=epoch,
                            splits={"train": (data.train.x, data.train.labels),
                                    "test": (data.test.x, data.test.labels)}).table
        got = _rows(table)
        reference = analysed[analysed.epoch == epoch]
        num_layers = int(reference.layer.max())
        compared = 0
        for row in reference.itertuples():
            key = (row.split, row.layer, row.stage, row.metric)
            if row.stage == "" and not row.metric.startswith("nfa"):
                # analyze's h_l (stage "") is measure's `activation` of the Linear layers.l-1; h_0 its layer 1 input
                key = (row.split, row.layer, "activation", row.metric) if row.layer else (row.split, 1, "input",
                                                                                          row.metric)
            assert key in got, key
            assert got[key] == pytest.approx(row.value, rel=1e-6, abs=1e-9), (epoch, key)
            compared += 1
        assert compared == len(reference) > 300
        # measure's own stage "" of a Linear is its output W h: analyze's `left`
        for layer in range(1, num_layers + 1):
            assert got[("train", layer, "", "nc1")] == got[("train", layer, "left", "nc1")]
        assert set(table.module) == {f"layers.{i}" for i in range(num_layers)}
        assert (table.epoch == epoch).all()


# ------------------------------------------------------------------------------------ (b) AGOPs against Jacobians
def test_linear_agop_inside_a_resnet_head_matches_per_sample_jacobians():
    net = _resnet_with_head()
    torch.manual_seed(1)
    x, y = torch.randn(8, 3, 16, 16, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])  # 2 per class
    measured = run_measure(net, (x, y), 4, layers=["fc.0", "fc.2"], batch_size=3, progress=False)
    with torch.no_grad():
        trunk = nn.Sequential(*list(net.children())[:-1])  # conv1 ... avgpool
        head_input = trunk(x).flatten(1)
    reference = _jacobian_agop(net.fc, head_input)
    torch.testing.assert_close(measured.agops["fc.0"], reference, rtol=1e-9, atol=1e-15)
    with torch.no_grad():
        hidden = net.fc[1](net.fc[0](head_input))
    torch.testing.assert_close(measured.agops["fc.2"], _jacobian_agop(net.fc[2], hidden), rtol=1e-9, atol=1e-15)
    # the NFA rows: corr(WᵀW, AGOP^α) from the same AGOP
    rows = _rows(measured.table)
    weight = net.fc[0].weight.detach()
    values, vectors = np.linalg.eigh(reference.numpy())
    root = vectors @ np.diag(np.sqrt(np.clip(values, 0, None))) @ vectors.T
    expected = np.corrcoef((weight.T @ weight).flatten().numpy(), root.flatten())[0, 1]
    assert rows[("train", 1, "", "nfa_corr_0.5")] == pytest.approx(expected, rel=1e-8)
    # the in-place ReLU after fc.0 is fc.0's `activation` stage; fc.2 is the classifier reading it (NC3)
    assert {info.module: info.activation for info in measured.layers}["fc.0"] == "fc.1"
    assert measured.classifier == "fc.2"
    assert ("train", 1, "activation", "nc3") in rows and ("train", 2, "input", "nc3") in rows


def test_conv_patch_agop_matches_per_sample_jacobians():
    net = _resnet_with_head()
    torch.manual_seed(2)
    x, y = torch.randn(8, 3, 16, 16, dtype=torch.float64), torch.tensor([0, 1, 2, 3] * 2)
    measured = run_measure(net, (x, y), 4, layers=["conv1", "layer2.0.conv1"], families=["nfa"], batch_size=3,
                           progress=False)
    for name in ("conv1", "layer2.0.conv1"):  # 7x7 stride 2 on the image; 3x3 stride 2 inside a residual block
        reference = _patch_agop(net, net.get_submodule(name), x)
        torch.testing.assert_close(measured.agops[name], reference, rtol=1e-9, atol=1e-15 * float(reference.max()))
    rows = _rows(measured.table)
    filters = net.conv1.weight.detach().reshape(64, -1)
    expected = np.corrcoef((filters.T @ filters).flatten().numpy(), measured.agops["conv1"].flatten().numpy())[0, 1]
    assert rows[("train", 1, "", "nfa_corr_1")] == pytest.approx(expected, rel=1e-9)


def test_conv_with_bias_and_dilation_and_a_linear_on_tokens():
    """A biased, dilated conv's patch AGOP, and a Linear applied per token (B, T, d): its AGOP sums over tokens."""
    torch.manual_seed(3)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3, padding=2, dilation=2, bias=True)
            self.mix = nn.Linear(3, 5)
            self.head = nn.Linear(5, 3)

        def forward(self, x):
            tokens = torch.tanh(self.conv(x)).flatten(2).transpose(1, 2)  # (B, H·W, 3)
            return self.head(torch.relu(self.mix(tokens)).mean(1))

    net = Net().double()
    x, y = torch.randn(6, 2, 5, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    measured = run_measure(net, (x, y), 3, layers=["conv", "mix"], progress=False)
    torch.testing.assert_close(measured.agops["conv"], _patch_agop(net, net.conv, x), rtol=1e-9, atol=1e-16)
    with torch.no_grad():
        tokens = torch.tanh(net.conv(x)).flatten(2).transpose(1, 2)
    reference = _jacobian_agop(lambda t: net.head(torch.relu(net.mix(t)).mean(0)), tokens)
    torch.testing.assert_close(measured.agops["mix"], reference, rtol=1e-9, atol=1e-16)


# ------------------------------------------------------------------------------------ generic behaviour
def test_pooling_and_flattening_match_naive_features():
    from test_analyze_network import naive_nc

    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                        nn.Linear(16, 3)).double()
    x, y = torch.randn(30, 1, 6, 6, dtype=torch.float64), torch.arange(30) % 3
    with torch.no_grad():
        conv_out, logits = net[0](x), net(x)
    predictions = logits.argmax(1)
    for pool, features in ((None, conv_out.flatten(1)), ("avg", conv_out.mean((2, 3)))):
        rows = _rows(run_measure(net, (x, y), 3, layers=["0"], families=["nc"], pool=pool, batch_size=7,
                                 progress=False).table)
        for metric, value in naive_nc(features, y, predictions, 3).items():
            assert rows[("train", 1, "", metric)] == pytest.approx(value, rel=1e-7, abs=1e-12), (pool, metric)


def test_the_model_is_left_as_it_was_found():
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = torch.randn(12, 4), torch.arange(12) % 3
    run_measure(net, (x, y), 3, dtype="float64", progress=False)
    assert net.training and all(p.dtype == torch.float32 for p in net.parameters())
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_gives_the_cpu_numbers():
    net = _resnet_with_head()
    torch.manual_seed(9)
    x, y = torch.randn(12, 3, 16, 16, dtype=torch.float64), torch.arange(12) % 4
    kwargs = dict(layers=["layer4", "fc.0", "fc.2", "conv1"], batch_size=5, progress=False)
    on_cpu = _rows(run_measure(net, (x, y), 4, device="cpu", **kwargs).table)
    on_gpu = _rows(run_measure(net, (x, y), 4, device="cuda", **kwargs).table)
    assert on_cpu.keys() == on_gpu.keys()
    assert all(on_gpu[k] == pytest.approx(on_cpu[k], rel=1e-6, abs=1e-9) for k in on_cpu)
    assert next(net.parameters()).device.type == "cpu"


def test_import_paths_and_the_dataframe():
    from dnc_cli import measure as top_level
    from dnc_cli.measure import measure

    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    x, y = torch.randn(10, 4), torch.arange(10) % 2
    a = top_level(net, (x, y), 2, progress=False)
    b = measure(net, (x, y), num_classes=2, progress=False)
    pd.testing.assert_frame_equal(a, b)
    assert list(a.columns) == ["epoch", "split", "layer", "stage", "metric", "value", "module"]
    assert a.epoch.isna().all() and set(a.module) == {"0", "2"}  # default layers: every nn.Linear


def test_a_dataloader_and_splits():
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(6)
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    x, y = torch.randn(40, 4), torch.arange(40) % 3
    loader = DataLoader(TensorDataset(x, y), batch_size=9)
    from_loader = measure_rows(net, splits={"train": loader, "test": (x[:20], y[:20])})
    from_tensors = measure_rows(net, data=(x, y), splits={"test": (x[:20], y[:20])})
    assert from_loader.keys() == from_tensors.keys()
    assert all(from_loader[k] == pytest.approx(from_tensors[k], rel=1e-6, abs=1e-9) for k in from_loader)
    assert {k[0] for k in from_loader} == {"train", "test"}


def test_without_a_final_classifier_there_are_no_nc3_and_no_nc4_rows(caplog):
    """NC3 needs the last nn.Linear with num_classes outputs, NC4 outputs with num_classes columns: a model whose
    head has 5 outputs for 3 classes gets neither, and a warning says why; the other metrics are all there."""
    torch.manual_seed(10)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5))
    x, y = torch.randn(30, 4), torch.arange(30) % 3
    with caplog.at_level("WARNING", logger="dnc.measure"):
        table = run_measure(net, (x, y), 3, progress=False).table
    assert not {"nc3", "nc4"} & set(table.metric) and {"nc1", "nc2", "ncc_acc"} <= set(table.metric)
    assert "no nc3 rows" in caplog.text and "no nc4 rows" in caplog.text
    with_head = _rows(run_measure(nn.Sequential(*net, nn.Linear(5, 3)), (x, y), 3, progress=False).table)
    assert ("train", 2, "", "nc3") in with_head and ("train", 2, "", "nc4") in with_head  # reads layer 2's output


def measure_rows(net, **kwargs) -> dict:
    return _rows(run_measure(net, num_classes=3, progress=False, **kwargs).table)


# ------------------------------------------------------------------------------------ (c) the memory bound
def _peak_rss_kb() -> int:
    return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1))


def test_a_layer_of_65536_features_streams_without_an_m_by_m_matrix():
    """m = 16 x 64 x 64 = 65,536 flattened conv features: an m x m float64 matrix would be 34 GB; the streaming NC1
    (PAPER.md) needs O(m K). BENCHMARKS.md's bound for NC1 at m = 65,536 is 4 GB peak RSS; here the measurement adds
    well under 1 GB to the process's peak, in seconds."""
    torch.manual_seed(7)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(16, 4))
    x, y = torch.randn(48, 1, 64, 64), torch.arange(48) % 4
    try:
        open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
        baseline = _peak_rss_kb()
    except OSError:
        pytest.skip("cannot reset the peak RSS here")
    start = time.perf_counter()
    measured = run_measure(net, (x, y), 4, layers=["0", "4"], batch_size=16, progress=False)
    elapsed = time.perf_counter() - start
    added_gb = (_peak_rss_kb() - baseline) / 2**20
    assert {info.module: info.features for info in measured.layers}["0"] == 65536
    assert ("test" not in set(measured.table.split)) and np.isfinite(_rows(measured.table)[("train", 1, "", "nc1")])
    assert added_gb < 1.0, added_gb
    assert elapsed < 60, elapsed


# ------------------------------------------------------------------------------------ (d) bad input, API
class _Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(4, 6, batch_first=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


@pytest.mark.parametrize("case, needle", [
    ("no such layer", "layer 'fc.9' matches no module of the model; close matches: fc."),
    ("not a tensor", "layer 'rnn' outputs a tuple, not a tensor"),
    ("labels >= num_classes", "labels range over [1, 3] but num_classes=3"),
    ("shuffled", "the second pass over the data gave other batches than the first"),
    ("one-shot", "a one-shot iterator cannot be swept twice"),
    ("shared module", "layer 'act' runs more than once in one forward pass"),
    ("model returns a tuple", "the model returns a tuple"),
])
def test_bad_input_raises_a_one_line_usage_error(case, needle):
    from torch.utils.data import DataLoader, TensorDataset

    from dnc_cli.config import ModelConfig
    from dnc_cli.models.networks import build_model

    torch.manual_seed(8)
    x, y = torch.randn(20, 4), torch.arange(20) % 3
    head = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    call = {
        "no such layer": lambda: run_measure(_named_fc(head), (x, y), 3, layers=["fc.9"]),
        "not a tensor": lambda: run_measure(_Recurrent(), (torch.randn(20, 2, 4), y), 3, layers=["rnn"]),
        "labels >= num_classes": lambda: run_measure(head, (x, y + 1), 3),
        "shuffled": lambda: run_measure(head, DataLoader(TensorDataset(x, y), batch_size=5, shuffle=True), 3),
        "one-shot": lambda: run_measure(head, iter([(x, y)]), 3),
        "shared module": lambda: run_measure(build_model(ModelConfig(depth=2, width=4), (1, 1, 4), 3),
                                             (x.reshape(20, 1, 1, 4), y), 3, layers=["act"]),
        "model returns a tuple": lambda: run_measure(_TupleNet(head), (x, y), 3),
    }[case]
    with pytest.raises(UsageError) as caught:
        call()
    assert needle in str(caught.value) and "\n" not in str(caught.value)


class _TupleNet(nn.Module):
    def __init__(self, head):
        super().__init__()
        self.head = head

    def forward(self, x):
        return self.head(x), x


def _named_fc(head: nn.Module) -> nn.Module:
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = head

        def forward(self, x):
            return self.fc(x)

    return Net()


