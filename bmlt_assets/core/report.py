"""Rendering the evaluation: PNG figures, a Markdown report and a self-contained HTML page."""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np

from bmlt_assets.core.tables import table_lines


def _png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


# Every column names its unit; "share" is a fraction between 0 and 1.
METRIC_COLUMNS = {
    "accuracy": "accuracy (share)",
    "balanced_accuracy": "balanced accuracy (share)",
    "macro_f1": "macro-F1 (0 to 1)",
    "mcc": "MCC (-1 to 1)",
    "log_loss": "log loss (nats)",
    "brier": "Brier score (0 to 2)",
    "ece": "top-label ECE (share)",
    "directional_accuracy": "directional accuracy (share of samples that moved)",
}
PNL_COLUMNS = {
    "trades": "trades (count)",
    "hit_rate": "hit rate (share of trades)",
    "mean_return_bps": "mean net return (bps per trade)",
    "total_return_bps": "total net return (bps)",
    "costs_bps": "costs paid (bps, total)",
    "sharpe_annualized": "Sharpe (annualized, 24/7; ratio)",
    "max_drawdown_bps": "max drawdown (bps)",
    "turnover_per_day": "turnover (position changes per day)",
}
HEADLINE = tuple(METRIC_COLUMNS)
PNL = tuple(PNL_COLUMNS)
SHORT_TEST_DAYS = 7.0  # a test window shorter than this gets a warning
NS_PER_DAY = 86_400 * 10**9


def _utc(ns: int) -> str:
    return str(np.datetime64(int(ns), "ns").astype("datetime64[s]")).replace("T", " ")


def _ci(d: dict[str, float]) -> str:
    return f"[{d['low']:.4f}, {d['high']:.4f}]"


def _h(horizon_s: float) -> str:
    return f"{horizon_s:g} s"


def class_labels(classes: dict[str, Any], sigma: bool) -> list[str]:
    """Each class as the half-open return range over the horizon that it holds: in σ units
    (``sigma``, volatility-scaled edges only) or in bps (the median edges over the test part)."""
    if sigma:
        edges, fmt = classes["edges_sigma"], "{:g}σ"
    else:
        edges, fmt = classes["edges_bps"], "{:.1f}"
    cells = [fmt.format(e) for e in edges]
    unit = "" if sigma else " bps"
    return [f"< {cells[0]}{unit}", *(f"[{a}, {b}){unit}" for a, b in zip(cells, cells[1:])), f"≥ {cells[-1]}{unit}"]


def _short_labels(classes: dict[str, Any]) -> list[str]:
    """Axis labels for the figures: σ ranges where volatility-scaled, else bps ranges."""
    return [label.replace(" bps", "") for label in class_labels(classes, "edges_sigma" in classes)]


