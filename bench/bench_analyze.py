"""`make bench` (part 1): dnc's analysis against the official algorithm (bench/official_baseline.py), in one process.

1. analyze: a 5-hidden-layer width-512 MLP on 8,000 MNIST-shaped Gaussian-mixture samples, train split,
   families nc + svd + nfa. dnc's `analyze_checkpoint` vs the official algorithm vs the floor (one forward +
   the K backward passes + the per-layer g^T g products). Targets: >= 10x faster than the baseline, <= 2x the
   floor, equal metrics (nc1 / nc1_trace / NFA to 1e-5 relative; NFA with AGOP^1/2 to 5e-5, see below).
2. nc1-16k: NC1 at m = 16,384, N = 10,000, K = 10: dnc's ClassMeans + NeuralCollapse vs the official statistics
   (per-sample grouping, full Sigma_B / Sigma_W / Sigma_T) and Papyan's svds pseudo-inverse with the m^3 product.
   Targets: >= 30x faster, equal to 1e-6 relative (against a float64 reference).
3. nc1-64k: m = 65,536, N = 10,000, K = 10 in a fresh subprocess, features regenerated batch by batch from a
   seed: dnc's NC1 must peak under 4 GB RSS.

Timings are repeated back to back in this process and the minimum is kept. Exit status 1 when a target is
missed. `--quick`: a smoke version with small sizes (targets not enforced). `--profile`: also print
torch.profiler's op table of one dnc analysis.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import torch
from common import finish, machine, mixture, now, rel, runs, timed

from dnc_cli.metrics.agop import pearson
from dnc_cli.metrics.collapse import ClassMeans, NeuralCollapse

# imported by load() -- not in the --rss-child subprocess, whose peak RSS should be dnc's NC1 and torch only
official = dnc_analyze = AnalyzeConfig = ModelConfig = Data = Split = build_model = None

FULL = dict(n=8000, depth=5, width=512, classes=10, repeats=3, baseline_repeats=2,
            m2=16384, n2=10000, m3=65536, n3=10000, batch=1000)
QUICK = dict(n=1000, depth=3, width=128, classes=10, repeats=2, baseline_repeats=1,
             m2=2048, n2=2000, m3=8192, n3=2000, batch=500)
TARGETS = dict(speedup_analyze=10.0, floor_factor=2.0, agree_analyze=1e-5, agree_nfa_half=5e-5, speedup_nc1=30.0,
               agree_nc1=1e-6, rss_gb=4.0)


def load():
    global official, dnc_analyze, AnalyzeConfig, ModelConfig, Data, Split, build_model
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import official_baseline as official

    from dnc_cli.analyze import network as dnc_analyze
    from dnc_cli.config import AnalyzeConfig, ModelConfig
    from dnc_cli.data import Data, Split
    from dnc_cli.models.networks import build_model


# ------------------------------------------------------------------------------------------- 1. analyze
def trained_mlp(x, labels, num_classes: int, depth: int, width: int, seed: int, steps: int = 60):
    """The paper's MLP (bias-free Linear+ReLU) at xavier gain 1, moved off its init by a few Adam steps on MSE
    with +-1 targets, so that ReLUs are active and the metrics non-degenerate."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(depth=depth, width=width, init_gain=1.0), (1, 28, 28), num_classes)
    targets = 2.0 * torch.nn.functional.one_hot(labels, num_classes).float() - 1.0
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (256,), generator=g)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x[idx]), targets[idx]).backward()
        opt.step()
    return model.eval()


