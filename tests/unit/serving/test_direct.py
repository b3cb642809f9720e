"""pipelines/serving/direct.py: POST /predict without the FastAPI app gives what the FastAPI route gives.

The oracle is FastAPI itself: the same body goes to the service's FastAPI app (app.create_app,
whose route FastAPI parses and validates) and to the direct endpoint, and the status, the body
(the request id aside), the headers that matter and the outcomes counted must be the same.
"""

import asyncio
import json
from types import SimpleNamespace

import pytest
from helpers import asgi

from pipelines.serving import app as service_app
from pipelines.serving import direct
from pipelines.serving.batcher import Overloaded

FIELDS = {
    "n": {"type": "number", "nullable": True, "minimum": 0.0, "maximum": 10.0},
    "k": {"type": "integer", "nullable": False, "minimum": 0, "maximum": 5},
    "c": {"type": "string", "nullable": False, "allowed": ["a", "b"]},
    "s": {"type": "string", "nullable": True},
}
META = {
    "fields": FIELDS,
    "optional_fields": {"id": {"type": "integer", "nullable": True}},
    "limits": {
        "max_records": 3,
        "max_body_bytes": 4096,
        "max_string_length": 8,
        "max_queue_rows": 100,
        "body_timeout_seconds": 2,
    },
    "registered_model": "m",
    "version": "7",
    "tracking_uri": "sqlite:///nowhere.db",
}
GOOD = {"n": 1.5, "k": 2, "c": "a", "s": "x"}


class Batcher:
    def __init__(self, fails: BaseException | None) -> None:
        self.fails = fails
        self.seen: list[list[dict]] = []

    async def submit(self, rows):
        self.seen.append(rows)
        if self.fails is not None:
            raise self.fails
        return [f"p{r['k']}" for r in rows], [{"a": 0.25, "b": 0.75} for _ in rows]


class Worker:
    """The parts of serving/worker.Worker that /predict touches, recording what is counted."""

    def __init__(self, fails: BaseException | None = None) -> None:
        self.counted: list[tuple[str, str | None]] = []
        self.arm = SimpleNamespace(version="7", batcher=Batcher(fails))
        self.serving = SimpleNamespace(mode="off", route=lambda key: ("champion", self.arm, None))
        self.monitor = None
        self.routing_field = None
        self.records = SimpleNamespace(inc=lambda n: self.counted.append(("records", str(n))))
        self.latency = SimpleNamespace(observe=lambda s: None)

    def count(self, outcome: str, role: str | None = None) -> None:
        self.counted.append((outcome, role))


def call(asgi_app, raw: bytes, content_type: str = "application/json") -> tuple[int, dict, dict]:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(raw)).encode())]
    sent = asgi.post(asgi_app, raw, headers)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))
    body.pop("request_id", None)  # a fresh id per request, on both paths
    kept = {
        k.decode(): v.decode() for k, v in start["headers"] if k.lower() in (b"retry-after", b"connection")
    }
    return start["status"], body, kept


async def not_found(scope, receive, send):
    raise AssertionError("DirectPredict passed POST /predict on")


def both(raw: bytes, content_type: str = "application/json", fails: BaseException | None = None):
    """(FastAPI route's answer and counts, direct endpoint's answer and counts) for one body."""
    results = []
    for build in (
        lambda ref: service_app.create_app(META, ref),
        lambda ref: direct.DirectPredict(not_found, direct.predict_endpoint(META, ref)),
    ):
        worker = Worker(fails)
        answer = call(build(lambda w=worker: w), raw, content_type)
        results.append((answer, worker.counted, worker.arm.batcher.seen))
    return results


def records(*rows) -> bytes:
    return json.dumps({"records": list(rows)}).encode()


BODIES = {
    "one record": records(GOOD),
    "three records with an id": records(GOOD, {**GOOD, "k": 5, "id": 3}, {**GOOD, "n": None, "s": None}),
    "empty": b"",
    "not JSON": b"{bad",
    "truncated": b'{"records": [',
    "a JSON array": b"[1, 2]",
    "a string": b'"records"',
    "null": b"null",
    "deep nesting": b"[" * 100_000,
    "a huge integer": b'{"records": [{"k": ' + b"1" * 5000 + b"}]}",
    "invalid UTF-8": b'{"records": "\xff\xfe\xfa"}',
    "no records": records(),
    "too many records": records(GOOD, GOOD, GOOD, GOOD),
    "records not a list": b'{"records": {"k": 1}}',
    "a key outside the contract": records({**GOOD, "secret-key-name": 1}),
    "a key outside the request": b'{"records": [], "other": 1}',
    "a missing feature": records({"n": 1.0, "c": "a"}),
    "NaN": b'{"records": [{"n": NaN, "k": 1, "c": "a"}]}',
    "Infinity": b'{"records": [{"n": Infinity, "k": 1, "c": "a"}]}',
    "a string for a number": records({**GOOD, "n": "1.5"}),
    "a boolean for a number": records({**GOOD, "n": True}),
    "a float for an integer": records({**GOOD, "k": 1.5}),
    "out of range": records({**GOOD, "k": 6}),
    "not an allowed value": records({**GOOD, "c": "z"}),
    "too long a string": records({**GOOD, "s": "x" * 9}),
    "duplicate keys": b'{"records": [{"n": 1, "k": 1, "c": "a", "k": 9}]}',
    "too large": records(*[GOOD] * 200),
}


@pytest.mark.parametrize("name", list(BODIES))
def test_every_body_gets_the_fastapi_routes_answer_and_counts(name):
    (route, route_counted, route_seen), (direct_, direct_counted, direct_seen) = both(BODIES[name])
    assert direct_ == route
    assert direct_counted == route_counted
    assert direct_seen == route_seen  # the model saw the same rows, or none


def test_the_cases_cover_answers_and_each_kind_of_refusal():
    """The table above reaches every branch: a 200, 400 malformed JSON, 400 empty, 400 FastAPI's
    own parse failure, 413 and 422 (else a case would be comparing nothing new)."""
    seen = set()
    for raw in BODIES.values():
        (status, body, _), _, _ = both(raw)[1]
        seen.add((status, body.get("error")))
    assert {
        (200, None),
        (400, "malformed_json"),
        (400, "empty_body"),
        (400, "malformed"),
        (413, "body_too_large"),
        (422, "invalid_request"),
    } <= seen


def test_a_wrong_media_type_gets_the_same_415():
    route, direct_ = both(records(GOOD), content_type="text/plain")
    assert direct_[:2] == route[:2]
    assert direct_[0][0] == 415


@pytest.mark.parametrize("fails", [Overloaded(), RuntimeError("model broke")])
def test_a_model_that_fails_or_overflows_gets_the_same_answer(fails):
    route, direct_ = both(records(GOOD), fails=fails)
    assert direct_[:2] == route[:2]
    assert direct_[0][0] in (500, 503)
    assert "model broke" not in json.dumps(direct_[0][1])


def test_other_paths_and_methods_go_on_to_the_app():
    passed = []

    async def app(scope, receive, send):
        passed.append((scope.get("method"), scope.get("path", scope["type"])))

    middleware = direct.DirectPredict(app, endpoint=not_found)
    for method, path in (("GET", "/predict"), ("POST", "/feedback"), ("POST", "/predict/x")):
        scope = {"type": "http", "method": method, "path": path, "headers": []}
        asyncio.run(middleware(scope, None, None))
    asyncio.run(middleware({"type": "lifespan"}, None, None))
    assert passed == [("GET", "/predict"), ("POST", "/feedback"), ("POST", "/predict/x"), (None, "lifespan")]