def figures(entry: dict[str, Any], horizon_s: int) -> dict[str, bytes]:
    """PNG bytes by file name for one horizon."""
    out = {}
    labels = _short_labels(entry["classes"])
    unit = "σ of the horizon return" if "edges_sigma" in entry["classes"] else "bps"
    counts = np.asarray(entry["confusion"], dtype=np.float64)
    normalized = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    image = ax.imshow(normalized, cmap="Blues", vmin=0, vmax=max(normalized.max(), 1e-9))
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set(
        xlabel=f"predicted class (return range, {unit})",
        ylabel=f"realized class (return range, {unit})",
        title=f"Confusion, share of each realized class, {horizon_s} s",
    )
    fig.colorbar(image, ax=ax, label="share of the row")
    out[f"confusion_{horizon_s}s.png"] = _png(fig)

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    for c, curve in enumerate(entry["calibration"]["reliability"]):
        ax.plot(curve["predicted"], curve["observed"], marker=".", linewidth=1, label=labels[c])
    ax.set(
        xlabel="predicted probability of the class",
        ylabel="observed frequency of the class",
        title=f"Reliability of the model (one class vs rest), {horizon_s} s",
    )
    ax.legend(fontsize=6, ncol=2, title=unit, title_fontsize=6)
    out[f"reliability_{horizon_s}s.png"] = _png(fig)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    period = entry["test_period"]
    for name, curve in entry["equity"].items():
        # From 0 at the start of the test window, a step at each trade's entry, flat to its end.
        times = np.array([period["first_ns"], *curve["timestamps_ns"], period["last_ns"]], dtype="datetime64[ns]")
        equity = [0.0, *curve["equity_bps"]]
        ax.step(times, [*equity, equity[-1]], where="post", label=f"{name} ({len(curve['equity_bps'])} trades)")
    ax.axhline(0, color="grey", linewidth=0.5)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M"))
    fig.autofmt_xdate()
    ax.set(
        xlabel="time (UTC), trade entry",
        ylabel="cumulative net return (bps)",
        title=f"Equity after fees and spread, {horizon_s} s",
    )
    ax.legend(fontsize=7)
    out[f"equity_{horizon_s}s.png"] = _png(fig)

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    classes = np.arange(len(entry["class_distribution"]["realized"]))
    ax.bar(classes - 0.2, entry["class_distribution"]["realized"], width=0.4, label="realized")
    ax.bar(classes + 0.2, entry["class_distribution"]["predicted"], width=0.4, label="predicted (argmax)")
    ax.set_xticks(classes, labels, rotation=60, ha="right", fontsize=7)
    ax.set(xlabel=f"class (return range, {unit})", ylabel="test samples (count)", title=f"Classes, {horizon_s} s")
    ax.legend(fontsize=7)
    out[f"classes_{horizon_s}s.png"] = _png(fig)
    return out


def _walk_forward_lines(walk_forward: list[dict[str, Any]], horizons_s: list[int]) -> list[str]:
    """Each fold's model on its own test block, oldest first, then the mean and spread."""
    if not walk_forward:
        return []
    header = ["fold", "test from (UTC)", "test to (UTC)", "samples (count)"]
    for h in horizons_s:
        header += [f"accuracy {h} s (share)", f"log loss {h} s (nats)", f"prior log loss {h} s (nats)"] + (
            [f"log-loss capture {h} s (0 = prior, 1 = oracle)"] if "capture" in walk_forward[0]["horizons"][0] else []
        )
    rows = []
    for fold in walk_forward:
        row = [fold["fold"], _utc(fold["test_first_ns"]), _utc(fold["test_last_ns"]), fold["samples"]]
        for h in fold["horizons"]:
            row += [h["model"]["accuracy"], h["model"]["log_loss"], h["prior"]["log_loss"]] + (
                [h["capture"]["logloss_capture"]] if "capture" in h else []
            )
        rows.append(row)
    numeric = np.array([r[4:] for r in rows], dtype=np.float64)
    rows.append(["mean", "", "", ""] + [float(v) for v in numeric.mean(axis=0)])
    rows.append(["std", "", "", ""] + [float(v) for v in numeric.std(axis=0)])
    return ["## Walk-forward: performance over time", "", *table_lines(header, rows), ""]


def held_out_days(report: list[dict[str, Any]]) -> float:
    period = report[0]["test_period"]
    return (period["last_ns"] - period["first_ns"]) / NS_PER_DAY


