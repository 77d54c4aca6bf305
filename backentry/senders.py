"""Where the batches go: the stream directly (as ingest enqueues), or POST /v1/doses with the site's token."""


from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
from collections.abc import Callable

import msgspec

from storage.sites import site_by_code
from vaxline.config import Settings
from vaxline.doses import Dose, FieldError

from .readers import UsageError

_json = msgspec.json.Encoder()

# -- where the batches go: the stream directly, or POST /v1/doses ----------------------------------------

@dataclasses.dataclass
class Receipt:
    inserted: int = 0
    duplicates: int = 0
    failed: bool = False


class StreamSender:
    """Enqueues each batch exactly as ingest does for an HTTP batch (vaxline.enqueue.Enqueuer: XADD and
    the accepted count in one MULTI, the backlog bound honoured) and reads receipts from Postgres."""

    def __init__(self, settings: Settings, site_code: str, *, on_wait: Callable[[str, float], None] = lambda *_: None):
        self._settings = settings
        self.site = site_code
        self._on_wait = on_wait
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> "StreamSender":
        import asyncpg

        from vaxline.enqueue import Enqueuer
        from vaxline.streams import ShardCountMismatch, connect_redis

        try:
            self._db = await self._stack.enter_async_context(_closing(await asyncpg.connect(self._settings.database_url)))
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            raise UsageError(f"cannot reach Postgres ({type(e).__name__})") from None
        site = await site_by_code(self._db, self.site)
        if site is None:
            await self._stack.aclose()
            raise UsageError(f"no site with code {self.site!r} (`vaxline sites add` or `sites import` registers it)")
        if not site["active"]:
            await self._stack.aclose()
            raise UsageError(f"site {self.site} is deactivated (`vaxline sites activate {self.site}`)")
        self._site_id = site["site_id"]
        redis = connect_redis(self._settings)
        self._stack.push_async_callback(redis.aclose)
        self._enqueuer = Enqueuer(redis, self._settings)
        try:
            await self._enqueuer.start()
        except ShardCountMismatch as e:
            await self._stack.aclose()
            raise UsageError(str(e)) from None
        self._stack.push_async_callback(self._enqueuer.stop)
        return self

    async def __aexit__(self, *exc) -> None:
        await self._stack.aclose()

    async def send(self, doses: list[Dose], rejected: int) -> tuple[str, list[tuple[int, list[FieldError]]]]:
        """(batch id, the doses refused: none here, the rules are the ones just applied)."""
        from vaxline.enqueue import Overloaded

        while True:
            try:
                self._enqueuer.check_capacity()
                return await self._enqueuer.enqueue(site_id=self._site_id, doses=doses, rejected=rejected), []
            except Overloaded as e:
                self._on_wait(str(e), e.retry_after)
                await asyncio.sleep(e.retry_after)

    async def count_rejected(self, rejected: int) -> None:
        """Rejected rows after the last batch: counted as ingest counts a batch with nothing valid."""
        await self._enqueuer.count_rejected(site_id=self._site_id, rejected=rejected)

    async def receipts(self, batch_ids: list[str]) -> dict[str, Receipt]:
        found = {r["batch_id"]: Receipt(r["inserted"], r["duplicates"]) for r in await self._db.fetch(
            "SELECT batch_id, inserted, duplicates FROM batches WHERE batch_id = ANY($1::text[])", batch_ids)}
        for r in await self._db.fetch("SELECT batch_id FROM dead_letters WHERE batch_id = ANY($1::text[])",
                                      [b for b in batch_ids if b not in found]):
            found[r["batch_id"]] = Receipt(failed=True)
        return found


@contextlib.asynccontextmanager
async def _closing(conn):
    try:
        yield conn
    finally:
        await conn.close()


class HttpSender:
    """POST /v1/doses with the site's token, as a desk would; 503 and lost connections are retried
    after Retry-After (a retried batch that had gone through is counted a duplicate by its receipt)."""

    def __init__(self, url: str, token: str, *, on_wait: Callable[[str, float], None] = lambda *_: None):
        self._url = url.rstrip("/").removesuffix("/v1/doses")
        self._token = token
        self._on_wait = on_wait
        # The state file names the deployment and the token's site without storing the token.
        self.site = f"{self._url} token:{hashlib.sha256(token.encode()).hexdigest()[:12]}"

    async def __aenter__(self) -> "HttpSender":
        import aiohttp

        self._session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {self._token}"},
                                              timeout=aiohttp.ClientTimeout(total=120))
        return self

    async def __aexit__(self, *exc) -> None:
        await self._session.close()

    async def send(self, doses: list[Dose], rejected: int) -> tuple[str | None, list[tuple[int, list[FieldError]]]]:
        """(batch id, or None when ingest refused every dose; the doses it refused, by index, with why)."""
        import aiohttp

        body = _json.encode({"doses": doses})
        failures = 0
        while True:
            try:
                async with self._session.post(f"{self._url}/v1/doses", data=body,
                                              headers={"Content-Type": "application/json"}) as response:
                    if response.status == 202:
                        answer = await response.json()
                        return answer["batch_id"], [
                            (item["index"], [FieldError(field=e["field"], reason=e["reason"]) for e in item["errors"]])
                            for item in answer["rejected"]]
                    await self._refused(response)
                    wait = float(response.headers.get("Retry-After", "5"))
                    self._on_wait(f"ingest answered {response.status}", wait)
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as e:
                failures += 1
                if failures > 10:
                    raise UsageError(f"ingest at {self._url} cannot be reached ({type(e).__name__})") from None
                wait = min(30.0, 2.0 ** failures)
                self._on_wait(f"ingest cannot be reached ({type(e).__name__})", wait)
            await asyncio.sleep(wait)

    async def count_rejected(self, rejected: int) -> None:
        """Nothing to do: ingest counts only what it is sent."""

    async def _refused(self, response) -> None:
        if response.status == 503:
            return
        try:
            error = (await response.json()).get("error", "")
        except Exception:
            error = (await response.text())[:200]
        raise UsageError(f"ingest refused the batch: {response.status} {error}")

    async def receipts(self, batch_ids: list[str]) -> dict[str, Receipt]:
        import aiohttp

        found: dict[str, Receipt] = {}
        limit = asyncio.Semaphore(8)

        async def one(batch_id: str) -> None:
            async with limit:
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with self._session.get(f"{self._url}/v1/batches/{batch_id}") as response:
                        if response.status == 200:
                            body = await response.json()
                            if body["status"] == "persisted":
                                found[batch_id] = Receipt(body["inserted"], body["duplicates"])
                            elif body["status"] == "failed":
                                found[batch_id] = Receipt(failed=True)

        await asyncio.gather(*(one(b) for b in batch_ids))
        return found
