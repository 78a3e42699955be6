"""report.md: each claim's verdict, reason, figure links and numbers, for one run or a sweep (every number as mean ±
std over its runs, taken as seeds, and each run's headline numbers and verdict in a table).
"""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path

from dnc_cli.config import RUN_ONLY_KEYS, SEED_KEY, ReportConfig
from dnc_cli.report.claims import BEYOND, CLAIMS, PAPER
from dnc_cli.report.criteria import FAILS, HOLDS, NA, THRESHOLD_NOTE, fmt
from dnc_cli.report.run_data import RunData, get
from dnc_cli.report.verdicts import Claim
from dnc_cli.runs import FIGURES_DIR
from dnc_cli.tables import markdown_table

# headers and list labels of the numbers' keys (a key "a|b" is row a, column b of the claim's table)
LABELS = {
    "first": "first checkpoint", "tpt": "TPT checkpoint", "end": "end", "fall_from_first": "fall first→end (×)",
    "fall_after_tpt": "fall TPT→end (×)", "layer": "hidden layer", "first_epoch": "first checkpoint (epoch)",
    "tpt_epoch": "TPT (epoch of 100% train accuracy)", "tpt_checkpoint": "TPT checkpoint (epoch)",
    "end_epoch": "end (epoch)", "final_epoch": "final checkpoint (epoch)",
    "falling_steps": "share of layer→layer steps where NC1 falls",
    "fall_first_to_last": "NC1 fall first→last hidden layer (×)",
    "input": "input", "right": "right (S Vᵀ h)", "left": "left (W h)", "activation": "activation", "agop": "AGOP^½",
    "fall": "fall (×)", "linear_share": "linear share (input→right)", "nonlinear_share": "nonlinear share (left→act.)",
    "layers": "layers", "layers_judged": "layers with a reduction",
    "linear_dominant": "share of layers collapsing linearly",
    "mean_linear_share": "mean linear share", "mean_nonlinear_share": "mean nonlinear share",
    "rise": "rise of the mean correlation first→final", "rose_layers": "share of layers whose correlation rose",
    "first_input": "layer 1's input", "last": "last layer's output", "agop_share": "AGOP share",
    "agop_dominant": "share of layers collapsing at the AGOP",
    "mean_agop_share": "mean AGOP share", "kernel_acc": "kernel accuracy", "random_fraction": "random label fraction",
    "n_relabelled": "samples relabelled", "tpt_reached": "TPT reached (share of runs)",
    "judged_epoch": "judged at (epoch)", "nc2_fall_first_to_last": "NC2 fall first→last hidden layer (×)",
    "linear_share_flip": "largest linear_share that keeps the verdict",
    "agop_share_flip": "largest agop_share that keeps the verdict", "judged": "judged checkpoint",
    "horizon": "paper's horizon", "horizon_epoch": "paper's horizon checkpoint (epoch)",
    "change": "change of the mean correlation horizon→end",
    "end_fall_first_to_last": "at the end: NC1 fall first→last hidden layer (×)",
    "end_mean_linear_share": "at the end: mean linear share",
}
SCOPES = {PAPER: ("The paper's claims", "What the paper (Beaglehole et al., NeurIPS 2024) states, judged on the "
                  "quantities its own code computes and plots."),
          BEYOND: ("Beyond the paper", "Hypotheses the paper does not state, tested by the tool and reported as "
                   "such.")}


def cell(mean: float, std: float = math.nan) -> str:
    return fmt(mean) if math.isnan(std) or math.isinf(mean) else f"{fmt(mean)} ± {std:.2g}"


def label(key: str) -> str:
    return LABELS.get(key, key)


def numbers_markdown(claim: Claim, row_name: str) -> str:
    """The claim's numbers: an "a|b" table, a list of the other scalars, and the per-layer table."""
    parts = []
    grid = [k for k in claim.numbers if "|" in k]
    if grid:
        rows = list(dict.fromkeys(k.split("|")[0] for k in grid))
        cols = list(dict.fromkeys(k.split("|")[1] for k in grid))
        body = [[row] + [cell(claim.numbers.get(f"{row}|{col}", math.nan), claim.std.get(f"{row}|{col}", math.nan))
                         for col in cols] for row in rows]
        parts.append(markdown_table([row_name] + [label(c) for c in cols], body))
    scalars = [k for k in claim.numbers if "|" not in k]
    if scalars:
        parts.append("\n".join(f"- {label(k)}: {cell(claim.numbers[k], claim.std.get(k, math.nan))}"
                               for k in scalars))
    if claim.layers:
        cols = list(dict.fromkeys(k for row in claim.layers.values() for k in row))
        body = [[str(layer)] + [cell(row.get(k, math.nan), claim.layers_std.get(layer, {}).get(k, math.nan))
                                for k in cols] for layer, row in claim.layers.items()]
        header = ["layer"] + [" ".join(label(p) for p in k.split("|")) for k in cols]
        parts.append(markdown_table(header, body))
    return "\n\n".join(parts)


def figure_links(claim: Claim, out_dir: Path, plot_target: Path) -> str:
    links = [f"[figures/{name}.png](figures/{name}.png)" for name in claim.figures]
    missing = [name for name in claim.figures if not (out_dir / FIGURES_DIR / f"{name}.png").is_file()]
    note = f" (not drawn yet: run `dnc plot run_dir={plot_target}`)" if missing else ""
    return "Figure: " + ", ".join(links) + note