def report_warnings(report: list[dict[str, Any]], horizons_s: list[int]) -> list[str]:
    """One line per thing that should stop a reader from taking the numbers at face value."""
    lines = []
    if report and held_out_days(report) < SHORT_TEST_DAYS:
        period = report[0]["test_period"]
        lines.append(
            f"The test window is short: {held_out_days(report):.2f} days ({_utc(period['first_ns'])} to "
            f"{_utc(period['last_ns'])} UTC), under {SHORT_TEST_DAYS:g} days: intervals and P&L are noisy."
        )
    for entry, horizon in zip(report, horizons_s):
        if entry.get("leak_suspected"):
            lines.append(
                f"{_h(horizon)}: PROBABLE LEAK: the model beats the Bayes-optimal oracle beyond its confidence "
                "interval."
            )
        cal = entry["calibration"]
        if cal["after"]["ece"] > cal["before"]["ece"]:
            lines.append(
                f"{_h(horizon)}: the validation-fitted calibration made it worse on the test part: top-label ECE rose "
                f"from {cal['before']['ece']:.4f} (uncalibrated) to {cal['after']['ece']:.4f} (calibrated); "
                "lower is better."
            )
        for name, d in entry["log_loss_differences"].items():
            other = name.removeprefix("model_minus_")
            if other != "oracle" and d["low"] <= 0 <= d["high"]:
                lines.append(
                    f"{_h(horizon)}: the model ties {other}: the 95% CI of the log-loss difference "
                    f"(model minus {other}) {_ci(d)} includes 0."
                )
    return lines


def comparison_sentence(differences: dict[str, dict[str, float]]) -> str:
    """Which comparators the model beats, ties and loses to on log loss, each with its interval."""
    beats, ties, loses = [], [], []
    for name, d in differences.items():
        other = name.removeprefix("model_minus_")
        if d["high"] < 0:
            beats.append(f"{other} (CI {_ci(d)} entirely below 0)")
        elif d["low"] > 0:
            loses.append(f"{other} (CI {_ci(d)} entirely above 0)")
        else:
            ties.append(f"{other} (CI {_ci(d)} includes 0)")

    def listed(names: list[str]) -> str:
        return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]

    parts = []
    if beats:
        parts.append("beats " + listed(beats))
    if ties:
        parts.append("does not beat " + listed(ties) + ": a tie")
    if loses:
        parts.append("is worse than " + listed(loses))
    return (
        "Log loss, model minus each comparator (nats, 95% block-bootstrap CI; below 0 means the model is better). "
        f"The model {'; it '.join(parts)}."
    )


def _costs_line(costs: dict[str, Any]) -> str:
    return (
        f"P&L after costs: a fee of {costs['fee_bps_per_side']:g} bps per side plus half the quoted spread per side "
        f"(median quoted spread on the test part {costs['median_spread_bps']:.2f} bps); long (short) when the "
        f"probability mass above (below) zero exceeds {costs['pnl_threshold']:g}, held for the horizon, never "
        "overlapping. Sharpe = mean / standard deviation of the per-trade net log returns × √(trades per year), "
        "trading 24/7."
    )


def _fee_sensitivity(pnl_by_fee: list[dict[str, Any]]) -> list[str]:
    """The model's P&L at no fee, the assumed fee and twice it: how much of the edge the fee decides."""
    header = ["fee (bps per side)", PNL_COLUMNS["trades"], PNL_COLUMNS["total_return_bps"]]
    header += [PNL_COLUMNS["mean_return_bps"], PNL_COLUMNS["sharpe_annualized"]]
    rows = [
        [f"{p['fee_bps_per_side']:g}", p["trades"], p["total_return_bps"], p["mean_return_bps"], p["sharpe_annualized"]]
        for p in pnl_by_fee
    ]
    return ["The model's P&L at no fee, at the assumed fee and at twice it:", "", *table_lines(header, rows), ""]


