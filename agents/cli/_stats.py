"""`stalwart stats` (rolling quality metrics as tables) and `stalwart report` (an HTML report).

The report is one self-contained HTML file: inline SVG plots drawn here (no JavaScript, no
network, no plotting library) of confidence, the fallback ladder's rungs, accuracy and cost over
time, per agent and step, plus the detectors' open incidents.

Example:
    ```
    stalwart stats --tenant acme --agent ticket-triage --since 1d
    stalwart report --tenant acme --since 7d --output report.html
    ```
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from html import escape
from pathlib import Path

import typer
from rich import box
from rich.table import Table

from agents.cli._utilities import console, exit_with_error
from agents.declare.decision import LadderPath
from agents.errors import ConfigurationError
from agents.observe.metrics import StepMetrics
from agents.redact import scrub_text

__all__ = [
    "auto_bucket",
    "render_report",
    "report_command",
    "stats_command",
    "time_ticks",
]

_PATH_COLOURS: dict[str, str] = {
    LadderPath.DIRECT: "#2e7d32",
    LadderPath.FALLBACK_MODEL: "#1565c0",
    LadderPath.HUMAN: "#f9a825",
    LadderPath.DEFAULT: "#8e24aa",
    LadderPath.HELD: "#757575",
    LadderPath.REJECTED: "#c62828",
}
_NICE_BUCKETS = (
    timedelta(minutes=1),
    timedelta(minutes=5),
    timedelta(minutes=15),
    timedelta(hours=1),
    timedelta(hours=3),
    timedelta(hours=6),
    timedelta(days=1),
    timedelta(weeks=1),
)
_W, _H = 640, 200
_LEFT, _RIGHT, _TOP, _BOTTOM = 48, 12, 24, 28


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.0%}"


def _num(value: float | None, spec: str = ".2f") -> str:
    return "" if value is None else format(value, spec)


def _ladder(m: StepMetrics) -> str:
    short: dict[str, str] = {LadderPath.FALLBACK_MODEL: "fallback"}
    return " ".join(
        f"{short.get(name, name)} {share:.0%}" for name, share in m.paths.items() if share > 0
    )


def _stats_tables(rows: Sequence[StepMetrics], title: str) -> list[Table]:
    """Two tables (quality; reliability and cost), so each fits a normal terminal."""
    quality = Table(title=title, box=box.SIMPLE_HEAD)
    for header in ("agent", "step", "decisions", "conf mean", "p10", "p50", "ladder",
                   "override", "accuracy (n)"):  # fmt: skip
        quality.add_column(header, overflow="fold", no_wrap=header in ("agent", "step"))
    spend = Table(title="reliability and cost", box=box.SIMPLE_HEAD)
    for header in ("agent", "step", "errors (runs)", "retries", "latency p50/p95 ms", "cost",
                   "cost/decision"):  # fmt: skip
        spend.add_column(header, overflow="fold", no_wrap=header in ("agent", "step"))
    for m in rows:
        agent, step = scrub_text(m.agent), scrub_text(m.step)
        quality.add_row(
            agent,
            step,
            str(m.decisions),
            _num(m.confidence_mean),
            _num(m.confidence_p10),
            _num(m.confidence_p50),
            _ladder(m),
            _pct(m.override_rate),
            f"{_pct(m.accuracy)} ({m.labelled})" if m.labelled else "",
        )
        spend.add_row(
            agent,
            step,
            f"{_pct(m.error_rate)} ({m.runs})" if m.runs else "",
            _pct(m.retry_rate),
            f"{_num(m.latency_p50_ms, '.0f')}/{_num(m.latency_p95_ms, '.0f')}",
            f"{m.cost_sum:.4f}",
            _num(m.cost_mean, ".5f"),
        )
    return [quality, spend]


def stats_command(
    tenant: str = typer.Option("default", "--tenant", "-t"),
    agent: str | None = typer.Option(None, "--agent", "-a"),
    step: str | None = typer.Option(None, "--step"),
    since: str = typer.Option("1d", "--since", help="e.g. 1h, 1d, 7d, 2026-11-01"),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per step and detector."),
) -> None:
    """Rolling quality metrics per agent and step: confidence, ladder, accuracy, errors, cost."""
    from agents.observe.drift import signal_states
    from agents.observe.metrics import window_metrics

    try:
        rows = window_metrics(tenant=tenant, agent=agent, step=step, since=since)
        states = signal_states(tenant=tenant, agent=agent)
    except (ValueError, ConfigurationError) as exc:
        exit_with_error(str(exc))
    if as_json:
        for m in rows:
            typer.echo(json.dumps(m.to_dict()))
        for s in states:
            typer.echo(json.dumps({"detector": s.to_dict()}))
        return
    for table in _stats_tables(rows, f"quality · tenant {tenant} · since {since}"):
        console.print(table)
    if states:
        table = Table(title="detectors", box=box.SIMPLE_HEAD)
        for header in ("agent", "step", "signal", "status", "baseline", "value", "threshold"):
            table.add_column(header)
        for s in states:
            status = f"[red]{s.status}[/red]" if s.status == "degraded" else s.status
            table.add_row(
                scrub_text(s.agent),
                scrub_text(s.step),
                s.signal,
                status,
                _num(s.baseline, ".4g"),
                _num(s.value, ".4g"),
                _num(s.threshold, ".4g"),
            )
        console.print(table)


# -- the HTML report ------------------------------------------------------------------------------


def auto_bucket(window: timedelta, points: int = 48) -> timedelta:
    """The smallest round bucket that cuts `window` into at most `points` buckets.

    Example:
        >>> auto_bucket(timedelta(days=7))
        datetime.timedelta(seconds=21600)
    """
    for size in _NICE_BUCKETS:
        if window / size <= points:
            return size
    return _NICE_BUCKETS[-1]


def time_ticks(starts: Sequence[datetime], most: int = 6) -> list[tuple[int, str]]:
    """At most `most` evenly spaced (bucket index, label) ticks of a time axis, in UTC.

    A label shows the date only when the ticks span more than one day, and the time down to the
    finest unit any tick needs (seconds for buckets of seconds): every label is exact, so two
    ticks never read the same.

    Example:
        >>> starts = [datetime(2026, 12, 6, 9, 0, 5 * i, tzinfo=UTC) for i in range(12)]
        >>> time_ticks(starts)[:3]
        [(0, '09:00:00'), (2, '09:00:10'), (4, '09:00:20')]
        >>> days = [datetime(2026, 12, 1, tzinfo=UTC) + timedelta(days=i) for i in range(7)]
        >>> [label for _, label in time_ticks(days)]
        ['12-01', '12-03', '12-05', '12-07']
        >>> hours = [datetime(2026, 12, 1, tzinfo=UTC) + timedelta(hours=6 * i) for i in range(8)]
        >>> [label for _, label in time_ticks(hours)]
        ['12-01 00:00', '12-01 12:00', '12-02 00:00', '12-02 12:00']
    """
    if not starts:
        return []
    step = max(1, -(-len(starts) // most))
    indices = list(range(0, len(starts), step))
    times = [starts[i].astimezone(UTC) for i in indices]
    if any(t.second or t.microsecond for t in times):
        clock = "%H:%M:%S"
    elif any(t.hour or t.minute for t in times):
        clock = "%H:%M"
    else:
        clock = ""
    one_day = times[0].date() == times[-1].date()
    fmt = (clock or "%m-%d") if one_day else f"%m-%d {clock}".strip()
    return [(i, t.strftime(fmt)) for i, t in zip(indices, times, strict=True)]


class _Frame:
    """The axes of one plot: maps bucket index and value to SVG coordinates."""

    def __init__(self, count: int, y_max: float) -> None:
        self.count = max(count, 1)
        self.y_max = y_max if y_max > 0 else 1.0
        self.plot_w = _W - _LEFT - _RIGHT
        self.plot_h = _H - _TOP - _BOTTOM

    def x(self, i: float) -> float:
        return _LEFT + self.plot_w * (i + 0.5) / self.count

    def y(self, value: float) -> float:
        return _TOP + self.plot_h * (1 - min(value, self.y_max) / self.y_max)


def _svg(title: str, body: list[str], frame: _Frame, starts: Sequence[datetime], y_fmt: str) -> str:
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
        f'viewBox="0 0 {_W} {_H}" role="img" aria-label="{escape(title)}">',
        f'<text x="{_LEFT}" y="15" class="t">{escape(title)}</text>',
    ]
    for k in range(5):
        value = frame.y_max * k / 4
        y = frame.y(value)
        parts.append(f'<line x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="g"/>')
        parts.append(f'<text x="{_LEFT - 4}" y="{y + 4:.1f}" class="a" text-anchor="end">'
                     f"{format(value, y_fmt)}</text>")  # fmt: skip
    for i, label in time_ticks(starts):
        parts.append(
            f'<text x="{frame.x(i):.1f}" y="{_H - 8}" class="a" text-anchor="middle">{label}</text>'
        )
    parts.extend(body)
    parts.append("</svg>")
    return "".join(parts)


def _lines(
    title: str,
    starts: Sequence[datetime],
    series: dict[str, tuple[str, Sequence[float | None]]],
    y_max: float,
    y_fmt: str = ".2f",
) -> str:
    """A line chart; a None value breaks its line (nothing measured in that bucket)."""
    frame = _Frame(len(starts), y_max)
    body: list[str] = []
    for offset, (name, (colour, values)) in enumerate(series.items()):
        segment: list[str] = []
        for i, value in enumerate([*values, None]):
            if value is not None:
                segment.append(f"{frame.x(i):.1f},{frame.y(value):.1f}")
                body.append(
                    f'<circle cx="{frame.x(i):.1f}" cy="{frame.y(value):.1f}" r="2" '
                    f'fill="{colour}"/>'
                )
            elif segment:
                body.append(
                    f'<polyline points="{" ".join(segment)}" fill="none" stroke="{colour}" '
                    'stroke-width="1.5"/>'
                )
                segment = []
        x = _W - _RIGHT - 80 * (len(series) - offset)
        body.append(f'<text x="{x}" y="15" class="a" style="fill:{colour}">■ {escape(name)}</text>')
    return _svg(title, body, frame, starts, y_fmt)


def _stacked(
    title: str, starts: Sequence[datetime], shares: dict[str, Sequence[float]], counts: list[int]
) -> str:
    """Stacked bars of each ladder path's share per bucket (empty buckets left blank)."""
    frame = _Frame(len(starts), 1.0)
    width = max(frame.plot_w / frame.count - 2, 1)
    body: list[str] = []
    for i in range(len(starts)):
        if not counts[i]:
            continue
        bottom = 0.0
        for name, values in shares.items():
            share = values[i]
            if share <= 0:
                continue
            y_top, y_bottom = frame.y(bottom + share), frame.y(bottom)
            body.append(
                f'<rect x="{frame.x(i) - width / 2:.1f}" y="{y_top:.1f}" width="{width:.1f}" '
                f'height="{y_bottom - y_top:.1f}" fill="{_PATH_COLOURS.get(name, "#999")}">'
                f"<title>{escape(name)} {share:.0%}</title></rect>"
            )
            bottom += share
    legend_x = _W - _RIGHT - sum(6 * len(name) + 16 for name in shares)
    for name in shares:
        body.append(
            f'<text x="{legend_x}" y="15" class="a" style="fill:{_PATH_COLOURS.get(name, "#999")}">'
            f"■ {escape(name)}</text>"
        )
        legend_x += 6 * len(name) + 16
    return _svg(title, body, frame, starts, ".0%")


