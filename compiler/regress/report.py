"""Gate outputs: Markdown for humans, JUnit XML for CI systems, a PNG of both distributions."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from sparsefuse.atomic import write_bytes, write_text
from sparsefuse.compiler.regress.accuracy import MetricCheck, OutputCheck
from sparsefuse.compiler.regress.gate import LatencyVerdict, Verdict
from sparsefuse.compiler.regress.samples import LatencySamples


def _status(v: Verdict) -> str:
    if v.ci is None:
        return "n/a"
    return "REGRESSED" if v.regressed else "improved" if v.improved else "ok"


def statistic_label(verdict: LatencyVerdict) -> str:
    """The statistic the gate used for the total (the table's change column is labelled with it)."""
    if verdict.total.ci is not None:
        return verdict.total.ci.statistic
    return {"paired": "median of paired ratios", "reference-normalized": "ratio of reference-normalised "
            "medians"}.get(verdict.mode, "ratio of medians")


def _note(v: Verdict, label: str) -> str:
    """Added time and share, the statistic where it is not the column's, and why the change's sign
    disagrees with the raw medians (if it does)."""
    ci = v.ci
    parts = [f"{v.delta_ms:+.3f} ms at this change, {100 * v.share_of_baseline:.0f}% of baseline"]
    if ci.statistic != label:
        parts.append(f"statistic: {ci.statistic}")
    if ci.explanation():
        parts.append(ci.explanation())
    return "; ".join(parts)


def _row(v: Verdict, label: str) -> str:
    if v.ci is None:
        return f"| {v.name} | – | – | – | – | n/a | {v.note} |"
    ci = v.ci
    return (
        f"| {v.name} | {ci.baseline_median_ms:.3f} | {ci.candidate_median_ms:.3f} | {ci.slowdown_pct:+.1f}% "
        f"| [{100 * (ci.low - 1):+.1f}%, {100 * (ci.high - 1):+.1f}%] | {_status(v)} | {_note(v, label)} |"
    )


def table_header(verdict: LatencyVerdict) -> list[str]:
    """Column labels name the statistic the verdict uses, beside the raw medians."""
    level = f"{100 * verdict.config.confidence:.0f}%"
    return [
        "| part | baseline median (ms) | candidate median (ms) | "
        f"change ({statistic_label(verdict)}) | {level} CI | verdict | note |",
        "|---|---:|---:|---:|---|---|---|",
    ]


def _detail(v: Verdict) -> str:
    """One self-contained sentence per compared part (JUnit output)."""
    if v.ci is None:
        return f"{v.name}: not compared ({v.note})"
    ci = v.ci
    text = (
        f"{v.name}: medians {ci.baseline_median_ms:.3f} -> {ci.candidate_median_ms:.3f} ms; change "
        f"{ci.slowdown_pct:+.1f}% ({ci.statistic}), {100 * ci.confidence:.0f}% CI "
        f"[{100 * (ci.low - 1):+.1f}%, {100 * (ci.high - 1):+.1f}%]; {_status(v)}"
    )
    return text + (f"; {ci.explanation()}" if ci.explanation() else "")


def _drift_note(verdict: LatencyVerdict) -> list[str]:
    """The machine's own drift, which the histogram of raw totals still contains."""
    ci = verdict.total.ci
    if ci is None or ci.reference_drift is None:
        return []
    drift = 100.0 * (ci.reference_drift - 1.0)
    return [
        "",
        f"The reference kernel ran {abs(drift):.1f}% {'slower' if drift >= 0 else 'faster'} during the "
        "candidate's run than during the baseline's; each run is divided by its reference run, so the "
        "change column can differ from the raw medians (and from regress.png's raw histograms).",
    ]


def _mode_note(mode: str) -> list[str]:
    if mode == "paired":
        return []
    # Measured by bench/regress_noise.py on a shared 2-core machine: with a baseline stored
    # minutes earlier the reference kernel left up to ±5% of drift (a 10% slowdown was caught in
    # 0/10 to 10/10 runs depending on the load); interleaved runs caught it in 10/10 every time.
    return [
        "",
        "Note: the baseline was measured at another time; machine drift that the reference "
        "kernel does not cancel stays in the ratio (a few percent on a shared machine). For full "
        "sensitivity measure the baseline model in the same run (`--baseline-onnx`).",
    ]


def markdown(
    verdict: LatencyVerdict,
    baseline: LatencySamples,
    candidate: LatencySamples,
    outputs: list[OutputCheck] = (),
    metrics: list[MetricCheck] = (),
    title: str = "",
    inputs: str = "",
) -> str:
    cfg = verdict.config
    failed = verdict.regressed or any(not c.passed for c in outputs) or any(not m.passed for m in metrics)
    label = statistic_label(verdict)
    lines = [
        f"# Regression gate{': ' + title if title else ''} — {'FAIL' if failed else 'PASS'}",
        "",
        f"Rule: fail when slower by more than {100 * cfg.threshold:.1f}% with {100 * cfg.confidence:.0f}% "
        f"confidence (lower bound of the bootstrap CI of the median ratio). Mode: {verdict.mode}. "
        f"Clock: {candidate.clock}. Latencies are measured.",
        *_mode_note(verdict.mode),
        *_drift_note(verdict),
        "",
        f"- baseline: {len(baseline.total_ms)} runs, {baseline.device or 'device not recorded'}",
        f"- candidate: {len(candidate.total_ms)} runs, {candidate.device or 'device not recorded'}",
        *([f"- inputs: {inputs}"] if inputs else []),
        "",
        *table_header(verdict),
        _row(verdict.total, label),
        *(_row(m, label) for m in verdict.modules),
    ]
    culprits = verdict.culprits()
    if culprits:
        lines += ["", "Attributed to: " + ", ".join(f"{m.name} ({m.delta_ms:+.3f} ms)" for m in culprits)]
    if outputs:
        lines += [
            "",
            "## Accuracy",
            "",
            "| output | max abs error | allowed | verdict |",
            "|---|---:|---:|---|",
        ]
        lines += [
            f"| {c.name} | {c.max_abs_err:.3g} | {c.allowed:.3g} | {'ok' if c.passed else 'FAIL'} "
            f"{c.message} |"
            for c in outputs
        ]
    if metrics:
        lines += ["", "| metric | value | reference | ± tolerance | verdict |", "|---|---:|---:|---:|---|"]
        lines += [
            f"| {m.name} | {m.value:.4g} | {m.reference:.4g} | {m.tolerance:.4g} | "
            f"{'ok' if m.passed else 'FAIL'} |"
            for m in metrics
        ]
    return "\n".join(lines) + "\n"


def _case(suite: ET.Element, name: str, failure: str | None, detail: str) -> None:
    case = ET.SubElement(suite, "testcase", classname="sparsefuse.regress", name=name, time="0")
    if failure is not None:
        ET.SubElement(case, "failure", message=failure, type="regression").text = detail
    else:
        ET.SubElement(case, "system-out").text = detail


def junit_xml(
    verdict: LatencyVerdict, outputs: list[OutputCheck] = (), metrics: list[MetricCheck] = ()
) -> str:
    """One testcase per module, one for the total, one per accuracy output and metric."""
    suite = ET.Element("testsuite", name="sparsefuse-regress")
    for v in (verdict.total, *verdict.modules):
        detail = _detail(v)
        failure = f"{v.name} slower: {v.ci.slowdown_pct:+.1f}%" if v.regressed and v.ci else None
        _case(suite, f"latency.{v.name}", failure, detail)
    for c in outputs:
        _case(
            suite,
            f"accuracy.{c.name}",
            None if c.passed else f"{c.name}: {c.message}",
            f"max abs error {c.max_abs_err:.3g}, allowed {c.allowed:.3g}",
        )
    for m in metrics:
        _case(
            suite,
            f"metric.{m.name}",
            None if m.passed else f"{m.name} outside ±{m.tolerance}",
            f"{m.value} vs {m.reference} ± {m.tolerance}",
        )
    cases = suite.findall("testcase")
    suite.set("tests", str(len(cases)))
    suite.set("failures", str(sum(c.find("failure") is not None for c in cases)))
    suite.set("errors", "0")
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def distribution_png(baseline: LatencySamples, candidate: LatencySamples, verdict: LatencyVerdict) -> bytes:
    """Histogram of both total distributions plus per-module medians, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_total, ax_mod) = plt.subplots(1, 2, figsize=(11, 4))
    b, c = np.asarray(baseline.total_ms), np.asarray(candidate.total_ms)
    lo, hi = np.percentile(np.concatenate([b, c]), [0.5, 99.5])
    bins = np.linspace(lo, hi if hi > lo else lo + 1e-3, 40)
    ax_total.hist(b, bins=bins, alpha=0.55, label=f"baseline (median {np.median(b):.3f} ms)")
    ax_total.hist(c, bins=bins, alpha=0.55, label=f"candidate (median {np.median(c):.3f} ms)")
    ax_total.set_xlabel(f"total latency, ms ({candidate.clock} clock, measured)")
    ax_total.set_ylabel("runs")
    ax_total.legend(fontsize=8)
    mods = [m for m in verdict.modules if m.ci is not None]
    if mods:
        y = np.arange(len(mods))
        ratios = np.array([m.ci.ratio for m in mods])
        err = np.array([[m.ci.ratio - m.ci.low for m in mods], [m.ci.high - m.ci.ratio for m in mods]])
        colors = ["tab:red" if m.regressed else "tab:gray" for m in mods]
        ax_mod.barh(y, ratios - 1.0, xerr=err, color=colors, left=1.0)
        ax_mod.set_yticks(y, [m.name for m in mods])
        ax_mod.axvline(1.0 + verdict.config.threshold, color="tab:red", ls="--", lw=1,
                       label=f"threshold +{100 * verdict.config.threshold:g}%")
    ax_mod.axvline(1.0, color="black", lw=1, label="no change")
    ax_mod.legend(fontsize=8, loc="lower right")
    ax_mod.set_xlabel(f"{statistic_label(verdict)}, candidate/baseline (CI)")
    total = verdict.total.ci
    if total is not None:
        title = (
            f"total {total.slowdown_pct:+.1f}% ({total.statistic}) [{100 * (total.low - 1):+.1f}%, "
            f"{100 * (total.high - 1):+.1f}%] — {'REGRESSED' if verdict.regressed else 'ok'}"
        )
        # The histograms are raw: say why the title's sign can disagree with them.
        fig.suptitle(title + (f"\n{total.explanation()}" if total.explanation() else ""), fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def write_reports(out_dir: str | Path, md: str, junit: str, png: bytes | None) -> dict[str, Path]:
    out_dir = Path(out_dir)
    paths = {
        "markdown": write_text(out_dir / "regress.md", md),
        "junit": write_text(out_dir / "regress.junit.xml", junit),
    }
    if png is not None:
        paths["png"] = write_bytes(out_dir / "regress.png", png)
    return paths