def _front_matter_lines(
    front: dict[str, Any], report: list[dict[str, Any]], horizons_s: list[int], title: str
) -> list[str]:
    def given(key: str) -> str:
        value = front.get(key)
        return "not recorded" if value in (None, "", []) else str(value)

    period = report[0]["test_period"] if report else None
    aliases = front.get("aliases")
    run = given("run_id")
    if front.get("run_url"):
        run = f"[{run}]({front['run_url']})"
    rows = [
        ["model", given("model")],
        ["version", given("version")],
        ["aliases", ", ".join(f"@{a}" for a in aliases) if aliases else "none"],
        ["MLflow run", run],
        ["config", f"{given('config_name')} ({given('config_path')})"],
        ["commit", given("commit")],
        ["data range", given("data_range")],
        [
            "test period (UTC)",
            f"{_utc(period['first_ns'])} to {_utc(period['last_ns'])} ({held_out_days(report):.2f} days, "
            f"{report[0]['samples']} samples)"
            if period
            else "not recorded",
        ],
        ["horizons", ", ".join(_h(h) for h in horizons_s)],
    ]
    if report:
        costs = report[0]["costs"]
        rows.append(
            [
                "costs",
                f"fee {costs['fee_bps_per_side']:g} bps per side + half the quoted spread per side "
                f"(median spread {costs['median_spread_bps']:.2f} bps)",
            ]
        )
    lines = [f"# {title}", "", *table_lines(["field", "value"], rows), ""]
    verdict = front.get("verdict")
    if verdict is None:
        lines += ["**Verdict: not recorded.**", ""]
    else:
        outcome = "PROMOTED to @champion" if verdict["promote"] else "NOT PROMOTED"
        note = f" ({verdict['note']})" if verdict.get("note") else ""
        lines += [f"**Verdict: {outcome}**{note}. Reasons:", "", *(f"- {r}" for r in verdict["reasons"]), ""]
    return lines


def markdown(
    report: list[dict[str, Any]],
    horizons_s: list[int],
    title: str,
    images: dict[str, str] | None = None,
    walk_forward: list[dict[str, Any]] | None = None,
    front_matter: dict[str, Any] | None = None,
) -> str:
    """The report as Markdown; ``images`` maps figure names to URLs (files or data URIs).

    In this order: the front matter and the warnings, a headline table per horizon, the figures,
    then the detail tables."""
    lines = _front_matter_lines(front_matter or {}, report, horizons_s, title)
    warnings = report_warnings(report, horizons_s)
    if warnings:
        lines += ["## Warnings", ""] + [line for w in warnings for line in (f"> **WARNING** {w}", "")]

    lines += ["## Headline", ""]
    for entry, horizon in zip(report, horizons_s):
        lines += [f"### {_h(horizon)} horizon ({entry['samples']} test samples)", ""]
        if entry.get("leak_suspected"):
            lines += [
                '<p style="color:red"><b>PROBABLE LEAK: the model beats the Bayes-optimal oracle '
                "beyond its confidence interval.</b></p>",
                "",
            ]
        capture = entry.get("capture_by_predictor")
        header = ["predictor", "log loss (nats) [95% CI]", "accuracy (share) [95% CI]"]
        header += ["log-loss capture (0 = prior, 1 = oracle)"] if capture else []
        header += [PNL_COLUMNS["trades"], PNL_COLUMNS["total_return_bps"], PNL_COLUMNS["mean_return_bps"]]
        header += [PNL_COLUMNS["sharpe_annualized"]]
        rows = []
        for name, m in entry["metrics"].items():
            ci, pnl = entry["intervals"][name], entry["pnl"][name]
            row = [name, f"{m['log_loss']:.4f} {_ci(ci['log_loss'])}", f"{m['accuracy']:.4f} {_ci(ci['accuracy'])}"]
            row += [capture[name]["logloss_capture"]] if capture else []
            row += [pnl["trades"], pnl["total_return_bps"], pnl["mean_return_bps"], pnl["sharpe_annualized"]]
            rows.append(row)
        lines += [_costs_line(entry["costs"]), "", *table_lines(header, rows), ""]
        if "pnl_by_fee" in entry:
            lines += _fee_sensitivity(entry["pnl_by_fee"])
        lines += [comparison_sentence(entry["log_loss_differences"]), ""]

    lines += ["## Figures", ""]
    for horizon in horizons_s:
        lines += [f"### {_h(horizon)} horizon", ""]
        for name in ("equity", "reliability", "confusion", "classes"):
            key = f"{name}_{horizon}s.png"
            if images and key in images:
                lines += [f"![{name} {horizon}s]({images[key]})", ""]

    lines += ["## Details", ""]
    for entry, horizon in zip(report, horizons_s):
        lines += [f"### {_h(horizon)} horizon: details", "", *_detail_lines(entry, horizon)]
    lines += _walk_forward_lines(walk_forward or [], horizons_s)
    return "\n".join(lines)


