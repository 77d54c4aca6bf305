"""The load-test report: a finished run's summary and samples as one self-contained HTML page.

`write_report` writes `report.html` beside the run's other files: the verdict, the thresholds
(pass/fail in words, not only in colour), the headline figures, then inline SVG line charts of
the samples over time with the run's phases (hold start, hold end ...) marked on each, CPU per
process role first; then the details as tables: the plan, a link to Locust's own report and its
statistics, the reconciliation, the phases, the first failed requests. Standard library only and
no script or external file (except the optional Locust link), so the page can be built wherever
the run's JSON lands and read offline.

Samples with a missing, None or non-finite value are left out of that line rather than drawn
as zero: a gap in the figures must not read as an idle system.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

Point = tuple[float, float]

LEFT, RIGHT, TOP, BOTTOM = 64, 16, 30, 46  # the plot area's margins in the SVG, pixels
COLOURS = ("#1f6fb4", "#c62828", "#2e7d32", "#6a3d9a", "#e07b00", "#6d4c41")
# Each line gets a dash pattern as well as a colour, so lines stay apart in greyscale print.
DASHES = ("", "7 3", "2 2", "9 3 2 3")
# Round steps for a time axis, so ticks fall on 0:30, 5:00, 1:00:00 rather than 0:37.
TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
SUFFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))
MAX_TICKS = 50  # a guard against float oddities at extreme magnitudes, never reached by round steps
# Keys of the summary shown in a place of their own; any other key is shown at the end, as a table too.
KNOWN_KEYS = {"shape", "started_at", "passed", "thresholds", "figures", "phases", "locust_html", "plan", "locust",
              "reconciliation", "failures", "interrupted_posts", "environment"}
# Columns of Locust's statistics shown (its CSV has 22): heading -> the CSV's column.
LOCUST_COLUMNS = (("type", "Type"), ("name", "Name"), ("requests", "Request Count"), ("failures", "Failure Count"),
                  ("requests/s", "Requests/s"), ("p50 (ms)", "50%"), ("p95 (ms)", "95%"), ("p99 (ms)", "99%"),
                  ("max (ms)", "Max Response Time"))


@dataclass(frozen=True)
class Chart:
    """One chart of the report: its title, the unit of its y axis, and legend label -> sample key."""
    title: str
    y_label: str
    lines: tuple[tuple[str, str], ...]


CHARTS = (
    # The series' keys of sampling.cpu_key(role) for each of sampling.ROLES (this module stays standard library).
    Chart("CPU per process role", "% of one core", (
        ("ingest", "cpu_ingest_pct"), ("workers", "cpu_workers_pct"), ("certifiers", "cpu_certifiers_pct"),
        ("reviewers", "cpu_reviewers_pct"), ("notifiers", "cpu_notifiers_pct"), ("Postgres", "cpu_postgres_pct"),
        ("Redis", "cpu_redis_pct"), ("Locust", "cpu_locust_pct"))),
    # sampling.postgres_percent: the Postgres line above, split by whom its backends serve (sampling.SERVED).
    Chart("Postgres CPU by whom it serves", "% of one core", tuple(
        (served, f"cpu_postgres_for_{served}_pct") for served in
        ("workers", "certifiers", "reviewers", "notifiers", "ingest", "autovacuum", "other"))),
    # sampling.outside_percent: the machine's CPU no role accounts for, and what the hypervisor took.
    Chart("CPU outside the stack", "% of one core", (("other processes", "cpu_other_pct"),
                                                     ("stolen by the hypervisor", "cpu_steal_pct"))),
    Chart("Throughput", "per s", (("accepted doses/s", "accepted_per_s"), ("persisted doses/s", "persisted_per_s"),
                                  ("certificates/s", "certified_per_s"))),
    Chart("Requests", "per s", (("requests/s", "requests_per_s"), ("503 rejected/s", "rejected_503_per_s"))),
    Chart("Open connections", "connections", (("connections", "connections"),)),
    Chart("Backlog", "entries", (("stream entries", "backlog"), ("certify backlog", "certify_backlog"))),
    Chart("Freshness p99", "seconds", (("persisted", "freshness_persisted_p99"),
                                       ("certified", "freshness_certified_p99"))),
    Chart("Ingest latency p99", "seconds", (("ingest p99", "ingest_p99"),)),
    Chart("Memory", "MiB", (("ingest RSS max", "ingest_rss_mib_max"), ("Redis memory", "redis_memory_mib"))),
)

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 800px; color: #222; }
h1 { font-size: 1.4em; }
h2 { font-size: 1.1em; margin-top: 1.6em; }
.banner { padding: .5em 1em; font-weight: bold; font-size: 1.2em; border: 2px solid; }
.passed { color: #1b5e20; background: #e8f5e9; }
.failed { color: #b71c1c; background: #ffebee; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { text-align: left; padding: .25em .8em; border-bottom: 1px solid #ddd; vertical-align: top; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
td.pass { color: #1b5e20; }
td.fail { color: #b71c1c; font-weight: bold; }
figure { margin: 1em 0; }
svg { max-width: 100%; height: auto; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _finite(value: object) -> float | None:
    """The value as a float if it is a real, finite number (not a bool, None, NaN or a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond float range
        return None
    return number if math.isfinite(number) else None


# Ticks and their labels


def _nice_step(span: float, count: int) -> float:
    """The smallest of 1, 2 or 5 times a power of ten that cuts span into at most about count parts."""
    raw = span / count
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw * (1 - 1e-9))


