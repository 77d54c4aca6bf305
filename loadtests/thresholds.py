"""The thresholds a run must hold, its figures, and the summary printed and written at its end."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from pathlib import Path

from monitoring import names

from .plan import Plan
from .sampling import ROLES, Sample, cpu_percent, outside_percent, postgres_percent, quantile_between, share_within

DOSES_NAME = "POST /v1/doses"
GRACE = 30.0  # seconds after a paced day during which its last batches still count as the day's


# -- thresholds and the summary -----------------------------------------------------

def window(plan: Plan, phases: dict[str, float]) -> tuple[float, float] | None:
    """The measured phase, as epochs: the hold, or the day and its grace for the last posts."""
    if plan.paced:
        start, end = phases.get("day start"), phases.get("day end")
        return (start, end + GRACE) if start and end else None
    start, end = phases.get("hold start"), phases.get("hold end")
    return (start, end) if start and end else None


def at_or_after(samples: list[Sample], epoch: float) -> Sample:
    return next((s for s in samples if s.at >= epoch), samples[-1])


def at_or_before(samples: list[Sample], epoch: float) -> Sample:
    return next((s for s in reversed(samples) if s.at <= epoch), samples[0])


def threshold(name: str, limit: str, measured: str, passed: bool) -> dict:
    return {"name": name, "limit": limit, "measured": measured, "passed": bool(passed)}


def summarize(plan: Plan, started: dt.datetime, t0: float, samples: list[Sample], phases: dict[str, float],
              stats: dict[str, dict], failed: list[str], checked: dict, unexplained: int,
              peaks: dict[str, float], locust_exit: int, drained: float | None,
              *, sustained: float | None = None, measured_stats: dict[str, dict] | None = None) -> dict:
    """`sustained`: overload, the doses/s benchmarks.e2e persisted in the same run (None: not measured).
    `measured_stats`: Locust's statistics of the measured phase by request name (runner.read_measured_stats);
    without them, Locust's final ones (the ramp-down counted too)."""
    measured = window(plan, phases)
    thresholds, figures = [], {}
    doses_row, total_row = stats.get(DOSES_NAME, {}), stats.get("Aggregated", {})
    locust_failures = int(total_row.get("Failure Count", 0) or 0)
    thresholds.append(threshold("failed requests (whole run)", "0", f"{len(failed):,}",
                                not failed and not locust_failures))
    if measured and DOSES_NAME in (measured_stats or {}):
        doses_row = measured_stats[DOSES_NAME]
    client_p99 = float(doses_row.get("99%", "nan") or "nan") / 1000
    overload = plan.shape == "overload"  # past capacity, latency is not the promise; bounded memory and no loss are
    if not overload:
        thresholds.append(threshold("ingest p99, Locust (POST /v1/doses, measured phase)",
                                    f"<= {plan.ingest_p99_limit * 1000:.0f} ms", f"{client_p99 * 1000:.0f} ms",
                                    client_p99 <= plan.ingest_p99_limit))
    if measured and samples:
        _server_figures(plan, samples, phases, measured, thresholds, figures)
        if overload and plan.sustained_doses:
            thresholds.append(goodput(plan, figures["doses accepted/s (server)"], sustained))
    else:
        thresholds.append(threshold("measured phase reached", "yes", "no", False))
    thresholds += _run_thresholds(plan, checked, unexplained, peaks, locust_exit, drained)
    figures.update({
        "Locust requests (measured phase)": int(total_row.get("Request Count", 0) or 0),
        "Locust requests/s": round(float(total_row.get("Requests/s", 0) or 0), 1),
        "Locust POST /v1/doses p50 / p99 over the measured phase (ms)":
            f"{doses_row.get('50%', '-')} / {doses_row.get('99%', '-')}",
        "Locust POST /v1/doses p99 to the end, ramp-down or stop included (ms)":
            stats.get(DOSES_NAME, {}).get("99%", "-"),
        "doses acknowledged (202)": checked["acknowledged"],
        "doses persisted, acknowledged or not": checked["acknowledged"] - checked["missing"]
                                                 + checked["persisted_unacknowledged"],
        "reconciliation gap": checked["gap"],
        "ingest memory peak per process (MiB)": ", ".join(f"{v:.0f}" for v in peaks.values()),
    })
    return {
        "shape": plan.shape, "started_at": started.isoformat(timespec="seconds"),
        "passed": all(t["passed"] for t in thresholds), "plan": dataclasses.asdict(plan),
        "thresholds": thresholds, "figures": figures,
        "phases": {name: round(at - t0, 1) for name, at in phases.items()},
        "reconciliation": checked | {"vaxline_reconcile_unexplained": unexplained},
        "failures": failed[:50], "locust": stats,
    }