def _detail_lines(entry: dict[str, Any], horizon: int) -> list[str]:
    classes = entry["classes"]
    sigma = "edges_sigma" in classes
    bps_labels = class_labels(classes, sigma=False)
    names = class_labels(classes, sigma) if sigma else bps_labels
    distribution = entry["class_distribution"]
    if sigma:
        explained = (
            f"volatility-scaled edges: σ is the trailing per-step volatility at t times √(horizon steps); its median "
            f"over the test part is {classes['sigma_bps_median']:.2f} bps, at which the σ edges read as the bps column"
        )
    elif classes["kind"] == "quantile":
        explained = "quantile edges fitted on the training part"
    else:
        explained = f"{classes['kind']} edges" if classes["kind"] != "unknown" else "edges as the dataset made them"
    header = ["class", *(["return range (σ)"] if sigma else []), "return range (bps, median over the test part)"]
    rows = [
        [c, *([names[c]] if sigma else []), bps_labels[c], distribution["realized"][c], distribution["predicted"][c]]
        for c in range(len(bps_labels))
    ]
    lines = [f"Classes: the log return over {_h(horizon)}, in half-open ranges [low, high) ({explained}).", ""]
    lines += table_lines([*header, "realized (samples)", "predicted, argmax (samples)"], rows) + [""]

    lines += ["Classification on the test part:", ""]
    rows = [[name, *(m[k] for k in METRIC_COLUMNS)] for name, m in entry["metrics"].items()]
    lines += table_lines(["predictor", *METRIC_COLUMNS.values()], rows) + [""]
    diffs = []
    for name, d in entry["log_loss_differences"].items():
        reading = "model better" if d["high"] < 0 else "model worse" if d["low"] > 0 else "tie (CI includes 0)"
        diffs.append([name.removeprefix("model_minus_"), d["mean"], _ci(d), reading])
    lines += ["Log-loss difference, model minus comparator (stationary block bootstrap, Politis-White block):", ""]
    lines += table_lines(["comparator", "mean (nats)", "95% CI (nats)", "reading"], diffs) + [""]
    if "capture" in entry:
        c = entry["capture"]
        lines += [
            f"Signal capture of the model: accuracy {c['accuracy_capture']:.3f}, log loss {c['logloss_capture']:.3f} "
            "(0 = class prior, 1 = oracle).",
            "",
        ]
    cal = entry["calibration"]
    lines += [
        f"Calibration: temperature {cal['temperature']:.3f} and a class bias from {min(cal['bias']):+.3f} to "
        f"{max(cal['bias']):+.3f} (softmax(logits / T + b)), fitted on validation. On the test part, top-label ECE "
        f"({cal['bins']}) {cal['before']['ece']:.4f} before, {cal['after']['ece']:.4f} after; log loss "
        f"{cal['before']['log_loss']:.4f} nats before, {cal['after']['log_loss']:.4f} nats after (lower is better).",
        "",
    ]
    lines += [
        _costs_line(entry["costs"]),
        "Sharpe = mean / std of per-trade net log returns × √(trades per year), 24/7; a position change is an "
        "entry or an exit (two per trade).",
        "",
    ]
    lines += table_lines(
        ["predictor", *PNL_COLUMNS.values()], [[name, *(p[k] for k in PNL_COLUMNS)] for name, p in entry["pnl"].items()]
    ) + [""]
    lines += table_lines(
        ["volatility regime (train terciles)", "samples (count)", "accuracy (share)", "log loss (nats)"],
        [[r, v["samples"], v["accuracy"], v["log_loss"]] for r, v in entry["regimes"].items()],
    ) + [""]
    counts = np.asarray(entry["confusion"])
    lines += ["Confusion matrix of the model, rows realized class, columns predicted class (samples):", ""]
    lines += table_lines(["realized \\ predicted", *names], [[names[j], *row] for j, row in enumerate(counts.tolist())])
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    lines += ["", "The same, as the share of each realized class (rows sum to 1):", ""]
    lines += table_lines(
        ["realized \\ predicted", *names], [[names[j], *(float(v) for v in row)] for j, row in enumerate(shares)]
    ) + [""]
    return lines


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _inline(text: str) -> str:
    """Escaped text with the Markdown this report uses inline: **bold** and [text](url)."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', out)


def html_page(markdown_text: str, title: str) -> str:
    """A self-contained page: the Markdown's tables and images rendered without extra packages."""
    body: list[str] = []
    table: list[str] = []
    items: list[str] = []

    def flush() -> None:
        if table:
            header, *rows = [r for r in table if not set(r.replace("|", "").strip()) <= {"-"}]
            cells = lambda r: [c.strip() for c in r.strip().strip("|").split("|")]  # noqa: E731
            body.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in cells(header)) + "</tr>")
            body.extend("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in cells(r)) + "</tr>" for r in rows)
            body.append("</table>")
            table.clear()
        if items:
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for line in markdown_text.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        if line.startswith("- "):
            items.append(line[2:])
            continue
        flush()
        if line.startswith("### "):
            body.append(f"<h3>{_inline(line[4:])}</h3>")
        elif line.startswith("## "):
            body.append(f"<h2>{_inline(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{_inline(line[2:])}</h1>")
        elif line.startswith("> "):
            body.append(f'<p class="warning">{_inline(line[2:])}</p>')
        elif line.startswith("!["):
            alt, src = line[2:].split("](", 1)
            body.append(f'<img alt="{html.escape(alt)}" src="{src[:-1]}">')
        elif line.startswith("<p style"):
            body.append(line)  # our own leak banner
        elif line:
            body.append(f"<p>{_inline(line)}</p>")
    flush()
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:2px 6px;font-size:12px}img{margin:4px;vertical-align:top}"
        "p.warning{background:#fff3cd;border-left:4px solid #d9822b;padding:4px 8px;margin:4px 0}"
    )
    head = f"<meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style>"
    return f"<!DOCTYPE html><html><head>{head}</head><body>{''.join(body)}</body></html>"


