"""Rendering the evaluation: PNG figures, a Markdown report and a self-contained HTML page."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
import numpy as np

from bmlt_assets.core.tables import table_lines

HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "mcc", "log_loss", "brier", "ece", "directional_accuracy")
PNL = ("trades", "hit_rate", "mean_return_bps", "sharpe_annualized", "max_drawdown_bps", "turnover_per_day")


def _png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def figures(entry: dict[str, Any], horizon_s: int) -> dict[str, bytes]:
    """PNG bytes by file name for one horizon."""
    out = {}
    counts = np.asarray(entry["confusion"], dtype=np.float64)
    normalized = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    image = ax.imshow(normalized, cmap="Blues", vmin=0, vmax=max(normalized.max(), 1e-9))
    ax.set(xlabel="predicted class", ylabel="realized class", title=f"Confusion (row-normalized), {horizon_s}s")
    fig.colorbar(image, ax=ax)
    out[f"confusion_{horizon_s}s.png"] = _png(fig)

    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    for c, curve in enumerate(entry["calibration"]["reliability"]):
        ax.plot(curve["predicted"], curve["observed"], marker=".", linewidth=1, label=f"class {c}")
    ax.set(
        xlabel="predicted probability", ylabel="observed frequency", title=f"Reliability (one-vs-rest), {horizon_s}s"
    )
    ax.legend(fontsize=6, ncol=2)
    out[f"reliability_{horizon_s}s.png"] = _png(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, curve in entry["equity"].items():
        ax.plot(np.arange(1, len(curve["equity_bps"]) + 1), curve["equity_bps"], label=name, linewidth=1)
    ax.axhline(0, color="grey", linewidth=0.5)
    ax.set(xlabel="trade", ylabel="cumulative net return (bps)", title=f"Equity after costs, {horizon_s}s")
    ax.legend(fontsize=7)
    out[f"equity_{horizon_s}s.png"] = _png(fig)

    fig, ax = plt.subplots(figsize=(4.5, 3))
    classes = np.arange(len(entry["class_distribution"]["realized"]))
    ax.bar(classes - 0.2, entry["class_distribution"]["realized"], width=0.4, label="realized")
    ax.bar(classes + 0.2, entry["class_distribution"]["predicted"], width=0.4, label="predicted (argmax)")
    ax.set(xlabel="class", ylabel="samples", title=f"Class distribution, {horizon_s}s")
    ax.legend(fontsize=7)
    out[f"classes_{horizon_s}s.png"] = _png(fig)
    return out


def _walk_forward_lines(walk_forward: list[dict[str, Any]], horizons_s: list[int]) -> list[str]:
    """Each fold's model on its own test block, oldest first, then the mean and spread."""
    if not walk_forward:
        return []
    header = ["fold", "test from", "test to", "samples"]
    for h in horizons_s:
        header += [f"accuracy {h}s", f"log loss {h}s", f"prior log loss {h}s"] + (
            [f"LL capture {h}s"] if "capture" in walk_forward[0]["horizons"][0] else []
        )
    rows = []
    for fold in walk_forward:
        row = [
            fold["fold"],
            str(np.datetime64(fold["test_first_ns"], "ns").astype("datetime64[s]")),
            str(np.datetime64(fold["test_last_ns"], "ns").astype("datetime64[s]")),
            fold["samples"],
        ]
        for h in fold["horizons"]:
            row += [h["model"]["accuracy"], h["model"]["log_loss"], h["prior"]["log_loss"]] + (
                [h["capture"]["logloss_capture"]] if "capture" in h else []
            )
        rows.append(row)
    numeric = np.array([r[4:] for r in rows], dtype=np.float64)
    rows.append(["mean", "", "", ""] + [float(v) for v in numeric.mean(axis=0)])
    rows.append(["std", "", "", ""] + [float(v) for v in numeric.std(axis=0)])
    return ["## Walk-forward: performance over time", "", *table_lines(header, rows), ""]