def _bars(title: str, starts: Sequence[datetime], values: Sequence[float], colour: str) -> str:
    frame = _Frame(len(starts), max(values, default=0.0) * 1.1)
    width = max(frame.plot_w / frame.count - 2, 1)
    body = [
        f'<rect x="{frame.x(i) - width / 2:.1f}" y="{frame.y(v):.1f}" width="{width:.1f}" '
        f'height="{frame.y(0) - frame.y(v):.1f}" fill="{colour}"><title>{v:.4f}</title></rect>'
        for i, v in enumerate(values)
        if v > 0
    ]
    return _svg(title, body, frame, starts, ".3g")


def _plots(series: Sequence[StepMetrics]) -> list[str]:
    starts = [m.start for m in series]
    counts = [m.decisions for m in series]
    paths = [
        path.value for path in LadderPath.rungs() if any(m.paths.get(path, 0) > 0 for m in series)
    ]
    return [
        _lines(
            "confidence (mean, p10)",
            starts,
            {
                "mean": ("#1565c0", [m.confidence_mean for m in series]),
                "p10": ("#90caf9", [m.confidence_p10 for m in series]),
            },
            1.0,
        ),
        _stacked(
            "ladder rungs",
            starts,
            {name: [m.paths.get(name, 0.0) for m in series] for name in paths},
            counts,
        ),
        _lines(
            "accuracy (labelled decisions)",
            starts,
            {"accuracy": ("#2e7d32", [m.accuracy for m in series])},
            1.0,
        ),
        _bars("cost (USD per bucket)", starts, [m.cost_sum for m in series], "#ef6c00"),
    ]