def floor_pass(model, x, batch_size: int):
    """The floor the issue names: one forward + the K backward passes (one batched autograd backward with the K
    one-hot grad_outputs) w.r.t. every layer's input + the per-layer g^T g products summed in float64 -- the least
    work an all-layer AGOP by K backward passes does. Nothing else. Returns the AGOP sums (not divided by N)."""
    sums = [torch.zeros(layer.in_features, layer.in_features, dtype=torch.float64) for layer in model.layers]
    for start in range(0, len(x), batch_size):
        with torch.no_grad():
            h0 = model.embed(x[start:start + batch_size])
        h0.requires_grad_(True)
        with torch.enable_grad():
            trace = model.trace(h0)
            n, k = trace.logits.shape
            basis = torch.eye(k, dtype=trace.logits.dtype).unsqueeze(1).expand(k, n, k)
            grads = torch.autograd.grad(trace.logits, trace.inputs, grad_outputs=basis, is_grads_batched=True)
        for total, grad in zip(sums, grads):
            grad = grad.reshape(-1, grad.shape[-1])
            total += (grad.T @ grad).double()
    return sums


def dnc_tables(rows):
    """dnc's rows -> ({(layer, stage): {metric: value}}, {(layer, power_str): nfa}, nc3)."""
    metrics, nfa, nc3 = defaultdict(dict), {}, None
    for split, layer, stage, name, value in rows:
        if split != "train" or stage in ("input", "activation"):  # aliases of (l-1, "") and (l, "")
            continue
        if name.startswith("nfa_corr_"):
            nfa[(layer, name[len("nfa_corr_"):])] = value
        elif name == "nc3":
            nc3 = value
        else:
            metrics[(layer, stage)][name] = value
    return metrics, nfa, nc3


def compare(dnc_rows, baseline):
    """Max relative differences per metric name (NFA per power; ncc_acc / nc4 absolute), and nc1 / nc1_trace per
    layer (max over its stages)."""
    base_results, base_nfa, base_nc3, _ = baseline
    metrics, nfa, nc3 = dnc_tables(dnc_rows)
    worst, per_layer = defaultdict(float), defaultdict(float)
    missing = sorted(set(base_results) ^ set(metrics))
    for key, base in base_results.items():
        for name, value in base.items():
            ours = metrics.get(key, {}).get(name)
            if ours is None:
                missing.append((key, name))
                continue
            diff = abs(ours - value) if name in ("ncc_acc", "nc4") else rel(ours, value)
            worst[name] = max(worst[name], diff)
            if name in ("nc1", "nc1_trace"):
                per_layer[key[0]] = max(per_layer[key[0]], diff)
    for (layer, power), value in base_nfa.items():
        worst[f"nfa_{power:g}"] = max(worst[f"nfa_{power:g}"], rel(nfa[(layer, f"{power:g}")], value))
    worst["nc3"] = rel(nc3, base_nc3)
    return dict(worst), dict(per_layer), missing


def agreement(worst):
    """The compared quantities the targets name: nc1, nc1_trace and NFA (alpha = 1) to 1e-5, NFA(AGOP^1/2) 5e-5."""
    strict = max(worst.get(k, 0.0) for k in ("nc1", "nc1_trace", "nfa_1"))
    return strict, worst.get("nfa_0.5", 0.0)