def _server_figures(plan: Plan, samples: list[Sample], phases: dict[str, float], measured: tuple[float, float],
                    thresholds: list[dict], figures: dict) -> None:
    """The server's own readings over the measured phase: its thresholds and figures, added."""
    before, after = at_or_after(samples, measured[0]), at_or_before(samples, measured[1])
    b, a = before.snapshot, after.snapshot
    seconds = max(after.at - before.at, 1e-9)
    requests, ingest_share = share_within(b.latency, a.latency, "/v1/doses", plan.ingest_p99_limit)
    if plan.shape != "overload":  # past capacity, latency is not the promise
        thresholds += _latency_thresholds(plan, before, after)
    figures.update({
        "measured window (s)": round(seconds),
        "requests/s (server, all routes)": round((a.value(names.HTTP_REQUESTS)
                                                  - b.value(names.HTTP_REQUESTS)) / seconds, 1),
        "doses accepted/s (server)": round((a.value(names.DOSES_ACCEPTED)
                                           - b.value(names.DOSES_ACCEPTED)) / seconds, 1),
        "ingest p50 / p99, server (ms)": _ms(quantile_between(b.latency, a.latency, "/v1/doses", 0.5),
                                             quantile_between(b.latency, a.latency, "/v1/doses")),
        f"ingest within {plan.ingest_p99_limit * 1000:.0f} ms, server": f"{ingest_share:.3%} of {requests:,.0f}",
        "persisted freshness p50 / p99 (s)": _s(quantile_between(b.freshness, a.freshness, "persisted", 0.5),
                                                quantile_between(b.freshness, a.freshness, "persisted")),
        "202 -> certificate p50 / p99 (s)": _s(quantile_between(b.freshness, a.freshness, "certified", 0.5),
                                               quantile_between(b.freshness, a.freshness, "certified")),
        "CPU over the measured window (% of one core)": cpu_figure(before, after, samples),
    })
    ended = phases["day end"] if plan.paced else measured[1]  # the users run until then
    inside = [s for s in samples if measured[0] + plan.sample_every <= s.at <= ended] or [after]
    held = min(s.snapshot.value(names.OPEN_CONNECTIONS) for s in inside)
    figures["open connections during the window (min / max)"] = (
        f"{held:,.0f} / {max(s.snapshot.value(names.OPEN_CONNECTIONS) for s in inside):,.0f}")
    if plan.shape == "sessions":
        # The target is the desks' sessions; citizens and clerks hold a few connections beside them.
        thresholds.append(threshold("sessions held (server's open connections, min over the hold)",
                                    f">= {plan.desks:,}", f"{held:,.0f}", held >= plan.desks))
    if plan.shape == "day":
        deadline = at_or_before(samples, phases["day end"] + 60)
        persisted = deadline.snapshot.persisted()
        thresholds.append(threshold(f"doses persisted within {plan.within:g} s (+60 s)", f">= {plan.doses:,}",
                                    f"{persisted:,.0f}", persisted >= plan.doses))
    if plan.shape == "overload":
        refused = a.value(names.BACKPRESSURE_REJECTIONS)
        thresholds.append(threshold("503 with Retry-After under overload", "> 0", f"{refused:,.0f}", refused > 0))
        thresholds += memory_flat(samples, measured)


GOODPUT_SHARE = 0.8


def goodput(plan: Plan, accepted_per_s: float, sustained: float | None) -> dict:
    """Under overload, ingest accepts at least 80% of what the stack sustains (the doses/s benchmarks.e2e
    persists in the same run), or of the offered rate were it lower: Retry-After sends clients away for as long as the
    backlog takes to drain, not longer."""
    name = "goodput under overload (doses accepted/s over the window)"
    if sustained is None:
        return threshold(name, f">= {GOODPUT_SHARE:.0%} of the e2e rate", "e2e rate not measured (see e2e.log)",
                         False)
    offered = plan.doses / plan.within
    reference = min(sustained, offered)
    return threshold(name, f">= {GOODPUT_SHARE:.0%} of {reference:,.0f} (e2e persisted {sustained:,.0f}, offered {offered:,.0f})",
                     f"{accepted_per_s:,.0f} ({accepted_per_s / reference:.0%})",
                     accepted_per_s >= GOODPUT_SHARE * reference)


def _latency_thresholds(plan: Plan, before: Sample, after: Sample) -> list[dict]:
    """The server's p99 of POST /v1/doses and of 202 -> certificate between two samples. Both limits are
    bucket bounds of the server's histograms, so "p99 within the limit" is exactly "99% within it"."""
    b, a = before.snapshot, after.snapshot
    requests, served_share = share_within(b.latency, a.latency, "/v1/doses", plan.server_p99_limit)
    served_p99 = quantile_between(b.latency, a.latency, "/v1/doses")
    certified, certified_share = share_within(b.freshness, a.freshness, "certified", plan.certified_p99_limit)
    certified_p99 = quantile_between(b.freshness, a.freshness, "certified")
    return [
        threshold("ingest p99, server (POST /v1/doses, measured phase)", f"<= {plan.server_p99_limit * 1000:.0f} ms",
                  f"{served_p99 * 1000:.0f} ms ({served_share:.2%} within)" if served_p99 is not None
                  else "no requests", requests and served_share >= 0.99),
        threshold("202 -> certificate p99 (server)", f"<= {plan.certified_p99_limit:g} s",
                  f"{certified_p99:.2f} s ({certified_share:.2%} within)" if certified_p99 is not None
                  else "no certificates", certified and certified_share >= 0.99),
    ]


