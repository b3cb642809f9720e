"""The webhook sink against a real HTTP receiver on 127.0.0.1 (http.server in a thread): retries,
idempotency keys, no retry on a 4xx, timeouts, redirects and the URL's secrets."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipelines.core.errors import ParamsError
from pipelines.monitoring import webhook

REPORT = {
    "status": "warning",
    "exit_code": 1,
    "window": {"start": "2026-01-01T00:00:00+00:00", "end": "2026-01-01T01:00:00+00:00"},
    "alerts": [
        {
            "id": "a1",
            "severity": "warning",
            "kind": "drift",
            "condition": "drift:x",
            "message": "m",
            "column": "x",
        },
        {
            "id": "b2",
            "severity": "info",
            "kind": "performance",
            "condition": "performance:too_few_labels",
            "message": "n",
        },
    ],
    "drift": {"features": {"x": {"status": "drift"}}},  # the rest of the report is not sent
}


class Receiver:
    """A loopback HTTP server that answers POSTs with `statuses` in turn (the last one repeats),
    after `delay_s`, and records each request's path, headers and body."""

    def __init__(self, statuses: list[int], delay_s: float = 0.0, location: str = "") -> None:
        self.statuses, self.delay_s, self.location = list(statuses), delay_s, location
        self.requests: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                time.sleep(receiver.delay_s)
                status = receiver.statuses.pop(0) if len(receiver.statuses) > 1 else receiver.statuses[0]
                try:
                    self.send_response(status)
                    if receiver.location:
                        self.send_header("Location", receiver.location)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                except OSError:  # the client gave up (timeout test)
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/s3cr3t-path?token=s3cr3t-query"


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    statuses, delay_s, location = request.param
    r = Receiver(statuses, delay_s, location)
    r.thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()


def deliver(url: str, **overrides: float) -> webhook.Delivery:
    options = {"timeout_s": 2.0, "attempts": 4, "backoff_s": 0.05} | overrides
    return webhook.deliver(REPORT, url, **options)


@pytest.mark.parametrize("receiver", [([503, 500, 200], 0.0, "")], indirect=True)
def test_fails_twice_then_delivers_with_one_key_and_quickly(receiver: Receiver) -> None:
    delivery = deliver(receiver.url)
    assert (delivery.delivered, delivery.attempts, delivery.status) == (True, 3, 200)
    assert len(receiver.requests) == 3
    keys = {r["headers"][webhook.KEY_HEADER] for r in receiver.requests}
    assert len(keys) == 1 and len(keys.pop()) == 32
    # the target on this machine: delivered to a loopback receiver within 2 s, retries included
    assert delivery.seconds <= 2.0
    first = receiver.requests[0]
    assert first["headers"]["Content-Type"] == "application/json"
    sent = json.loads(first["body"])
    assert sent == {k: REPORT[k] for k in ("status", "exit_code", "window", "alerts")}
    assert first["path"] == "/hooks/s3cr3t-path?token=s3cr3t-query"


@pytest.mark.parametrize("receiver", [([400], 0.0, ""), ([404], 0.0, ""), ([422], 0.0, "")], indirect=True)
def test_a_4xx_is_never_retried(receiver: Receiver) -> None:
    delivery = deliver(receiver.url)
    assert (delivery.delivered, delivery.attempts, len(receiver.requests)) == (False, 1, 1)
    assert delivery.status == receiver.statuses[0]


@pytest.mark.parametrize("receiver", [([500], 0.0, "")], indirect=True)
def test_retries_are_bounded_and_back_off(receiver: Receiver) -> None:
    slept: list[float] = []
    delivery = webhook.deliver(
        REPORT, receiver.url, timeout_s=2.0, attempts=4, backoff_s=0.1, sleep=slept.append
    )
    assert (delivery.delivered, delivery.attempts, delivery.status, len(receiver.requests)) == (
        False,
        4,
        500,
        4,
    )
    assert slept == pytest.approx([0.1, 0.2, 0.4])  # between attempts, none after the last


