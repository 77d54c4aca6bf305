"""The load-test report: well-formed SVG charts and an HTML page that says pass or fail in words, the
plots (CPU per process role first) right after the figures, the details as tables rather than JSON.

Pure functions and a file in tmp_path: no servers, no network.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from loadtests import report, sampling
from loadtests.report import svg_chart, write_report

SVG = "{http://www.w3.org/2000/svg}"


def parsed(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def texts(root: ET.Element) -> list[str]:
    return ["".join(element.itertext()) for element in root.iter(f"{SVG}text")]


def summary(**fields) -> dict:
    value = {
        "shape": "sessions",
        "started_at": "2021-08-14T09:00:00+07:00",
        "passed": False,
        "thresholds": [
            {"name": "p99 ingest latency", "limit": "< 0.5 s", "measured": "0.21 s", "passed": True},
            {"name": "reconciliation gap", "limit": "= 0", "measured": "3", "passed": False},
        ],
        "figures": {"sessions held": 5000, "requests/s": 812.5, "p99": "0.21 s"},
        "phases": {"hold start": 412.0, "hold end": 1012.0},
    }
    return value | fields


def samples() -> list[dict]:
    return [
        {"t": 0, "accepted_per_s": 0, "connections": 0},
        {"t": 412, "accepted_per_s": 1200.0, "persisted_per_s": 1100.0, "connections": 5000},
        {"t": 700, "accepted_per_s": 1250.0, "persisted_per_s": None, "connections": 5000},
        {"t": 1100, "accepted_per_s": 300.0, "persisted_per_s": 1300.0},
    ]


def test_the_chart_is_well_formed_svg_with_a_polyline_per_line_that_has_points():
    svg = svg_chart("Throughput", {"accepted": [(0, 1), (60, 3)], "persisted": [(30, 2)], "certified": []},
                    y_label="per s", marks={"hold start": 30.0})
    root = parsed(svg)
    assert root.tag == f"{SVG}svg"
    assert len(list(root.iter(f"{SVG}polyline"))) == 2
    labels = texts(root)
    assert "hold start" in labels and "per s" in labels
    assert "certified (no data)" in labels


def test_tick_labels_are_short_for_huge_values_and_clock_time_for_minutes():
    root = parsed(svg_chart("Backlog", {"entries": [(0, 0), (600, 5_000_000)]}))
    labels = texts(root)
    assert "2M" in labels and "4M" in labels
    assert "2:00" in labels and "10:00" in labels
    assert all(len(label) <= 6 for label in labels if label[0].isdigit())


def test_small_values_and_short_runs_keep_decimals_and_seconds():
    labels = texts(parsed(svg_chart("Freshness", {"p99": [(0, 0.01), (20, 0.04)]})))
    assert "0.04" in labels and "20s" in labels


@pytest.mark.parametrize("lines", [
    {},
    {"empty": []},
    {"zero": [(0, 0), (10, 0), (20, 0)]},
    {"single": [(5, 7)]},
    {"same instant": [(5, 1), (5, 2)]},
    {"odd values": [(0, 1e18), (1, float("nan")), (2, None), (float("inf"), 3), (3, -2.5), (4, 10**400)]},
])
def test_edge_cases_still_give_well_formed_svg_without_nan(lines):
    svg = svg_chart("Edge", lines, marks={"hold start": 1.0, "broken": None})
    root = parsed(svg)
    assert len(list(root.iter(f"{SVG}polyline"))) == sum(1 for points in lines.values() if points)
    assert "nan" not in svg.lower() and "inf" not in svg.lower()
    assert "broken" not in svg


def test_the_report_lists_every_threshold_and_says_fail_in_words(tmp_path):
    path = write_report(tmp_path, summary(), samples())
    page = path.read_text(encoding="utf-8")
    assert path == tmp_path / "report.html"
    assert "p99 ingest latency" in page and "reconciliation gap" in page
    assert "FAIL</td>" in page and "pass</td>" in page and "FAILED" in page
    assert "sessions held" in page and "5,000" in page


def test_a_passed_run_says_passed(tmp_path):
    thresholds = [{"name": "errors", "limit": "0", "measured": "0", "passed": True}]
    page = write_report(tmp_path, summary(passed=True, thresholds=thresholds), []).read_text(encoding="utf-8")
    assert "PASSED" in page and "FAILED" not in page and "FAIL<" not in page


def test_text_is_escaped(tmp_path):
    figures = {"<script>alert(1)</script>": "<script>x</script>"}
    page = write_report(tmp_path, summary(figures=figures, shape="<script>"), []).read_text(encoding="utf-8")
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_the_locust_link_appears_only_when_given(tmp_path):
    without = write_report(tmp_path, summary(), samples()).read_text(encoding="utf-8")
    assert "locust" not in without.lower()
    page = write_report(tmp_path, summary(locust_html="locust report.html"), samples()).read_text(encoding="utf-8")
    assert 'href="locust%20report.html"' in page


def test_charts_are_drawn_only_for_figures_that_were_sampled_with_the_phases_marked(tmp_path):
    page = write_report(tmp_path, summary(), samples()).read_text(encoding="utf-8")
    charts = [parsed(part.split("</figure>")[0]) for part in page.split("<figure>")[1:]]
    titles = [root.find(f"{SVG}title").text for root in charts]
    assert titles == ["Throughput", "Open connections"]
    throughput = charts[0]
    assert len(list(throughput.iter(f"{SVG}polyline"))) == 2  # accepted and persisted; no certified samples
    assert "hold start" in texts(throughput) and "hold end" in texts(throughput)


def test_an_empty_series_gives_tables_without_charts(tmp_path):
    page = write_report(tmp_path, summary(), []).read_text(encoding="utf-8")
    assert "<svg" not in page
    assert "<table>" in page and "reconciliation gap" in page and "sessions held" in page


ROLES = [role for role, _ in sampling.ROLES]


def cpu_samples() -> list[dict]:
    shares = {"ingest": 25.0, "workers": 15.0, "certifiers": 49.0, "reviewers": 3.0, "notifiers": 1.0, "Postgres": 52.0,
              "Redis": 8.0, "Locust": 22.0}
    return [{"t": t, "accepted_per_s": 1000.0} | {sampling.cpu_key(role): share * (1 + t / 100)
                                                  for role, share in shares.items()} for t in (0, 5, 10)]


def detailed() -> dict:
    return summary(
        plan={"shape": "sessions", "ingest_p99_limit": 0.25, "server_p99_limit": 0.1, "think": "120,270"},
        locust={"POST /v1/doses": {"Type": "POST", "Name": "POST /v1/doses", "Request Count": "4200",
                                   "Failure Count": "0", "Requests/s": "70.1", "50%": "12", "95%": "40", "99%": "65",
                                   "Max Response Time": "310.5", "Average Content Size": "61"},
                "Aggregated": {"Type": "", "Name": "Aggregated", "Request Count": "5000", "Failure Count": "0"}},
        reconciliation={"acknowledged": 10_000, "gap": 0, "missing": 0},
        failures=["1629000000.000\tGET lookup: no certificate 10 s after the 202"],
        locust_html="locust.html")


def test_the_cpu_chart_has_a_line_per_process_role_and_comes_first(tmp_path):
    # The report reads the keys the sampler writes (it stays standard library, so it names them itself).
    chart = next(chart for chart in report.CHARTS if chart.title == "CPU per process role")
    assert [key for _, key in chart.lines] == [sampling.cpu_key(role) for role in ROLES]
    page = write_report(tmp_path, summary(), cpu_samples()).read_text(encoding="utf-8")
    charts = [parsed(part.split("</figure>")[0]) for part in page.split("<figure>")[1:]]
    assert [root.find(f"{SVG}title").text for root in charts] == ["CPU per process role", "Throughput"]
    cpu = charts[0]
    assert len(list(cpu.iter(f"{SVG}polyline"))) == len(ROLES)
    assert set(ROLES) <= set(texts(cpu)) and "% of one core" in texts(cpu)


def test_the_postgres_chart_has_a_line_for_each_of_whom_the_sampler_splits_postgres_by():
    chart = next(chart for chart in report.CHARTS if chart.title == "Postgres CPU by whom it serves")
    assert chart.lines == tuple((served, sampling.postgres_key(served)) for served, _ in sampling.SERVED)


def test_the_plots_follow_the_figures_and_the_details_are_tables_not_json(tmp_path):
    page = write_report(tmp_path, detailed(), cpu_samples()).read_text(encoding="utf-8")
    order = [page.index(marker) for marker in ("<h2>Thresholds", "<h2>Figures", "<figure>", "<h2>Plan",
                                               "<h2>Locust statistics", "<h2>Reconciliation", "<h2>Phases",
                                               "<h2>Failed requests")]
    assert order == sorted(order)
    assert "<th>server_p99_limit</th>" in page and "<th>gap</th>" in page and "<td>120,270</td>" in page
    assert '<td>POST /v1/doses</td><td class="number">4,200</td>' not in page  # the CSV's text, as given
    assert '<td>POST /v1/doses</td><td class="number">4200</td>' in page and '<td class="number">65</td>' in page
    assert "<th>p99 (ms)</th>" in page and "Average Content Size" not in page
    assert "<td>hold start</td>" in page and "<td>6:52</td>" in page and "<td>16:52</td>" in page
    assert "<td>04:00:00 UTC</td><td>GET lookup: no certificate 10 s after the 202</td>" in page
    assert '{"' not in page and "&quot;" not in page.split("<h2>Plan")[1]  # no JSON dumped anywhere
    assert page.index('href="locust.html"') > page.index("<figure>")


def test_a_key_the_report_does_not_know_is_shown_as_a_table_too(tmp_path):
    page = write_report(tmp_path, summary(memory={"ingest": [210, 216]}, note="ran twice"), []).read_text()
    assert "<h2>memory</h2>" in page and "<th>ingest</th><td>210, 216</td>" in page
    assert "<th>note</th><td>ran twice</td>" in page


def test_posts_stopped_before_their_answer_are_a_table_and_absent_when_there_were_none(tmp_path):
    stopped = ["14400.000\t14431.5\t3\tPOST /v1/doses\tGreenletExit\tanswered when posted again", "not a line"]
    page = write_report(tmp_path, summary(interrupted_posts=stopped), []).read_text(encoding="utf-8")
    assert "<h2>Posts stopped before their answer</h2>" in page
    assert "<td>04:00:00 UTC</td>" in page and "<td>POST /v1/doses GreenletExit answered when posted again</td>" in page
    assert "31.5" in page
    quiet = write_report(tmp_path, summary(interrupted_posts=[]), []).read_text(encoding="utf-8")
    assert "Posts stopped" not in quiet and "interrupted_posts" not in quiet
