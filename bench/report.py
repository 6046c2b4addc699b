"""Write ``docs/benchmarks.md``, ``docs/benchmarks.json`` and one PNG bar chart per suite."""

from __future__ import annotations

import json
import platform
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.core import Result, SuiteResult, Target


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"


def _plot_lines(suite: SuiteResult, path: Path) -> None:
    kinds = list(dict.fromkeys(r.workload.split(", ")[0] for r in suite.results))
    subjects = list(dict.fromkeys(r.subject for r in suite.results))
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 3.8), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        xs = list(dict.fromkeys(r.workload.split(", ")[1] for r in suite.results
                                if r.workload.startswith(kind + ", ")))  # fmt: skip
        for i, subject in enumerate(subjects):
            ys = [suite.value(f"{kind}, {x}", subject) for x in xs]
            ax.plot(xs, [y or float("nan") for y in ys], marker="o", color=f"C{i}", label=subject)
        ax.set_yscale("log")
        ax.set_title(kind, fontsize=10)
        ax.set_xlabel("payload", fontsize=8)
        ax.set_ylabel(next(r.unit for r in suite.results if r.workload.startswith(kind)))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(suite.title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot(suite: SuiteResult, path: Path) -> None:
    if suite.lines:
        _plot_lines(suite, path)
        return
    workloads = list(dict.fromkeys(r.workload for r in suite.results))
    subjects = list(dict.fromkeys(r.subject for r in suite.results))
    fig, axes = plt.subplots(1, len(workloads), figsize=(4 * len(workloads), 3.6), squeeze=False)
    for ax, workload in zip(axes[0], workloads, strict=True):
        values = [suite.value(workload, s) or 0.0 for s in subjects]
        ax.bar(range(len(subjects)), values, color=[f"C{i}" for i in range(len(subjects))])
        ax.set_xticks(range(len(subjects)), subjects, rotation=30, ha="right", fontsize=8)
        unit = next(r.unit for r in suite.results if r.workload == workload)
        ax.set_title(workload, fontsize=10)
        ax.set_ylabel(unit, fontsize=8)
    fig.suptitle(suite.title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _section(suite: SuiteResult, plot: str, when: str) -> list[str]:
    lines = [f"## {suite.title}", "", f"Run of {when}.", ""]
    if suite.notes:
        lines += [suite.notes, ""]
    workloads = list(dict.fromkeys(r.workload for r in suite.results))
    subjects = list(dict.fromkeys(r.subject for r in suite.results))
    lines.append("| workload | " + " | ".join(subjects) + " |")
    lines.append("|---|" + "---:|" * len(subjects))
    for workload in workloads:
        unit = next(r.unit for r in suite.results if r.workload == workload)
        cells = [suite.value(workload, s) for s in subjects]
        row = " | ".join("—" if v is None else _rate(v) for v in cells)
        lines.append(f"| {workload} ({unit}) | {row} |")
    if suite.targets:
        lines += ["", "| target | ratio | needed | met |", "|---|---:|---:|:---:|"]
        for t in suite.targets:
            ours, base = suite.value(t.workload, t.subject), suite.value(t.workload, t.baseline)
            if ours is None or not base:
                lines.append(
                    f"| {t.subject} / {t.baseline}, {t.workload} | n/a | {t.min_ratio:g}x | — |"
                )
                continue
            ratio = ours / base
            met = "yes" if ratio >= t.min_ratio else "**no**"
            lines.append(
                f"| {t.subject} / {t.baseline}, {t.workload} | {ratio:.2f}x | "
                f"{t.min_ratio:g}x | {met} |"
            )
    lines += ["", f"![{suite.title}]({plot})", ""]
    return lines


def _kept(docs: Path, ran: list[SuiteResult]) -> list[tuple[SuiteResult, str]]:
    """The suites of the last report that this run did not run (``--only``), with their date:
    each suite's ratios are same-run within it, so a partial run updates its own sections."""
    try:
        last = json.loads((docs / "benchmarks.json").read_text())
    except (OSError, ValueError):
        return []
    names = {suite.name for suite in ran}
    kept: list[tuple[SuiteResult, str]] = []
    for data in last.get("suites", []):
        if data["name"] in names:
            continue
        data["results"] = [Result(**r) for r in data["results"]]
        data["targets"] = [Target(**t) for t in data["targets"]]
        stamp = data.pop("generated", None) or last.get("generated", "?")
        kept.append((SuiteResult(**data), stamp))
    return kept


def write(suites: list[SuiteResult], docs: Path, quick: bool) -> Path:
    (docs / "bench").mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    dated = [(suite, stamp) for suite in suites] + _kept(docs, suites)
    dated.sort(key=lambda pair: pair[0].name)
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `make bench` ({platform.machine()}, Python {platform.python_version()}"
        f"{', quick run' if quick else ''}); each section gives the run it comes from (a run "
        "with `--only` updates its own sections). Rates, higher is better. Every peer runs in "
        "the same run as ours, so compare the ratios: the machine is shared and absolute "
        "numbers drift between runs.",
        "",
    ]
    for suite, when in dated:
        plot = f"bench/{suite.name}.png"
        if when == stamp:
            _plot(suite, docs / plot)
        lines += _section(suite, plot, when)
    path = docs / "benchmarks.md"
    path.write_text("\n".join(lines))
    (docs / "benchmarks.json").write_text(
        json.dumps(
            {
                "generated": stamp,
                "quick": quick,
                "suites": [asdict(s) | {"generated": when} for s, when in dated],
            },
            indent=2,
        )
    )
    return path