class PhaseTimer:
    """Wall time of dnc's phases, by wrapping the functions analyze_checkpoint calls (module globals and class
    methods), restored on exit. Phases do not nest, so they add up; `other` is the rest (sweep-2 forward...).
    Also records the AGOPs LayerAGOPs.compute returns."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self.saved, self.agops = [], []

    def wrap(self, owner, name, label):
        original = getattr(owner, name, None)
        if original is None:  # dnc renamed it: its time lands in `other`
            return

        def wrapper(*args, **kwargs):
            start = now()
            try:
                out = original(*args, **kwargs)
            finally:
                self.seconds[label] += now() - start
            if owner is dnc_analyze.LayerAGOPs and name == "compute":
                self.agops = out
            return out

        self.saved.append((owner, name, original))
        setattr(owner, name, wrapper)

    def __enter__(self):
        self.wrap(dnc_analyze.LayerAGOPs, "update", "sweep 1: forward + K-output backward + P_l sums (LayerAGOPs)")
        self.wrap(dnc_analyze.LayerAGOPs, "compute", "AGOP_l = W_l^T P_l W_l (LayerAGOPs.compute)")
        self.wrap(dnc_analyze, "_no_grad_trace", "sweep 1: forward (no AGOP)")
        self.wrap(dnc_analyze, "representations", "right / agop stage matmuls (representations)")
        self.wrap(ClassMeans, "update", "ClassMeans.update")
        self.wrap(ClassMeans, "compute", "ClassMeans.compute")
        self.wrap(NeuralCollapse, "__init__", "NeuralCollapse.__init__ (SVD of means)")
        self.wrap(NeuralCollapse, "update", "NeuralCollapse.update")
        self.wrap(NeuralCollapse, "compute", "NeuralCollapse.compute")
        self.wrap(dnc_analyze, "psd_eigh", "eigh of each AGOP (psd_eigh: 1 per layer)")
        self.wrap(dnc_analyze, "psd_power", "AGOP^alpha from its eigh (psd_power, once per power)")
        self.wrap(dnc_analyze, "nfa_correlation", "NFA correlations (nfa_correlation)")
        self.wrap(dnc_analyze, "nc3", "nc3")
        return self

    def __exit__(self, *exc):
        for owner, name, original in reversed(self.saved):
            setattr(owner, name, original)


def nfa_half(weight, agop):
    """NFA correlation with AGOP^1/2 (negative eigenvalues clamped, as dnc and the official script do)."""
    agop = agop.to(torch.float64)
    values, vectors = torch.linalg.eigh((agop + agop.T) / 2)
    weight = weight.to(torch.float64)
    return pearson(weight.T @ weight, (vectors * values.clamp_min(0).sqrt()) @ vectors.T)


def nfa_precision(model, x, batch_size, dnc_agops, base_agops):
    """Float64 ground truth for NFA(AGOP^1/2): the AGOPs of a float64 copy of the model. The square root magnifies
    rounding in the AGOP's near-null space (layer 1's AGOP has rank <= m_1 = 512 < 784), so this is where float32
    arithmetic shows: the baseline, as the official script, sums float32 gradient products in float32."""
    model64 = copy.deepcopy(model).double()
    reference = [a / len(x) for a in floor_pass(model64, x.double(), batch_size)]
    out = defaultdict(float)
    for linear, ref, ours, base in zip(model.layers, reference, dnc_agops, base_agops):
        weight = linear.weight.detach()
        truth = nfa_half(weight, ref)
        out["dnc vs float64"] = max(out["dnc vs float64"], rel(nfa_half(weight, ours), truth))
        out["baseline vs float64"] = max(out["baseline vs float64"], rel(nfa_half(weight, base), truth))
    return dict(out)


def bench_analyze(size, seed: int, profile: bool):
    num_classes = size["classes"]
    x, labels = mixture(size["n"], num_classes, seed)
    model = trained_mlp(x, labels, num_classes, size["depth"], size["width"], seed)
    data = Data(Split(x, labels), Split(x[:num_classes], labels[:num_classes]), num_classes,
                torch.zeros(len(x), dtype=torch.bool), labels.clone())
    acfg = AnalyzeConfig(splits=["train"], families=["nc", "svd", "nfa"], batch_size=size["batch"], progress=False)
    cpu, batch = torch.device("cpu"), size["batch"]

    def run_dnc():
        return dnc_analyze.analyze_checkpoint(model, data, acfg, cpu)

    def run_base():
        return official.analyze_official(model, x, labels, num_classes)

    def run_dnc_agops():
        agops = dnc_analyze.LayerAGOPs(model)
        for start in range(0, len(x), batch):
            agops.update(model.embed(x[start:start + batch]))
        return agops.compute()

    sides = [("dnc", run_dnc), ("floor", lambda: floor_pass(model, x, batch)), ("dnc_agops", run_dnc_agops),
             ("baseline", run_base)]
    times, out = defaultdict(list), {}
    run_dnc()  # warm-up (allocator, thread pools)
    official.TIMINGS.clear()
    for rep in range(size["repeats"]):
        for name, fn in sides:
            if name == "baseline" and rep >= size["baseline_repeats"]:
                continue
            seconds, out[name] = timed(fn)
            times[name].append(seconds)
    base_phases = {k: v / size["baseline_repeats"] for k, v in official.TIMINGS.items()}
    floor_agops = [a / len(x) for a in out["floor"]]
    floor_errors = {"dnc_agops": max(float((a - b).abs().max() / b.abs().max())
                                     for a, b in zip(out["dnc_agops"], floor_agops, strict=True))}
    worst, per_layer, missing = compare(out["dnc"], out["baseline"])
    with PhaseTimer() as phases:
        seconds, _ = timed(run_dnc)
    phase_table = dict(phases.seconds)
    phase_table["other (sweep-2 forward, embed, Python)"] = seconds - sum(phases.seconds.values())
    dnc_agops = phases.agops  # dnc's own AGOPs, as LayerAGOPs.compute returned them
    precision = nfa_precision(model, x, batch, dnc_agops, out["baseline"][3])
    op_table = None
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            run_dnc()
        op_table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    return dict(times=dict(times), worst=worst, per_layer=per_layer, missing=missing, phases=phase_table,
                phase_total=seconds, op_table=op_table, base_phases=base_phases, floor_errors=floor_errors,
                precision=precision)


# ------------------------------------------------------------------------------------------- 2. NC1 at m = 16k
def gaussian_features(n, m, num_classes, seed, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    means = scale * torch.randn(num_classes, m, generator=g)
    labels = torch.randperm(n, generator=g) % num_classes
    features = torch.randn(n, m, generator=g)
    features += means[labels]
    return features, labels


def dnc_nc1(batches, num_classes):
    """dnc's two streaming passes: ClassMeans, then NeuralCollapse (all its metrics, not only NC1)."""
    means = ClassMeans(num_classes)
    for features, labels in batches():
        means.update(features, labels)
    collapse = NeuralCollapse(means.compute())
    for features, labels in batches():
        collapse.update(features, labels)
    return collapse.compute()


