"""Paced /predict load for the zero-failure tests (tests/e2e and tests/remote).

One client, one keep-alive connection, a fixed request rate, in a thread. What counts:

- ``statuses``: every answer by status (anything but 200 is a failure);
- ``errors``: transport errors (a failure);
- ``retried``: requests sent again once, by the rule browsers, curl and Go's ``net/http`` apply
  to keep-alive connections: a request on a *reused* connection that the server closed
  before sending any byte of an answer is sent once more on a new connection. An nginx reload
  does exactly that to idle keep-alive connections (the old workers close them); a request
  written at that instant meets a closed connection. A retry that fails again is an error.

A request counts as "on a reused connection" when httpcore opened no TCP connection for it
(its trace has no ``connection.connect_tcp`` event), and as "closed before any byte" when
httpcore reports ``Server disconnected without sending a response`` (zero bytes read), could
not write the request (``WriteError``), or had its read reset while waiting for the response
headers (``ReadError`` inside ``http11.receive_response_headers``: no response at all).
Nothing else is retried: a timeout, a reset once headers arrived, a fresh connection's error.
"""

from __future__ import annotations

import collections
import ssl
import threading
import time
from collections.abc import Callable, Iterable

import httpx

CLOSED_BEFORE_ANSWER = "Server disconnected without sending a response"


def closed_before_answer(exc: httpx.HTTPError, events: list[str]) -> bool:
    """The server closed (or reset) the connection before any answer: see the module doc."""
    if isinstance(exc, httpx.WriteError):
        return True
    if isinstance(exc, httpx.ReadError):
        return "http11.receive_response_headers.failed" in events
    return isinstance(exc, httpx.RemoteProtocolError) and CLOSED_BEFORE_ANSWER in str(exc)


def post_with_keepalive_retry(
    client: httpx.Client, url: str, **kwargs
) -> tuple[httpx.Response, bool]:
    """POST; retry once per the keep-alive rule above. Returns (response, retried)."""
    events: list[str] = []
    kwargs.setdefault("extensions", {})["trace"] = lambda name, _info: events.append(name)
    try:
        return client.post(url, **kwargs), False
    except httpx.HTTPError as exc:
        reused = not any(e.startswith("connection.connect_tcp") for e in events)
        if not (reused and closed_before_answer(exc, events)):
            raise
    kwargs["extensions"] = {}
    return client.post(url, **kwargs), True


class PacedLoad(threading.Thread):
    """POST /predict at ``rate`` requests per second on one keep-alive connection until stopped.

    ``headers`` is a cycle of header sets (e.g. the two A/B cohorts, alternately); each answer
    is recorded with its cohort index, time and ``X-Mlgate-Replica``/``X-Mlgate-Build``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        ca: str,
        auth: tuple[str, str],
        rate: float = 8.0,
        headers: Iterable[dict[str, str]] = ({},),
        sentence: str = "steady load",
        timeout: float = 15,
        on_answer: Callable[[httpx.Response], None] | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.base_url, self.ca, self.auth = base_url, ca, auth
        self.interval = 1.0 / rate
        self.cohorts = list(headers)
        self.sentence, self.timeout, self.on_answer = sentence, timeout, on_answer
        self.stopping = threading.Event()
        self.statuses: collections.Counter = collections.Counter()
        self.by_cohort: list[collections.Counter] = [collections.Counter() for _ in self.cohorts]
        self.errors: list[str] = []
        self.retried = 0
        self.seen: list[tuple[float, str]] = []  # (time, replica) of every answer
        self.sent_times: list[float] = []  # time.monotonic() each request went out
        self.started = time.monotonic()
        # every answer but 200 and every transport error: (seconds since start, cohort index,
        # status or error, X-Request-ID), to find them in the gateway's access log
        self.failures: list[tuple[float, int, str, str]] = []
        self.builds: list[str] = []  # X-Mlgate-Build of every 200 (a code rollout's marker)

    def run(self) -> None:
        tls = ssl.create_default_context(cafile=self.ca)
        with httpx.Client(base_url=self.base_url, verify=tls, timeout=self.timeout) as c:
            next_at = time.monotonic()
            n = 0
            while not self.stopping.is_set():
                cohort = n % len(self.cohorts)
                n += 1
                sent_at = time.monotonic()
                self.sent_times.append(sent_at)
                try:
                    r, again = post_with_keepalive_retry(
                        c,
                        "/predict",
                        json={"sentence": self.sentence},
                        auth=self.auth,
                        headers=self.cohorts[cohort],
                    )
                    self.retried += again
                    self.statuses[r.status_code] += 1
                    self.by_cohort[cohort][r.status_code] += 1
                    if r.status_code != 200:
                        self.failures.append(
                            (sent_at - self.started, cohort, str(r.status_code),
                             r.headers.get("x-request-id", ""))
                        )  # fmt: skip
                    self.seen.append((time.monotonic(), r.headers.get("x-mlgate-replica", "")))
                    if r.status_code == 200:
                        self.builds.append(r.headers.get("x-mlgate-build", ""))
                    if self.on_answer:
                        self.on_answer(r)
                except httpx.HTTPError as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    self.by_cohort[cohort]["transport error"] += 1
                    self.failures.append((sent_at - self.started, cohort, type(exc).__name__, ""))
                # Never faster than `rate`: after a slow answer the schedule restarts from that
                # request instead of catching up in a burst (which a rate limiter would refuse).
                next_at = max(next_at, sent_at) + self.interval
                time.sleep(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> PacedLoad:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        self.join(60)

    @property
    def sent(self) -> int:
        return sum(self.statuses.values()) + len(self.errors)

    def failed(self) -> dict:
        return {
            "by_status": {s: n for s, n in self.statuses.items() if s != 200},
            "transport": len(self.errors),
        }

    def report(self) -> str:
        cohorts = ""
        if len(self.cohorts) > 1:
            cohorts = "; per cohort " + ", ".join(
                f"{h or 'no header'}: {dict(c)}"
                for h, c in zip(self.cohorts, self.by_cohort, strict=True)
            )
        return (
            f"sent {self.sent}, failed by status {self.failed()['by_status']}, transport errors "
            f"{len(self.errors)}, retried once on a closed keep-alive connection {self.retried}"
            f"{cohorts}"
        )

    def assert_no_failure(self, max_retried: int = 0) -> None:
        """Every request answered 200 (after at most one keep-alive retry each), no more retries
        than ``max_retried`` (0 when nothing is expected to close the connection)."""
        timeline = "; ".join(
            f"{t:.1f} s cohort {c} {what} {rid}".rstrip() for t, c, what, rid in self.failures[:40]
        )
        assert self.errors == [], f"{self.errors[:5]} (failures: {timeline})"
        assert set(self.statuses) == {200}, f"{self.statuses} (failures: {timeline})"
        assert self.retried <= max_retried, f"{self.retried} retries: {self.report()}"