_STYLE = """
body{font:14px system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0}td,th{border-bottom:1px solid #ddd;padding:3px 8px;
text-align:right}th:first-child,td:first-child,th:nth-child(2),td:nth-child(2){text-align:left}
.plots{display:flex;flex-wrap:wrap;gap:12px}svg{border:1px solid #eee;background:#fff}
.t{font-size:13px;font-weight:600}.a{font-size:10px;fill:#555}.g{stroke:#eee}
.bad{color:#c62828;font-weight:600}
"""


def render_report(
    *,
    tenant: str,
    totals: Sequence[StepMetrics],
    series: Sequence[StepMetrics],
    incidents: Sequence[str],
    since: str,
    bucket: timedelta,
) -> str:
    """The HTML report: a summary table, open incidents and four plots per agent and step.

    Example:
        >>> html = render_report(tenant="acme", totals=[], series=[], incidents=[], since="7d",
        ...                      bucket=timedelta(hours=6))
        >>> html.startswith("<!doctype html>")
        True
    """
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Stalwart quality · {escape(tenant)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Quality report · tenant {escape(tenant)}</h1>",
        f"<p>Window: last {escape(since)}, buckets of {escape(str(bucket))}. Generated {now}.</p>",
    ]
    if incidents:
        out.append("<p class='bad'>Open incidents: " + ", ".join(map(escape, incidents)) + "</p>")
    else:
        out.append("<p>No open incident.</p>")
    headers = ("agent", "step", "decisions", "confidence mean", "p10", "ladder", "override",
               "accuracy", "labelled", "errors", "retries", "latency p95 ms", "cost")  # fmt: skip
    out.append("<table><tr>" + "".join(f"<th>{h}</th>" for h in headers) + "</tr>")
    for m in totals:
        cells = (m.agent, m.step, str(m.decisions), _num(m.confidence_mean),
                 _num(m.confidence_p10), _ladder(m), _pct(m.override_rate), _pct(m.accuracy),
                 str(m.labelled), _pct(m.error_rate), _pct(m.retry_rate),
                 _num(m.latency_p95_ms, ".0f"), f"{m.cost_sum:.4f}")  # fmt: skip
        out.append("<tr>" + "".join(f"<td>{escape(scrub_text(c))}</td>" for c in cells) + "</tr>")
    out.append("</table>")
    groups: dict[tuple[str, str], list[StepMetrics]] = {}
    for m in series:
        groups.setdefault((m.agent, m.step), []).append(m)
    for (agent, step), rows in groups.items():
        out.append(f"<h2>{escape(scrub_text(agent))} · {escape(scrub_text(step))}</h2>")
        out.append("<div class='plots'>" + "".join(_plots(rows)) + "</div>")
    out.append("</body></html>")
    return "\n".join(out)