def baseline_nc1(features, labels, num_classes):
    """The official statistics at this size, in its float32: per-sample grouping, full m x m Sigma_B, Sigma_W and
    Sigma_T; then Papyan's NC1: Sigma_B in float64, svds(Sigma_B, K-1), the m x m Sigma_B^+ and the m x m x m
    product Sigma_W @ Sigma_B^+ (float32). Returns the metrics and the phase times."""
    official.TIMINGS.clear()
    onehot = official.one_hot_pm1(labels, num_classes)
    _, sigma_w, sigma_t, means, _, _ = official.class_variance(features, onehot, num_classes)
    del sigma_t
    with official.phase("svds(Sigma_B, K-1) + Sigma_B^+ (m x m)"):
        inv_sb, _, _ = official.between_pinv(means, num_classes)
    with official.phase("trace(Sigma_W @ Sigma_B^+): m^3 product"):
        nc1 = official.papyan_nc1(sigma_w, inv_sb, num_classes)
        centred = means.double() - means.double().mean(0)
        nc1_trace = float(torch.trace(sigma_w)) / (float(centred.square().sum()) / num_classes)
    return {"nc1": nc1, "nc1_trace": nc1_trace}, dict(official.TIMINGS)


def float64_reference(features, labels, num_classes, batch):
    """NC1 exactly in float64, independently of both sides' decompositions: float64 class means, Sigma_B's
    eigenpairs from eigh of the K x K Gram of the centred means (u_j = M~^T v_j / sqrt(K lambda_j)), and
    u_j^T Sigma_W u_j = (1/N) sum_i (u_j^T (h_i - mu_{y_i}))^2 accumulated batch by batch."""
    n, m = features.shape
    sums = torch.zeros(num_classes, m, dtype=torch.float64)
    sums.index_add_(0, labels, features.double())
    means = sums / torch.bincount(labels, minlength=num_classes)[:, None].double()
    centred = means - means.mean(0)
    values, vectors = torch.linalg.eigh(centred @ centred.T / num_classes)
    keep = values > values.max() * max(m, num_classes) * torch.finfo(torch.float64).eps
    values, vectors = values[keep], vectors[:, keep]
    basis = centred.T @ vectors / torch.sqrt(num_classes * values)
    projected = torch.zeros(len(values), dtype=torch.float64)
    within = 0.0
    for start in range(0, n, batch):
        residuals = features[start:start + batch].double() - means[labels[start:start + batch]]
        projected += (residuals @ basis).square().sum(0)
        within += float(residuals.square().sum())
    return {"nc1": float((projected / n / values).sum()) / num_classes,
            "nc1_trace": (within / n) / (float(centred.square().sum()) / num_classes)}


