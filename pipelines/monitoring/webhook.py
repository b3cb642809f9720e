"""The webhook sink: POST a window's alerts as JSON to the URL in `MONITOR_WEBHOOK_URL`.

Delivery is at-least-once, made safe to repeat by an `Idempotency-Key` header derived from the
report (its window, status and alerts), so a retry, or a rerun of the monitor over the same
window, carries the same key and a receiver that honours it acts once. Retries are bounded and
back off; they happen only where a retry can help (5xx, a timeout, a refused connection), never
on a 4xx, which would fail the same way again. Redirects are not followed at all: a POST
redirected elsewhere would carry the alerts to a host nobody configured.

The standard library's urllib does the HTTP: one POST a run needs no client beyond it. Only the
URL's scheme, host and port are ever printed: webhook URLs often carry their secret in the user
part, the path (chat webhooks) or the query.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from pipelines.core.errors import ParamsError

URL_ENV = "MONITOR_WEBHOOK_URL"
KEY_HEADER = "Idempotency-Key"


@dataclass(frozen=True)
class Delivery:
    delivered: bool
    attempts: int
    status: int | None  # the last HTTP status, None when no answer came
    reason: str  # one readable line, without the URL's secrets
    seconds: float


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises the 3xx as an HTTPError, which `deliver` reports


def webhook_url(env: Mapping[str, str] | None = None) -> str | None:
    """The webhook URL from the environment, checked; None when it is unset or empty."""
    url = (os.environ if env is None else env).get(URL_ENV, "").strip()
    if not url:
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ParamsError(f"{URL_ENV} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ParamsError(f"{URL_ENV} must be an http:// or https:// URL with a host")
    return url


def redact(url: str) -> str:
    """scheme://host[:port] only: the user, password, path and query may all be secrets."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid URL>"
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}{port}/…"


def idempotency_key(report: Mapping[str, Any]) -> str:
    """A key from what the report says (window, status, alerts), not when it was made: the same
    on every retry and on every rerun over the same window and findings."""
    alerts = sorted(
        (a.get("condition", ""), a.get("severity", ""), a.get("column") or "")
        for a in report.get("alerts", [])
    )
    basis = {"window": report.get("window"), "status": report.get("status"), "alerts": alerts}
    canonical = json.dumps(basis, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def payload(report: Mapping[str, Any]) -> bytes:
    """The body: the report's status, window and alerts (not the whole report: no log values)."""
    body = {k: report.get(k) for k in ("status", "exit_code", "window", "alerts")}
    return json.dumps(body, separators=(",", ":"), default=str).encode()


def credentials(url: str) -> tuple[str, dict[str, str]]:
    """The URL without its `user:password@`, and those as a Basic `Authorization` header: urllib
    would otherwise take them for part of the host name."""
    parts = urlsplit(url)
    if parts.username is None:
        return url, {}
    host = parts.netloc.rpartition("@")[2]
    bare = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    return bare, {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


def retryable(status: int | None) -> bool:
    """No answer (timeout, refused) or a 5xx may pass on a retry; a 3xx or 4xx will not."""
    return status is None or status >= 500


def backoff(attempt: int, base_s: float) -> float:
    """The wait after failed attempt `attempt` (1-based): base, 2 x base, 4 x base, …"""
    return base_s * 2 ** (attempt - 1)


def post_once(url: str, body: bytes, key: str, timeout_s: float) -> tuple[int | None, str]:
    """One POST: the status (None when no answer came) and a readable reason."""
    bare, auth = credentials(url)
    request = urllib.request.Request(
        bare,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            KEY_HEADER: key,
            "User-Agent": "tabular-mlops-monitor",
            **auth,
        },
    )
    opener = urllib.request.build_opener(_NoRedirects)
    try:
        with opener.open(request, timeout=timeout_s) as answer:
            return answer.status, f"HTTP {answer.status}"
    except urllib.error.HTTPError as exc:
        exc.close()
        note = "; redirects are not followed, set the final URL" if 300 <= exc.code < 400 else ""
        return exc.code, f"HTTP {exc.code}{note}"
    except TimeoutError:
        return None, f"no answer within {timeout_s:g} s"
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError | socket.timeout):
            return None, f"no answer within {timeout_s:g} s"
        return None, f"cannot connect ({type(reason).__name__})"
    except OSError as exc:  # reset mid-answer, and the like
        return None, f"connection failed ({type(exc).__name__})"


def deliver(
    report: Mapping[str, Any],
    url: str,
    timeout_s: float,
    attempts: int,
    backoff_s: float,
    sleep: Callable[[float], None] = time.sleep,
) -> Delivery:
    """POSTs the report's alerts, retrying as `retryable` allows, at most `attempts` times.
    Never raises for the network: the outcome is in the `Delivery`, for one line of output."""
    if attempts < 1 or timeout_s <= 0 or backoff_s < 0:
        raise ParamsError("monitor.alerts.webhook: attempts >= 1, timeout_s > 0 and backoff_s >= 0")
    started = time.monotonic()
    body, key = payload(report), idempotency_key(report)
    status, reason = None, "not sent"
    for attempt in range(1, attempts + 1):
        status, reason = post_once(url, body, key, timeout_s)
        if status is not None and 200 <= status < 300:
            return Delivery(True, attempt, status, reason, time.monotonic() - started)
        if not retryable(status) or attempt == attempts:
            break
        sleep(backoff(attempt, backoff_s))
    return Delivery(False, attempt, status, reason, time.monotonic() - started)


def describe(delivery: Delivery, url: str) -> str:
    """One line for the monitor's output, naming only the URL's scheme, host and port."""
    where = redact(url)
    if delivery.delivered:
        return f"alerts delivered to {where} ({delivery.reason}, attempt {delivery.attempts}, {delivery.seconds:.2f} s)"
    return f"alerts NOT delivered to {where}: {delivery.reason} after {delivery.attempts} attempt(s)"