@pytest.mark.parametrize("receiver", [([200], 1.0, "")], indirect=True)
def test_a_receiver_that_hangs_times_out_and_is_retried(receiver: Receiver) -> None:
    delivery = deliver(receiver.url, timeout_s=0.2, attempts=2)
    assert (delivery.delivered, delivery.attempts, delivery.status) == (False, 2, None)
    assert "no answer within 0.2 s" in delivery.reason
    assert len(receiver.requests) == 2
    assert delivery.seconds < 1.0  # two 0.2 s timeouts and a 0.05 s pause, not the receiver's 1 s each


@pytest.mark.parametrize("receiver", [([302], 0.0, "http://203.0.113.1/elsewhere")], indirect=True)
def test_a_redirect_is_not_followed(receiver: Receiver) -> None:
    delivery = deliver(receiver.url)
    assert (delivery.delivered, delivery.attempts, delivery.status) == (False, 1, 302)
    assert "redirects are not followed" in delivery.reason


def test_a_closed_port_is_retried_then_reported() -> None:
    with socket.socket() as s:  # a port nothing listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/"
        delivery = deliver(url, attempts=2, backoff_s=0.0)
    assert (delivery.delivered, delivery.attempts, delivery.status) == (False, 2, None)
    assert delivery.reason.startswith("cannot connect")


@pytest.mark.parametrize("receiver", [([200], 0.0, "")], indirect=True)
def test_credentials_in_the_url_go_in_a_header_and_are_never_printed(receiver: Receiver) -> None:
    url = receiver.url.replace("http://", "http://alice:p%40ss@")
    delivery = deliver(url)
    assert delivery.delivered
    auth = receiver.requests[0]["headers"]["Authorization"]
    assert base64.b64decode(auth.removeprefix("Basic ")) == b"alice:p@ss"
    line = webhook.describe(delivery, url)
    assert line.startswith("alerts delivered to http://127.0.0.1:")
    for secret in ("alice", "p%40ss", "p@ss", "s3cr3t"):
        assert secret not in line


def test_the_key_is_stable_across_reruns_of_a_window_and_changes_with_it() -> None:
    key = webhook.idempotency_key(REPORT)
    rerun = json.loads(json.dumps(REPORT)) | {"generated_at": "later"}  # a rerun: another time stamp
    rerun["alerts"] = list(reversed(rerun["alerts"]))
    assert webhook.idempotency_key(rerun) == key
    next_window = REPORT | {
        "window": {"start": "2026-01-01T01:00:00+00:00", "end": "2026-01-01T02:00:00+00:00"}
    }
    assert webhook.idempotency_key(next_window) != key
    worse = REPORT | {"alerts": [REPORT["alerts"][0] | {"severity": "critical"}]}
    assert webhook.idempotency_key(worse) != key


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", None),
        ("   ", None),
        ("https://hooks.example.com/x", "https://hooks.example.com/x"),
        ("http://127.0.0.1:9000/x", "http://127.0.0.1:9000/x"),
    ],
)
def test_the_url_from_the_environment(value: str, expected: str | None) -> None:
    assert webhook.webhook_url({webhook.URL_ENV: value}) == expected
    assert webhook.webhook_url({}) is None


@pytest.mark.parametrize(
    "value",
    ["file:///etc/passwd", "ftp://host/x", "hooks.example.com/x", "http:///nohost", "http://host:port/x"],
)
def test_other_urls_are_refused_without_echoing_them(value: str) -> None:
    with pytest.raises(ParamsError) as caught:
        webhook.webhook_url({webhook.URL_ENV: value})
    assert webhook.URL_ENV in str(caught.value)
    assert value not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://u:pw@hooks.example.com/services/T0/B0/SECRET?x=1", "https://hooks.example.com/…"),
        ("http://[::1]:8080/a", "http://[::1]:8080/…"),
        ("http://host:notaport/", "<invalid URL>"),
    ],
)
def test_redact_keeps_only_scheme_host_and_port(url: str, shown: str) -> None:
    assert webhook.redact(url) == shown


@pytest.mark.parametrize("options", [{"attempts": 0}, {"timeout_s": 0}, {"backoff_s": -1}])
def test_bad_options_are_refused(options: dict) -> None:
    with pytest.raises(ParamsError):
        deliver("http://127.0.0.1:9/", **options)