def bench_nc1_16k(size, seed):
    m, n, num_classes, batch = size["m2"], size["n2"], size["classes"], size["batch"]
    features, labels = gaussian_features(n, m, num_classes, seed)

    def batches():
        for start in range(0, n, batch):
            yield features[start:start + batch], labels[start:start + batch]

    times, out = [], None
    times.append(timed(dnc_nc1, batches, num_classes)[0])
    base_seconds, (base, base_phases) = timed(baseline_nc1, features, labels, num_classes)
    for _ in range(size["repeats"] - 1):
        seconds, out = timed(dnc_nc1, batches, num_classes)
        times.append(seconds)
    reference = float64_reference(features, labels, num_classes, batch)
    keys = ("nc1", "nc1_trace")
    return dict(times=times, baseline=base_seconds, baseline_phases=base_phases,
                vs_reference={k: rel(out[k], reference[k]) for k in keys},
                vs_baseline={k: rel(out[k], base[k]) for k in keys},
                baseline_vs_reference={k: rel(base[k], reference[k]) for k in keys})


# ------------------------------------------------------------------------------------------- 3. NC1 at m = 64k
def _proc_status_mb(field: str) -> float:
    """A /proc/self/status memory field in MB (VmHWM: this process's own peak RSS); nan where unavailable."""
    status = Path("/proc/self/status")
    if not status.exists():
        return float("nan")
    return next((int(line.split()[1]) / 1024 for line in status.read_text().splitlines()
                 if line.startswith(field + ":")), float("nan"))


def rss_child(m, n, num_classes, seed, batch):
    """Runs in a fresh interpreter: dnc's NC1 on features regenerated batch by batch from a seed."""
    rss_after_import = _proc_status_mb("VmHWM")
    means = 0.05 * torch.randn(num_classes, m, generator=torch.Generator().manual_seed(seed))

    def batches():
        for b, start in enumerate(range(0, n, batch)):
            g = torch.Generator().manual_seed(seed * 1_000_003 + b)
            labels = torch.arange(start, min(start + batch, n)) % num_classes
            features = torch.randn(len(labels), m, generator=g)
            features += means[labels]
            yield features, labels

    start = now()
    result = dnc_nc1(batches, num_classes)
    seconds = now() - start
    start = now()
    for _ in batches():
        pass
    generate = now() - start
    print(json.dumps(dict(seconds=seconds, generate_one_pass=generate, nc1=result["nc1"],
                          maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                          vmhwm_mb=_proc_status_mb("VmHWM"),
                          rss_after_import_mb=rss_after_import)))


def bench_nc1_64k(size, seed):
    """Run first, while this process is small: Linux carries the spawning process's peak RSS into the child's
    ru_maxrss across fork/exec, so a child spawned from a large parent would report the parent's peak."""
    cmd = [sys.executable, __file__, "--rss-child", str(size["m3"]), str(size["n3"]), str(size["classes"]),
           str(seed), str(size["batch"])]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------- report