def cpu_figure(before: Sample, after: Sample, samples: list[Sample] = ()) -> str:
    """Each process role's CPU between two samples, in % of one core, and their total beside the cores; then
    what no role accounts for. A role whose processes ended before `after` (Locust exits within the grace after
    the day) counts up to its last reading among `samples`, over the whole window. Postgres' share is followed by
    its split by whom its backends serve, when the samples read them."""
    percent = cpu_percent(before, after)
    seconds = max(after.at - before.at, 1e-9)
    for role, _ in ROLES:
        if role not in percent and role in before.cpu_seconds:
            last = next((s for s in reversed(samples) if before.at < s.at <= after.at and role in s.cpu_seconds), None)
            if last is not None:
                percent[role] = max(0.0, last.cpu_seconds[role] - before.cpu_seconds[role]) / seconds * 100
    if not percent:
        return "not read"
    served = postgres_percent(before, after)
    split = f" (for {', '.join(f'{who} {share:.0f}' for who, share in served.items())})" if served else ""
    roles = ", ".join(f"{role} {percent[role]:.0f}{split if role == 'Postgres' else ''}"
                      for role, _ in ROLES if role in percent)
    figure = f"{roles}; total {sum(percent.values()):.0f} of {(os.cpu_count() or 1) * 100}"
    if outside := outside_percent(before, after, roles=sum(percent.values())):
        figure += f"; beside them, other processes {outside['other']:.0f}, stolen by the hypervisor {outside['steal']:.0f}"
    return figure


def _run_thresholds(plan: Plan, checked: dict, unexplained: int, peaks: dict[str, float], locust_exit: int,
                    drained: float | None) -> list[dict]:
    """What holds for the whole run: memory, acknowledgements, reconciliation, the drain, Locust's exit."""
    heaviest = max(peaks.values(), default=0.0)
    thresholds = []
    thresholds.append(threshold("ingest memory per process (peak)", f"< {plan.ingest_memory_limit_mib:g} MiB",
                                f"{heaviest:.0f} MiB", 0 < heaviest < plan.ingest_memory_limit_mib))
    if plan.shape == "day":
        thresholds.append(threshold("doses acknowledged", f"= {plan.doses:,}", f"{checked['acknowledged']:,}",
                                    checked["acknowledged"] == plan.doses))
    abandoned, in_flight = checked["abandoned_by_clients"], checked.get("in_flight_at_exit", 0)
    thresholds.append(threshold("doses a client started posting and never got a 202 for", "0",
                                f"{abandoned:,}" + (f" ({in_flight:,} in flight when Locust exited)" if abandoned else ""),
                                abandoned == 0))
    thresholds.append(threshold("reconciliation gap (acknowledged, not stored once and certified)", "0",
                                f"{checked['gap']:,}", checked["gap"] == 0))
    thresholds.append(threshold("vaxline reconcile: unexplained", "0", f"{unexplained:,}", unexplained == 0))
    thresholds.append(threshold("drained: every acknowledged dose persisted and certified", "within an hour",
                                "no" if drained is None else f"{drained:.0f} s after Locust stopped",
                                drained is not None))
    thresholds.append(threshold("Locust exited cleanly", "0, or 1 for failed requests", str(locust_exit),
                                locust_exit in (0, 1)))
    return thresholds


def memory_flat(samples: list[Sample], measured: tuple[float, float]) -> list[dict]:
    """Past the first third of the overload (the backlog reaching its bound), memory grows no further."""
    inside = [s for s in samples if measured[0] <= s.at <= measured[1]]
    third = max(1, len(inside) // 3)
    early, late = inside[third: 2 * third] or inside, inside[2 * third:] or inside
    result = []
    for name, read in (("Redis", lambda s: s.redis_memory_mib or 0.0),
                       ("ingest", lambda s: max(s.ingest_rss_mib.values(), default=0.0))):
        first, last = max(map(read, early)), max(map(read, late))
        result.append(threshold(f"{name} memory flat under overload (last third vs. middle third)",
                                "<= +10% + 16 MiB", f"{first:.0f} -> {last:.0f} MiB", last <= first * 1.1 + 16))
    return result


def _ms(p50, p99) -> str:
    return " / ".join("-" if v is None else f"{v * 1000:.0f}" for v in (p50, p99))


def _s(p50, p99) -> str:
    return " / ".join("-" if v is None else f"{v:.2f}" for v in (p50, p99))


def print_summary(summary: dict, folder: Path) -> None:
    print(f"\nvaxline loadtest {summary['shape']}: {'PASSED' if summary['passed'] else 'FAILED'}")
    for t in summary["thresholds"]:
        print(f"  {'pass' if t['passed'] else 'FAIL'}  {t['name']}: {t['measured']} (limit {t['limit']})")
    for name, value in summary["figures"].items():
        print(f"        {name}: {value:,}" if isinstance(value, int) else f"        {name}: {value}")
    print(f"  report: {folder / 'report.html'}\n  summary: {folder / 'summary.json'}", flush=True)