def claims_markdown(claims: list[Claim], out_dir: Path, plot_target: Path) -> list[str]:
    """The verdict tables, one per scope (the paper's claims, then the hypotheses beyond it), then every claim's
    source, verdict with its thresholds, figures and numbers."""
    lines = []
    for scope, (heading, intro) in SCOPES.items():
        lines += [f"## {heading}", "", intro, "",
                  markdown_table(["#", "claim", "verdict", "source", "figure"],
                                 [[c.number, c.title, f"**{c.verdict}**", c.cite,
                                   ", ".join(f"[{n}](figures/{n}.png)" for n in c.figures)]
                                  for c in claims if c.scope == scope]), ""]
    lines += ["Every threshold is the tool's choice, set in conf/report.yaml: the paper states none. Each verdict "
              "below gives the measured number, the threshold, and the threshold at which the verdict would flip.",
              ""]
    for claim, spec in zip(claims, CLAIMS):
        reason = claim.reason[:1].upper() + claim.reason[1:]
        lines += [f"## {claim.number}. {claim.title}: **{claim.verdict}**", "", f"Source: {claim.source}.", "",
                  "\n".join(f"- {part}" for part in reason.split("; ")), "", figure_links(claim, out_dir, plot_target)]
        if claim.numbers or claim.layers:
            lines += ["", numbers_markdown(claim, spec.row_name or "quantity")]
        lines.append("")
    return lines[:-1]


def thresholds_markdown(cfg: ReportConfig) -> list[str]:
    keys = [f.name for f in fields(ReportConfig) if f.name not in ("run_dir", "until_epoch")]
    return ["## Thresholds", "", f"The {THRESHOLD_NOTE}. Set with `dnc report key=value` (documented in "
            "conf/report.yaml): " + ", ".join(f"`{k}={getattr(cfg, k)}`" for k in keys) + "."]


def _run_facts(run: RunData) -> dict[str, str]:
    final = run.train_log.iloc[-1] if run.train_log is not None else {}
    summary = run.summary
    random = f"{run.random_fraction:g} ({run.n_relabelled} relabelled)" if run.random_labels else "none"
    return {"model": run.model, "dataset": str(summary.get("dataset") or get(run.config, "dataset.name") or "?"),
            "seed": str(summary.get("seed", get(run.config, "seed"))), "status": str(summary.get("status", "?")),
            "TPT epoch": fmt(math.nan if run.tpt_epoch is None else run.tpt_epoch),
            "epochs": fmt(float(summary["epochs_done"])) if summary.get("epochs_done") is not None else "—",
            "random labels": random,
            "final train acc": fmt(float(final["train_acc"])) if "train_acc" in final else "—",
            "final test acc": fmt(float(final["test_acc"])) if "test_acc" in final else "—"}


def render_run(run: RunData, claims: list[Claim], cfg: ReportConfig) -> str:
    facts = _run_facts(run)
    lines = [f"# dnc report: {run.path.name}", "", f"Run `{run.path}`: "
             + ", ".join(f"{k} {v}" for k, v in facts.items()) + ".", "",
             "The paper's claims (Beaglehole et al., NeurIPS 2024), and hypotheses beyond it, with this run's numbers "
             f"and a verdict: {HOLDS}, {FAILS} or {NA}. NC metrics are from the {cfg.split} split.", ""]
    lines += claims_markdown(claims, run.path, run.path)
    return "\n".join(lines + ["", *thresholds_markdown(cfg), ""])


def _flatten(config: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = repr(value)
    return flat


def differing_keys(runs: list[RunData]) -> list[str]:
    """Config keys whose values differ between the runs (other than the seed and where/how they ran)."""
    flats = [_flatten(run.config) for run in runs]
    keys = sorted({k for flat in flats for k in flat})
    ignored = (SEED_KEY, *RUN_ONLY_KEYS)
    return [k for k in keys if k.split(".")[-1] not in ignored and len({f.get(k) for f in flats}) > 1]


def render_sweep(root: Path, runs: list[RunData], per_run: list[list[Claim]], claims: list[Claim],
                 skipped: list[tuple[Path, str]], cfg: ReportConfig) -> str:
    names = [str(run.path.relative_to(root)) if run.path.is_relative_to(root) else str(run.path) for run in runs]
    facts = [_run_facts(run) for run in runs]
    lines = [f"# dnc report: {root.name or root}", "",
             f"Sweep `{root}`: {len(runs)} analysed runs, taken as seeds. Every number is the mean ± std (ddof 1) over "
             f"the runs a claim applies to; each verdict is judged on the means ({HOLDS}, {FAILS} or {NA}). NC metrics "
             f"are from the {cfg.split} split.", "",
             markdown_table(["run", *facts[0].keys()], [[name, *f.values()] for name, f in zip(names, facts)])]
    differ = differing_keys(runs)
    if differ:
        lines += ["", f"Note: the runs differ in {', '.join(f'`{k}`' for k in differ)}, not only in the seed; the "
                      "means pool them (report each configuration's folder separately to compare them)."]
    if skipped:
        lines += ["", f"Not included ({len(skipped)} run(s) without analysis; run `dnc analyze run_dir={root}`): "
                  + "; ".join(str(p) for p, _ in skipped) + "."]
    lines += [""] + claims_markdown(claims, root, root)
    lines += ["", "## Per run", ""]
    for i, spec in enumerate(CLAIMS):
        keys = spec.headline(cfg)
        body = [[name, runs_claims[i].verdict] + [fmt(runs_claims[i].numbers.get(k, math.nan)) for k in keys]
                for name, runs_claims in zip(names, per_run)]
        header = ["run", "verdict"] + [" ".join(label(p) for p in k.split("|")) for k in keys]
        lines += [f"**{spec.number}. {spec.title}** ({SCOPES[spec.scope][0].lower()})", "",
                  markdown_table(header, body), ""]
    return "\n".join(lines + thresholds_markdown(cfg) + [""])