def report_analyze(size, r, misses):
    t = {k: min(v) for k, v in r["times"].items()}
    speedup, floor_factor = t["baseline"] / t["dnc"], t["dnc"] / t["floor"]
    print(f"\n## 1. analyze: MLP depth {size['depth']} width {size['width']}, N={size['n']}, K={size['classes']}, "
          f"train split, families nc+svd+nfa; min of {size['repeats']} runs (baseline {size['baseline_repeats']})")
    print(f"{'side':<40}{'seconds':>8}{'base/x':>9}{'x/floor':>9}   runs")
    labels = {"baseline": "official algorithm (baseline)", "dnc": "dnc analyze_checkpoint",
              "floor": "floor: fwd + K bwd (batched) + g^T g", "dnc_agops": "dnc's AGOPs alone (LayerAGOPs)"}
    for name in ("baseline", "dnc", "floor", "dnc_agops"):
        print(f"{labels.get(name, name):<40}{t[name]:>8.2f}{t['baseline'] / t[name]:>8.2f}x"
              f"{t[name] / t['floor']:>8.2f}x   {runs(r['times'][name])}")
    print(f"=> baseline/dnc {speedup:.2f}x (target >= {TARGETS['speedup_analyze']:g}x), dnc/floor "
          f"{floor_factor:.2f}x (target <= {TARGETS['floor_factor']:g}x); baseline/floor "
          f"{t['baseline'] / t['floor']:.2f}x; baseline/(dnc's AGOPs alone) {t['baseline'] / t['dnc_agops']:.2f}x")
    print("agreement with the baseline (max relative difference; ncc_acc / nc4 absolute): " +
          ", ".join(f"{k} {v:.1e}" for k, v in sorted(r["worst"].items())))
    print("  nc1 / nc1_trace per layer, max over stages: " +
          ", ".join(f"L{k} {v:.1e}" for k, v in sorted(r["per_layer"].items())))
    print("  dnc's AGOPs vs the floor's autograd AGOPs (max |difference| / max |AGOP| over layers): " +
          ", ".join(f"{k} {v:.1e}" for k, v in r["floor_errors"].items()))
    print("NFA with AGOP^1/2 against a float64 model's AGOPs (max over layers, relative): " +
          ", ".join(f"{k} {v:.1e}" for k, v in r["precision"].items()))
    print(f"dnc phases (one instrumented run, {r['phase_total']:.2f} s):")
    for label, seconds in sorted(r["phases"].items(), key=lambda kv: -kv[1]):
        if seconds >= 0.005:
            print(f"  {label:<66}{seconds:>6.2f} s {100 * seconds / r['phase_total']:>5.1f}%")
    total = sum(r["base_phases"].values())
    print(f"baseline phases (mean per run, {total:.2f} s timed of {statistics.mean(r['times']['baseline']):.2f} s):")
    for label, seconds in sorted(r["base_phases"].items(), key=lambda kv: -kv[1]):
        print(f"  {label:<66}{seconds:>6.2f} s")
    if r["op_table"]:
        print(r["op_table"])
    strict, half = agreement(r["worst"])
    if r["missing"]:
        misses.append(f"analyze: keys missing on one side: {r['missing'][:5]}")
    if strict > TARGETS["agree_analyze"]:
        misses.append(f"analyze: nc1 / nc1_trace / nfa_1 differ by {strict:.1e} > {TARGETS['agree_analyze']:g}")
    if half > TARGETS["agree_nfa_half"]:
        misses.append(f"analyze: nfa_0.5 differs by {half:.1e} > {TARGETS['agree_nfa_half']:g}")
    if speedup < TARGETS["speedup_analyze"]:
        misses.append(f"analyze: speed-up {speedup:.2f}x < {TARGETS['speedup_analyze']:g}x (dnc's AGOPs alone: "
                      f"{t['baseline'] / t['dnc_agops']:.2f}x; see BENCHMARKS.md)")
    if floor_factor > TARGETS["floor_factor"]:
        misses.append(f"analyze: dnc is {floor_factor:.2f}x the floor > {TARGETS['floor_factor']:g}x")