def report_command(
    output: Path = typer.Option(
        Path("report.html"), "--output", "-o", help="The HTML file to write.", dir_okay=False
    ),
    tenant: str = typer.Option("default", "--tenant", "-t"),
    agent: str | None = typer.Option(None, "--agent", "-a"),
    since: str = typer.Option("7d", "--since", help="e.g. 1d, 7d, 30d, 2026-11-01"),
    bucket: str | None = typer.Option(
        None, "--bucket", help="Plot resolution, e.g. 1h, 1d (default: about 48 points)."
    ),
) -> None:
    """Write a self-contained HTML report with plots over time: confidence, ladder, accuracy,
    cost."""
    from agents.decisions import parse_duration, parse_since
    from agents.observe.drift import signal_states
    from agents.observe.metrics import window_metrics

    now = datetime.now(UTC)
    try:
        start = parse_since(since, now=now)
        assert start is not None
        size = parse_duration(bucket) if bucket else auto_bucket(now - start)
        fetch: Callable[..., list[StepMetrics]] = window_metrics
        totals = fetch(tenant=tenant, agent=agent, since=start, until=now)
        series = fetch(tenant=tenant, agent=agent, since=start, until=now, bucket=size)
        incidents = [
            f"{s.agent}/{s.step}/{s.signal}"
            for s in signal_states(tenant=tenant, agent=agent)
            if s.status == "degraded"
        ]
    except (ValueError, ConfigurationError) as exc:
        exit_with_error(str(exc))
    html = render_report(
        tenant=tenant, totals=totals, series=series, incidents=incidents, since=since, bucket=size
    )
    try:
        output.write_text(html, encoding="utf-8")
    except OSError as exc:
        exit_with_error(f"--output {str(output)!r}: {exc.strerror or exc}")
    console.print(f"wrote {output} ({len(totals)} step(s))", markup=False, soft_wrap=True)
