"""Back-entry import: a site's CSV or XLSX file, streamed, into the same stream as POST /v1/doses.

    FILE --read one row at a time (csv; the sheet's XML streamed through expat)--> rows
      --backentry.rows (pure)--> doses; rejected rows --> the error report beside FILE
      --batches of up to 1,000--> the stream: Enqueuer.enqueue, as ingest does (XADD and the accepted
                                  count in one MULTI; Overloaded: wait Retry-After, retry),
                                  or POST /v1/doses with the site's token (503: the same)
      --after each acknowledged batch--> FILE.import-state.json (what --resume goes on after)
      --receipts (the batches table, or GET /v1/batches/{id})--> new, duplicates, pending

Promises: a row counts as sent only once its batch's XADD returned (or its 202 came back), and the
state file never names a later row, so a resumed import never skips a row the stream does not have;
a batch acknowledged but not yet recorded when the import was killed is sent again, and its receipt
counts those doses as duplicates (records are keyed by site and record id: a re-import changes
nothing). Memory stays flat whatever the file's size: a few batches in hand, rows read one at a time.
An XLSX file needs more: its shared-strings table, which the format makes every reader hold whole
(held compactly here). No national ID,
name or phone number reaches a log line or the progress bar: they carry counts, row numbers and
field names; the error report file carries the site's own rejected rows.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vaxline.doses import Dose, FieldError

from .readers import Sheet, UsageError, blank, open_sheet
from .report import ReportFile, file_identity, load_state, report_path, save_state
from .rows import (
    ColumnMap,
    DoseRows,
    ImportState,
)
from .senders import Receipt

BATCH_DOSES = 1000  # POST /v1/doses's limit; one stream entry per batch, as for an HTTP batch
IN_FLIGHT = 4  # batches sent and not yet acknowledged
SHOWN_ERRORS = 20  # rejected rows printed on stderr (all of them are in the report)


# -- the import ------------------------------------------------------------------------------------

@dataclasses.dataclass
class Summary:
    rows: int = 0  # data rows read (blank rows aside)
    accepted: int = 0  # doses in batches the stream acknowledged (those of an interrupted run included)
    rejected: int = 0  # rows in the error report
    skipped: int = 0  # rows an interrupted import had sent already (--resume)
    inserted: int = 0  # from the receipts: new records
    duplicates: int = 0  # from the receipts: records this site had already sent (same record id)
    pending: int = 0  # accepted, no receipt yet (workers not running, or not waited for)
    failed: int = 0  # in dead-lettered batches
    waited: bool = True
    report: Path | None = None

    def lines(self) -> list[str]:
        lines = []
        if self.skipped:
            lines.append(f"resumed: {self.skipped} rows sent by the interrupted import were skipped")
        if self.report:
            lines.append(f"rejected rows and their reasons: {self.report} (fix them there and import that file)")
        if self.failed:
            lines.append(f"{self.failed} doses are in dead-lettered batches (vaxline reconcile shows them)")
        persisted = (f"{self.inserted} new, {self.duplicates} duplicates, {self.pending} pending" if self.waited
                     else f"{self.pending} pending, receipts not waited for")
        lines.append(f"{self.rows} rows: {self.accepted} accepted ({persisted}), {self.rejected} rejected"
                     + (f", {self.failed} failed" if self.failed else ""))
        return lines


@dataclasses.dataclass
class _Batch:
    doses: list[Dose] = dataclasses.field(default_factory=list)
    rows: list[tuple[int, Sequence[Any]]] = dataclasses.field(default_factory=list)  # what ingest may refuse
    rejected: int = 0  # rows rejected since the previous batch (counted beside it, as ingest does)


class _Progress:
    """A tqdm bar on stderr: rows, rows/s and the ETA (the total is estimated from how far reading is).
    It shows counts only: never a value of a row."""

    def __init__(self, sheet: Sheet, enabled: bool | None):
        from tqdm import tqdm

        self._tqdm = tqdm
        self._sheet = sheet
        self._bar = tqdm(unit=" rows", desc="import", file=sys.stderr, disable=None if enabled is None else not enabled,
                         smoothing=0.1, dynamic_ncols=True)

    def update(self, rows: int) -> None:
        fraction = self._sheet.read_fraction()
        if fraction:
            self._bar.total = max(rows, int(rows / fraction))
        self._bar.update(rows - self._bar.n)

    def note(self, text: str) -> None:
        self._tqdm.write(text, file=sys.stderr)

    def close(self) -> None:
        self._bar.close()


class _Import:
    def __init__(self, path: Path, sheet: Sheet, columns: ColumnMap, sender, *, resume: bool, batch_doses: int,
                 clock, progress: bool | None):
        self.path, self.sheet, self.sender = path, sheet, sender
        self.columns = columns
        self.converter = DoseRows(columns, ragged=sheet.kind == "csv")
        self.report = ReportFile(report_path(path, sheet.kind), sheet, columns)
        self.batch_doses = min(batch_doses, BATCH_DOSES)
        self.clock = clock
        self.summary = Summary()
        self.progress = _Progress(sheet, progress)
        self.in_flight: collections.deque[asyncio.Future] = collections.deque()
        self.state = self._state(resume)

    def _state(self, resume: bool) -> ImportState:
        size, mtime_ns = file_identity(self.path)
        previous = load_state(self.path) if resume else None
        if previous is not None and previous.matches(size=size, mtime_ns=mtime_ns, site=self.sender.site):
            return previous
        if resume:
            self.progress.note("no interrupted import of this file (same size and time) for this site:"
                               " importing from the first row")
        elif (earlier := load_state(self.path)) and not earlier.complete and earlier.matches(
                size=size, mtime_ns=mtime_ns, site=self.sender.site):
            self.progress.note(f"an interrupted import of this file had sent rows up to {earlier.last_row}:"
                               " --resume would skip them; importing from the first row (records already"
                               " sent count as duplicates)")
        state = ImportState(file=self.path.name, size=size, mtime_ns=mtime_ns, site=self.sender.site)
        try:
            save_state(self.path, state)
        except OSError as e:
            raise UsageError(f"cannot write the state file beside the file: {e.strerror or e}") from None
        return state

    async def run(self, *, wait: bool, wait_timeout: float) -> Summary:
        try:
            await self._send_rows()
            self.summary.report = self.report.finish()
        except BaseException:
            self.report.discard()
            raise
        finally:
            self.progress.close()
        self.summary.accepted = sum(doses for _, doses in self.state.batches)
        await self._receipts(wait, wait_timeout)
        return self.summary

    async def _send_rows(self) -> None:
        try:
            await self._read_and_send()
        except self.sheet.failure as e:  # the file is damaged past its header
            raise UsageError(f"cannot read the file after {self.summary.rows} rows: {type(e).__name__}: {e}") from None
        finally:
            for task in self.in_flight:
                task.cancel()
            await asyncio.gather(*self.in_flight, return_exceptions=True)

    async def _read_and_send(self) -> None:
        summary, skip_to = self.summary, self.state.last_row
        batch, last_row = _Batch(), 0
        now = self.clock(dt.timezone.utc)
        for number, cells in self.sheet.rows:
            last_row = number
            if blank(cells):
                continue
            summary.rows += 1
            dose = self.converter.convert(cells, now)
            if type(dose) is list:
                self._reject(number, cells, dose)
                batch.rejected += number > skip_to
            elif number <= skip_to:
                summary.skipped += 1
            else:
                batch.doses.append(dose)
                batch.rows.append((number, cells))
                if len(batch.doses) >= self.batch_doses:
                    await self._dispatch(batch)
                    batch, now = _Batch(), self.clock(dt.timezone.utc)
            if summary.rows % 1000 == 0:
                self.progress.update(summary.rows)
        if batch.doses:
            await self._dispatch(batch)
        while self.in_flight:
            self._acknowledged(*await self.in_flight.popleft())
        if batch.rejected and not batch.doses:
            await self.sender.count_rejected(batch.rejected)
        self.progress.update(summary.rows)
        self.state.complete, self.state.last_row = True, max(self.state.last_row, last_row)
        save_state(self.path, self.state)

    async def _dispatch(self, batch: _Batch) -> None:
        """Send `batch` while the next ones are read: up to IN_FLIGHT batches at once (Redis then fsyncs
        several in one write), acknowledged in file order, so the state file only ever names a row all
        of whose batches the stream has."""
        if len(self.in_flight) >= IN_FLIGHT:
            self._acknowledged(*await self.in_flight.popleft())
        self.in_flight.append(asyncio.ensure_future(self._send(batch)))
        await asyncio.sleep(0)  # let it write its request before this loop goes back to reading

    async def _send(self, batch: _Batch):
        batch_id, refused = await self.sender.send(batch.doses, batch.rejected)
        return batch, batch_id, refused

    def _acknowledged(self, batch: _Batch, batch_id: str | None, refused) -> None:
        """The stream has the batch (and every batch before it): record it in the state file."""
        for index, errors in refused:
            self._reject(*batch.rows[index], errors)
        if batch_id is not None:
            self.state.batches.append((batch_id, len(batch.doses) - len(refused)))
        self.state.last_row = batch.rows[-1][0]
        save_state(self.path, self.state)

    def _reject(self, number: int, cells: Sequence[Any], errors: list[FieldError]) -> None:
        self.summary.rejected += 1
        self.report.add(number, cells, errors)
        if self.summary.rejected <= SHOWN_ERRORS:  # row numbers and field names: never a value
            for error in errors:
                self.progress.note(f"row {number}: {self.columns.label(error.field)}: {error.reason}")
        elif self.summary.rejected == SHOWN_ERRORS + 1:
            self.progress.note("... more rejected rows: every one is in the error report")

    async def _receipts(self, wait: bool, timeout: float) -> None:
        """Wait for the receipts of every batch (persisted by the workers) until none came for `timeout` s."""
        summary, batches = self.summary, dict(self.state.batches)
        summary.waited = wait
        receipts: dict[str, Receipt] = {}
        waiting = list(batches)
        last_news = time.monotonic()
        while wait and waiting:
            found = await self.sender.receipts(waiting)
            if found:
                receipts.update(found)
                waiting = [b for b in waiting if b not in found]
                last_news = time.monotonic()
            elif time.monotonic() - last_news > timeout:
                break
            if waiting:
                await asyncio.sleep(0.2)
        for batch_id, doses in batches.items():
            receipt = receipts.get(batch_id)
            if receipt is None:
                summary.pending += doses
            elif receipt.failed:
                summary.failed += doses
            else:
                summary.inserted += receipt.inserted
                summary.duplicates += receipt.duplicates


async def import_file(path: Path, sender, *, resume: bool = False, wait: bool = True, wait_timeout: float = 30.0,
                      batch_doses: int = BATCH_DOSES, clock=dt.datetime.now, progress: bool | None = None) -> Summary:
    """Import one file through `sender` (a StreamSender or an HttpSender, entered); UsageError when it
    cannot start. `progress`: None shows the bar on a terminal only."""
    sheet, columns = open_sheet(path)
    try:
        job = _Import(path, sheet, columns, sender, resume=resume, batch_doses=batch_doses, clock=clock,
                      progress=progress)
        return await job.run(wait=wait, wait_timeout=wait_timeout)
    finally:
        sheet.close()