def report_nc1_16k(size, r, misses):
    t = statistics.median(r["times"])
    speedup = r["baseline"] / t
    print(f"\n## 2. NC1 at m={size['m2']}, N={size['n2']}, K={size['classes']} (features in memory, float32); "
          f"dnc: median of {len(r['times'])} runs")
    print(f"{'side':<58}{'seconds':>8}{'base/x':>9}   runs")
    print(f"{'baseline: official Sigma_B/W/T + Papyan svds + m^3 product':<58}{r['baseline']:>8.2f}{1:>8.2f}x")
    for label, seconds in r["baseline_phases"].items():
        print(f"  {label:<56}{seconds:>8.2f}")
    print(f"{'dnc ClassMeans + NeuralCollapse (float64 accumulators)':<58}{t:>8.2f}{speedup:>8.2f}x   "
          f"{runs(r['times'])}")
    print(f"=> speed-up {speedup:.1f}x (target >= {TARGETS['speedup_nc1']:g}x)")
    fmt = lambda d: ", ".join(f"{k} {v:.1e}" for k, v in d.items())  # noqa: E731
    print(f"relative differences: dnc vs float64 reference {fmt(r['vs_reference'])}; dnc vs float32 baseline "
          f"{fmt(r['vs_baseline'])}; float32 baseline vs reference {fmt(r['baseline_vs_reference'])}")
    worst = max(r["vs_reference"].values())
    if speedup < TARGETS["speedup_nc1"]:
        misses.append(f"nc1-16k: speed-up {speedup:.1f}x < {TARGETS['speedup_nc1']:g}x")
    if worst > TARGETS["agree_nc1"]:
        misses.append(f"nc1-16k: dnc differs from the float64 reference by {worst:.1e} > {TARGETS['agree_nc1']:g}")


def report_nc1_64k(size, r, misses):
    print(f"\n## 3. NC1 at m={size['m3']}, N={size['n3']}, K={size['classes']}: fresh subprocess, batches of "
          f"{size['batch']} regenerated from a seed (two passes)")
    print(f"dnc {r['seconds']:>7.2f} s (generating the features ~{2 * r['generate_one_pass']:.2f} s of it), "
          f"peak RSS {r['maxrss_mb'] / 1024:.2f} GB (ru_maxrss; VmHWM {r['vmhwm_mb'] / 1024:.2f} GB; VmHWM after "
          f"imports {r['rss_after_import_mb'] / 1024:.2f} GB), nc1 = {r['nc1']:.6g}")
    print(f"=> peak RSS {r['maxrss_mb'] / 1024:.2f} GB (target < {TARGETS['rss_gb']:g} GB)")
    if r["maxrss_mb"] / 1024 >= TARGETS["rss_gb"]:
        misses.append(f"nc1-64k: peak RSS {r['maxrss_mb'] / 1024:.2f} GB >= {TARGETS['rss_gb']:g} GB")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, seconds; targets not enforced")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's op table of one dnc run")
    parser.add_argument("--only", choices=["analyze", "nc1-16k", "nc1-64k"], action="append")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rss-child", nargs=5, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(*args.rss_child)
        return 0
    load()
    size = QUICK if args.quick else FULL
    only = set(args.only or ["analyze", "nc1-16k", "nc1-64k"])
    print(f"# dnc bench ({'quick' if args.quick else 'full'}): {machine()}; Sigma_B^+ via {official.SVDS_BACKEND}")
    misses, wall = [], now()
    rss = bench_nc1_64k(size, args.seed) if "nc1-64k" in only else None
    if "analyze" in only:
        report_analyze(size, bench_analyze(size, args.seed, args.profile), misses)
    if "nc1-16k" in only:
        report_nc1_16k(size, bench_nc1_16k(size, args.seed), misses)
    if rss is not None:
        report_nc1_64k(size, rss, misses)
    return finish(misses, wall, "all targets met", enforced=not args.quick)


if __name__ == "__main__":
    sys.exit(main())