def _time_step(span: float, count: int) -> float:
    raw = span / count
    if raw <= 1:
        return _nice_step(span, count)
    return next((step for step in TIME_STEPS if step >= raw), _nice_step(span / 86400, count) * 86400)


def _ticks(lo: float, hi: float, step: float) -> list[float]:
    """Multiples of step within [lo, hi], computed from their index so rounding errors do not add up."""
    first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    return [i * step for i in range(first, min(last, first + MAX_TICKS) + 1)]


def _number_label(value: float, step: float) -> str:
    """42k, 1.5M, 0.25: as many decimals as the tick step needs, trailing zeros dropped."""
    scale, suffix = next(((s, x) for s, x in SUFFIXES if abs(value) >= s), (1.0, ""))
    decimals = min(12, max(0, -math.floor(math.log10(step / scale) + 1e-9)))
    text = f"{value / scale:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return ("0" if text == "-0" else text) + suffix


def _clock_label(seconds: float) -> str:
    """m:ss, or h:mm:ss from an hour on."""
    sign = "-" if seconds < 0 else ""
    hours, rest = divmod(round(abs(seconds)), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{sign}{hours}:{minutes:02d}:{secs:02d}"
    return f"{sign}{minutes}:{secs:02d}"


def _time_label(seconds: float, step: float, hi: float) -> str:
    # m:ss only where it is exact: whole-second steps on an axis that reaches a minute.
    if step >= 1 and hi >= 60:
        return _clock_label(seconds)
    return _number_label(seconds, step) + "s"


# The plot area


@dataclass(frozen=True)
class _Frame:
    """The plot area in pixels and the data range it shows."""
    left: float
    top: float
    right: float
    bottom: float
    x_lo: float
    x_hi: float
    y_lo: float
    y_hi: float
    y_step: float

    def x(self, value: float) -> float:
        return self.left + (value - self.x_lo) / (self.x_hi - self.x_lo) * (self.right - self.left)

    def y(self, value: float) -> float:
        return self.bottom - (value - self.y_lo) / (self.y_hi - self.y_lo) * (self.bottom - self.top)


def _x_domain(xs: list[float]) -> tuple[float, float]:
    """The samples' and marks' time range; a single instant is widened so it can be scaled."""
    if not xs:
        return 0.0, 1.0
    lo, hi = min(xs), max(xs)
    return (lo, hi) if hi > lo else (lo, lo + max(1.0, abs(lo) / 1e6))


def _y_domain(ys: list[float]) -> tuple[float, float, float]:
    """From zero (or below, for negative values) to the first round tick at or above the highest value.

    Zero is always in range: rates and backlogs read wrongly on a axis that starts anywhere else."""
    lo, hi = min([0.0, *ys]), max([0.0, *ys])
    if hi == lo:  # all zero, or no values: an axis from 0 to 1 with the line along the bottom
        hi = 1.0
    step = _nice_step(hi - lo, 4)
    return math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step, step


def _frame(lines: dict[str, list[Point]], marks: dict[str, float], width: int, height: int) -> _Frame:
    xs = [x for points in lines.values() for x, _ in points] + list(marks.values())
    x_lo, x_hi = _x_domain(xs)
    y_lo, y_hi, y_step = _y_domain([y for points in lines.values() for _, y in points])
    return _Frame(LEFT, TOP, width - RIGHT, height - BOTTOM, x_lo, x_hi, y_lo, y_hi, y_step)


# SVG pieces


def _y_axis(frame: _Frame, y_label: str) -> list[str]:
    parts = [f'<line x1="{frame.left}" y1="{frame.top}" x2="{frame.left}" y2="{frame.bottom}" stroke="#444"/>']
    for value in _ticks(frame.y_lo, frame.y_hi, frame.y_step):
        y = f"{frame.y(value):.1f}"
        parts.append(f'<line x1="{frame.left}" y1="{y}" x2="{frame.right}" y2="{y}" stroke="#e4e4e4"/>')
        parts.append(f'<text x="{frame.left - 6}" y="{y}" dy="0.35em" text-anchor="end">'
                     f'{_e(_number_label(value, frame.y_step))}</text>')
    if y_label:
        middle = (frame.top + frame.bottom) / 2
        parts.append(f'<text transform="rotate(-90)" x="{-middle:.1f}" y="14" text-anchor="middle">'
                     f'{_e(y_label)}</text>')
    return parts


def _x_axis(frame: _Frame) -> list[str]:
    parts = [f'<line x1="{frame.left}" y1="{frame.bottom}" x2="{frame.right}" y2="{frame.bottom}" stroke="#444"/>']
    step = _time_step(frame.x_hi - frame.x_lo, max(2, int(frame.right - frame.left) // 110))
    for value in _ticks(frame.x_lo, frame.x_hi, step):
        x = f"{frame.x(value):.1f}"
        parts.append(f'<line x1="{x}" y1="{frame.bottom}" x2="{x}" y2="{frame.bottom + 4}" stroke="#444"/>')
        parts.append(f'<text x="{x}" y="{frame.bottom + 16}" text-anchor="middle">'
                     f'{_e(_time_label(value, step, frame.x_hi))}</text>')
    return parts


def _marks(frame: _Frame, marks: dict[str, float]) -> list[str]:
    parts = []
    for index, (label, value) in enumerate(sorted(marks.items(), key=lambda mark: mark[1])):
        x = frame.x(value)
        # Alternate rows so the labels of two close marks do not print over each other.
        y = frame.top + 10 + (index % 2) * 12
        anchor, text_x = ("end", x - 3) if x > frame.right - 90 else ("start", x + 3)
        parts.append(f'<line x1="{x:.1f}" y1="{frame.top}" x2="{x:.1f}" y2="{frame.bottom}" '
                     f'stroke="#666" stroke-dasharray="4 3"/>')
        parts.append(f'<text x="{text_x:.1f}" y="{y}" text-anchor="{anchor}" fill="#444">{_e(label)}</text>')
    return parts


def _stroke(index: int) -> str:
    dash = DASHES[index % len(DASHES)]
    dashing = f' stroke-dasharray="{dash}"' if dash else ""
    return f'stroke="{COLOURS[index % len(COLOURS)]}" stroke-width="1.6"{dashing}'


def _polyline(frame: _Frame, index: int, label: str, points: list[Point]) -> list[str]:
    coords = " ".join(f"{frame.x(x):.1f},{frame.y(y):.1f}" for x, y in points)
    parts = [f'<polyline fill="none" {_stroke(index)} points="{coords}"><title>{_e(label)}</title></polyline>']
    if len(points) == 1:  # a polyline of one point draws nothing: show the sample as a dot
        x, y = points[0]
        parts.append(f'<circle cx="{frame.x(x):.1f}" cy="{frame.y(y):.1f}" r="2.5" '
                     f'fill="{COLOURS[index % len(COLOURS)]}"/>')
    return parts


def _legend(lines: dict[str, list[Point]], left: float, y: float) -> list[str]:
    parts, x = [], left
    for index, (label, points) in enumerate(lines.items()):
        # A line without samples stays in the legend, marked, so a missing figure is not taken for zero.
        text = label if points else f"{label} (no data)"
        parts.append(f'<line x1="{x:.1f}" y1="{y - 4}" x2="{x + 22:.1f}" y2="{y - 4}" {_stroke(index)}/>')
        parts.append(f'<text x="{x + 27:.1f}" y="{y}">{_e(text)}</text>')
        x += 27 + 6.5 * len(text) + 18  # a rough text width: no font metrics without a renderer
    return parts


def _clean(points: list[Point]) -> list[Point]:
    """Finite (x, y) pairs in time order; anything else is left out of the line."""
    pairs = [(_finite(x), _finite(y)) for x, y in points]
    return sorted((x, y) for x, y in pairs if x is not None and y is not None)


def svg_chart(title: str, lines: dict[str, list[tuple[float, float]]], *, y_label: str = "",
              marks: dict[str, float] | None = None, width: int = 760, height: int = 220) -> str:
    """An inline <svg> line chart: one polyline per entry of `lines` (label -> [(x seconds, y)]), x and y
    axes with a handful of round-number ticks (x as m:ss or seconds), a legend, and a vertical dashed
    line with its label for each entry of `marks` (label -> x seconds, e.g. "hold start")."""
    width, height = max(width, LEFT + RIGHT + 100), max(height, TOP + BOTTOM + 60)
    lines = {str(label): _clean(points) for label, points in lines.items()}
    marks = {str(label): x for label, value in (marks or {}).items() if (x := _finite(value)) is not None}
    frame = _frame(lines, marks, width, height)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}" '
        f'font-family="system-ui, sans-serif" font-size="11" fill="#222">',
        f"<title>{_e(title)}</title>",
        f'<text x="{LEFT}" y="16" font-size="13" font-weight="bold">{_e(title)}</text>',
        *_y_axis(frame, y_label), *_x_axis(frame), *_marks(frame, marks),
    ]
    for index, (label, points) in enumerate(lines.items()):
        if points:
            parts += _polyline(frame, index, label, points)
    if not any(lines.values()):
        parts.append(f'<text x="{(frame.left + frame.right) / 2:.1f}" y="{(frame.top + frame.bottom) / 2:.1f}" '
                     f'text-anchor="middle" fill="#888">no data</text>')
    parts += _legend(lines, LEFT, height - 8)
    parts.append("</svg>")
    return "\n".join(parts)


# The page


def _points(series: list[dict], key: str) -> list[Point]:
    """(t, value) of every sample that has both; samples where the key is missing or None are skipped."""
    points = []
    for sample in series:
        if isinstance(sample, dict):
            t, value = _finite(sample.get("t")), _finite(sample.get(key))
            if t is not None and value is not None:
                points.append((t, value))
    return points


def _charts(series: list[dict], marks: dict[str, float]) -> list[str]:
    figures = []
    for chart in CHARTS:
        lines = {label: _points(series, key) for label, key in chart.lines}
        if any(lines.values()):
            figures.append(f"<figure>{svg_chart(chart.title, lines, y_label=chart.y_label, marks=marks)}</figure>")
    return figures


def _value_text(value: object) -> str:
    """A figure as a reader wants it: thousands separated, a float to a sensible precision."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"
    if isinstance(value, dict):
        return "; ".join(f"{key}: {_value_text(item)}" for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(map(_value_text, value))
    if value is None:
        return "-"
    return str(value)


def _numeric(value: object) -> bool:
    """A number, or a string that is one (Locust's CSV gives its figures as text)."""
    if isinstance(value, str):
        try:
            return math.isfinite(float(value))
        except ValueError:
            return False
    return _finite(value) is not None


def _cell(value: object) -> str:
    text = _e(_value_text(value))
    return f'<td class="number">{text}</td>' if _numeric(value) else f"<td>{text}</td>"


def _threshold_row(threshold: dict) -> str:
    passed = bool(threshold.get("passed"))
    result = '<td class="pass">pass</td>' if passed else '<td class="fail">FAIL</td>'
    cells = "".join(f"<td>{_e(threshold.get(key, ''))}</td>" for key in ("name", "limit", "measured"))
    return f"<tr>{cells}{result}</tr>"


def _thresholds_table(thresholds: list[dict]) -> str:
    rows = [_threshold_row(threshold) for threshold in thresholds if isinstance(threshold, dict)]
    if not rows:
        return "<h2>Thresholds</h2>\n<p>No thresholds were set.</p>"
    head = "<tr><th>Threshold</th><th>Limit</th><th>Measured</th><th>Result</th></tr>"
    return "<h2>Thresholds</h2>\n<table>\n" + "\n".join([head, *rows]) + "\n</table>"


def _pairs_table(heading: str, pairs: dict) -> str:
    if not pairs:
        return ""
    rows = [f"<tr><th>{_e(name)}</th>{_cell(value)}</tr>" for name, value in pairs.items()]
    return f"<h2>{_e(heading)}</h2>\n<table>\n" + "\n".join(rows) + "\n</table>"


def _records_table(heading: str, records: list[dict], columns: tuple[tuple[str, str], ...]) -> str:
    """One row per record, one column per (heading, key) of `columns`; a record without the key shows -."""
    records = [record for record in records if isinstance(record, dict)]
    if not records:
        return ""
    head = "<tr>" + "".join(f"<th>{_e(label)}</th>" for label, _ in columns) + "</tr>"
    rows = ["<tr>" + "".join(_cell(record.get(key)) for _, key in columns) + "</tr>" for record in records]
    return f"<h2>{_e(heading)}</h2>\n<table>\n" + "\n".join([head, *rows]) + "\n</table>"


def _locust_section(summary: dict) -> list[str]:
    stats = summary.get("locust") if isinstance(summary.get("locust"), dict) else {}
    rows = [row for row in stats.values() if isinstance(row, dict)]
    heading = "Locust statistics (since the measured phase began; times in ms)"
    return [_records_table(heading, rows, LOCUST_COLUMNS), _locust_link(summary.get("locust_html"))]


def _phases_table(summary: dict) -> str:
    marks = sorted(_phase_marks(summary).items(), key=lambda mark: mark[1])
    records = [{"phase": name, "s": round(at, 1), "clock": _clock_label(at)} for name, at in marks]
    return _records_table("Phases (from the start of the run)", records,
                          (("phase", "phase"), ("seconds", "s"), ("m:ss", "clock")))


def _failures_table(failures: object) -> str:
    """The first failed requests, each `epoch<TAB>what` (as the Locust processes wrote them)."""
    records = []
    for line in failures if isinstance(failures, list) else []:
        at, _, what = str(line).partition("\t")
        when = _utc_clock(at)
        if when is None:
            when, what = "", str(line)
        records.append({"at": when, "what": what})
    return _records_table("Failed requests (the first of the run, at most 50)", records,
                          (("at", "at"), ("request", "what")))


def _utc_clock(epoch: str) -> str | None:
    """An epoch as the processes wrote it, as `HH:MM:SS UTC`; None when it is not one."""
    try:
        return dt.datetime.fromtimestamp(float(epoch), dt.timezone.utc).strftime("%H:%M:%S UTC")
    except (ValueError, OverflowError, OSError):
        return None


def _interrupted_table(posts: object) -> str:
    """Posts whose user was stopped before their answer, each `began<TAB>stopped<TAB>doses<TAB>request<TAB>
    what stopped it<TAB>outcome` (users.Process.interrupted)."""
    records = []
    for line in posts if isinstance(posts, list) else []:
        fields = str(line).split("\t")
        began = _utc_clock(fields[0])
        if began is None or len(fields) < 2 or _utc_clock(fields[1]) is None:
            continue
        records.append({"began": began, "waited": f"{float(fields[1]) - float(fields[0]):.1f}",
                        "doses": fields[2] if len(fields) > 2 else "", "by": " ".join(fields[3:])})
    return _records_table("Posts stopped before their answer", records,
                          (("began", "began"), ("waited (s)", "waited"), ("doses", "doses"),
                           ("request, stopped by, outcome", "by")))


def _details(summary: dict) -> list[str]:
    """The plan, Locust's statistics, the reconciliation, the phases, the failures and any other key: tables."""
    sections = [_pairs_table("Plan", _mapping(summary.get("plan"))), *_locust_section(summary),
                _pairs_table("Reconciliation", _mapping(summary.get("reconciliation"))), _phases_table(summary),
                _failures_table(summary.get("failures")), _interrupted_table(summary.get("interrupted_posts")),
                _pairs_table("Environment (what the run ran on)", _mapping(summary.get("environment")))]
    for key, value in summary.items():
        if key not in KNOWN_KEYS:
            sections.append(_pairs_table(str(key), value if isinstance(value, dict) else {str(key): value}))
    return sections


def _mapping(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _banner(summary: dict) -> str:
    thresholds = [t for t in summary.get("thresholds") or [] if isinstance(t, dict)]
    failed = sum(1 for t in thresholds if not t.get("passed"))
    verdict = "PASSED" if summary.get("passed") is True else "FAILED"
    detail = ""
    if thresholds:
        detail = f" ({failed} of {len(thresholds)} thresholds failed)" if failed else f" (all {len(thresholds)} met)"
    return f'<p class="banner {verdict.lower()}">{verdict}{_e(detail)}</p>'


def _locust_link(name: object) -> str:
    if not name:
        return ""
    # Quoted as a path: the name stays a file beside this report, never a scheme such as javascript:.
    return f'<p><a href="{_e(quote(str(name)))}">Locust\'s own report: {_e(name)}</a></p>'


def _phase_marks(summary: dict) -> dict[str, float]:
    phases = summary.get("phases")
    if not isinstance(phases, dict):
        return {}
    return {str(label): x for label, value in phases.items() if (x := _finite(value)) is not None}


def _page(summary: dict, series: list[dict]) -> str:
    title = f"Load test: {summary.get('shape', '?')}, started {summary.get('started_at', '?')}"
    charts = _charts(series or [], _phase_marks(summary))
    body = [
        f"<h1>{_e(title)}</h1>", _banner(summary), _thresholds_table(summary.get("thresholds") or []),
        _pairs_table("Figures", _mapping(summary.get("figures"))),
        "<h2>Over time</h2>", *(charts or ["<p>No samples were recorded.</p>"]), *_details(summary),
    ]
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>{_e(title)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
        *[part for part in body if part], "</body>", "</html>", "",
    ])


def write_report(folder: Path, summary: dict, series: list[dict]) -> Path:
    """Write folder/report.html and return its path."""
    path = Path(folder) / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_page(summary, series), encoding="utf-8")
    return path