def markdown(
    report: list[dict[str, Any]],
    horizons_s: list[int],
    title: str,
    images: dict[str, str] | None = None,
    walk_forward: list[dict[str, Any]] | None = None,
) -> str:
    """The report as Markdown; ``images`` maps figure names to URLs (files or data URIs)."""
    lines = [f"# {title}", "", *_walk_forward_lines(walk_forward or [], horizons_s)]
    for entry, horizon in zip(report, horizons_s):
        lines += [f"## Horizon {horizon}s ({entry['samples']} test samples)", ""]
        if entry.get("leak_suspected"):
            lines += [
                '<p style="color:red"><b>PROBABLE LEAK: the model beats the Bayes-optimal oracle '
                "beyond its confidence interval.</b></p>",
                "",
            ]
        rows = [[name, *(m[k] for k in HEADLINE)] for name, m in entry["metrics"].items()]
        lines += table_lines(["predictor", *HEADLINE], rows) + [""]
        ci = [
            [
                name,
                f"{v['accuracy']['low']:.4f} .. {v['accuracy']['high']:.4f}",
                f"{v['log_loss']['low']:.4f} .. {v['log_loss']['high']:.4f}",
            ]
            for name, v in entry["intervals"].items()
        ]
        lines += ["95% block-bootstrap intervals (stationary bootstrap, Politis-White block length):", ""]
        lines += table_lines(["predictor", "accuracy CI", "log loss CI"], ci) + [""]
        diffs = [
            [name, d["mean"], f"{d['low']:.4f} .. {d['high']:.4f}"] for name, d in entry["log_loss_differences"].items()
        ]
        lines += table_lines(["log-loss difference", "mean", "95% CI"], diffs) + [""]
        if "capture" in entry:
            c = entry["capture"]
            lines += [
                f"Signal capture: accuracy {c['accuracy_capture']:.3f}, log loss {c['logloss_capture']:.3f} "
                "(1 = oracle, 0 = class prior).",
                "",
            ]
        verdict = "beats" if entry["beats_baselines"] else "does NOT beat"
        lines += [f"The model {verdict} every baseline on log loss (95% CI of the difference below 0).", ""]
        cal = entry["calibration"]
        lines += [
            f"Calibration: temperature {cal['temperature']:.3f} fitted on validation; top-label ECE ({cal['bins']}) "
            f"{cal['before']['ece']:.4f} -> {cal['after']['ece']:.4f}, "
            f"log loss {cal['before']['log_loss']:.4f} -> {cal['after']['log_loss']:.4f}.",
            "",
        ]
        lines += [
            "Simulated P&L after fees and half-spread "
            "(Sharpe = mean/std of per-trade net log returns x sqrt(trades per year), 24/7):",
            "",
        ]
        lines += table_lines(
            ["predictor", *PNL], [[name, *(p[k] for k in PNL)] for name, p in entry["pnl"].items()]
        ) + [""]
        lines += table_lines(
            ["volatility regime", "samples", "accuracy", "log loss"],
            [[r, v["samples"], v["accuracy"], v["log_loss"]] for r, v in entry["regimes"].items()],
        ) + [""]
        counts = np.asarray(entry["confusion"])
        lines += [
            "Confusion matrix of the model (rows: realized class, columns: predicted; counts, then row-normalized):",
            "",
        ]
        n = len(counts)
        lines += table_lines(
            ["", *(f"p{j}" for j in range(n))], [[f"r{j}", *row] for j, row in enumerate(counts.tolist())]
        ) + [""]
        shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        lines += table_lines(
            ["", *(f"p{j}" for j in range(n))], [[f"r{j}", *(float(v) for v in row)] for j, row in enumerate(shares)]
        ) + [""]
        for name in ("confusion", "reliability", "equity", "classes"):
            key = f"{name}_{horizon}s.png"
            if images and key in images:
                lines += [f"![{name} {horizon}s]({images[key]})", ""]
    return "\n".join(lines)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def html_page(markdown_text: str, title: str) -> str:
    """A self-contained page: the Markdown's tables and images rendered without extra packages."""
    body: list[str] = []
    table: list[str] = []

    def flush() -> None:
        if table:
            header, *rows = [r for r in table if not set(r.replace("|", "").strip()) <= {"-"}]
            cells = lambda r: [c.strip() for c in r.strip().strip("|").split("|")]  # noqa: E731
            body.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cells(header)) + "</tr>")
            body.extend("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells(r)) + "</tr>" for r in rows)
            body.append("</table>")
            table.clear()

    for line in markdown_text.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("!["):
            alt, src = line[2:].split("](", 1)
            body.append(f'<img alt="{html.escape(alt)}" src="{src[:-1]}">')
        elif line.startswith("<p style"):
            body.append(line)  # our own leak banner
        elif line:
            body.append(f"<p>{html.escape(line)}</p>")
    flush()
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:2px 6px;font-size:12px}img{margin:4px}"
    )
    head = f"<meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style>"
    return f"<!DOCTYPE html><html><head>{head}</head><body>{''.join(body)}</body></html>"


def write_report(
    folder: Path,
    report: list[dict[str, Any]],
    horizons_s: list[int],
    title: str,
    walk_forward: list[dict[str, Any]] | None = None,
) -> tuple[str, dict[str, bytes]]:
    """Write report.md (figures by file name), report.html (figures embedded) and the PNGs.

    Returns the Markdown with embedded figures (for Dagster metadata) and the PNGs."""
    pngs = {name: png for entry, h in zip(report, horizons_s) for name, png in figures(entry, h).items()}
    for name, png in pngs.items():
        (folder / name).write_bytes(png)
    (folder / "report.md").write_text(markdown(report, horizons_s, title, {name: name for name in pngs}, walk_forward))
    embedded = markdown(report, horizons_s, title, {name: data_uri(png) for name, png in pngs.items()}, walk_forward)
    (folder / "report.html").write_text(html_page(embedded, title))
    return embedded, pngs