def write_report(
    folder: Path,
    report: list[dict[str, Any]],
    horizons_s: list[int],
    title: str,
    walk_forward: list[dict[str, Any]] | None = None,
    front_matter: dict[str, Any] | None = None,
) -> tuple[str, dict[str, bytes]]:
    """Write report.md (figures by file name), report.html (figures embedded) and the PNGs.

    ``front_matter`` (every key optional): ``model``, ``version``, ``aliases`` (list), ``run_id``,
    ``run_url``, ``config_name``, ``config_path``, ``commit``, ``data_range`` and ``verdict``
    (``promote``, ``reasons``, ``note``). The test period and the costs come from ``report``.

    Returns the Markdown with embedded figures (for Dagster metadata) and the PNGs."""
    pngs = {name: png for entry, h in zip(report, horizons_s) for name, png in figures(entry, h).items()}
    for name, png in pngs.items():
        (folder / name).write_bytes(png)
    files = {name: name for name in pngs}
    text = markdown(report, horizons_s, title, files, walk_forward, front_matter)
    (folder / "report.md").write_text(text, encoding="utf-8")
    embedded = markdown(
        report, horizons_s, title, {name: data_uri(png) for name, png in pngs.items()}, walk_forward, front_matter
    )
    (folder / "report.html").write_text(html_page(embedded, title), encoding="utf-8")
    return embedded, pngs
