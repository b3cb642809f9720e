"""pipelines/serving/middleware.py: Front, driven as plain ASGI around real inner layers.

The inner layers are BentoML's own traffic middlewares and real Starlette/FastAPI apps, so the
foreign answers rewritten here are the ones those layers really give.
"""

import asyncio
import json

import pytest
from bentoml._internal.server.http.traffic import MaxConcurrencyMiddleware, TimeoutMiddleware
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from pipelines.serving.auth import ApiKeys
from pipelines.serving.middleware import Deadline, Front, known_routes
from pipelines.serving.responses import error

KEY = b"k-123"
ROUTES = {
    "/predict": frozenset({"POST"}),
    "/metadata": frozenset({"GET", "HEAD"}),
    "/livez": frozenset({"GET", "HEAD"}),
    "/readyz": frozenset({"GET", "HEAD"}),
    "/metrics": frozenset({"GET", "HEAD"}),
}


class Client:
    """One connection's server side: hands out the request's messages, records what is sent."""

    def __init__(self, body: bytes = b"{}") -> None:
        self.pending = [{"type": "http.request", "body": body, "more_body": False}]
        self.received = 0
        self.sent: list[dict] = []

    async def receive(self) -> dict:
        self.received += 1
        return self.pending.pop(0) if self.pending else {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return next(m["status"] for m in self.sent if m["type"] == "http.response.start")

    @property
    def headers(self) -> dict[str, str]:
        start = next(m for m in self.sent if m["type"] == "http.response.start")
        return {k.decode().lower(): v.decode() for k, v in start["headers"]}

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


class Inner:
    """An app that reads the body and answers 200, recording that it was called."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope, receive, send):
        self.calls += 1
        await receive()
        await PlainTextResponse("inner")(scope, receive, send)


def scope(method="POST", path="/predict", token: bytes | None = KEY, **headers: str) -> dict:
    raw = [(b"content-type", b"application/json")]
    if token is not None:
        raw.append((b"authorization", b"Bearer " + token))
    raw += [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return {"type": "http", "method": method, "path": path, "headers": raw, "query_string": b""}


def run(front: Front, request: dict, client: Client | None = None) -> Client:
    client = client or Client()
    asyncio.run(asyncio.wait_for(front(request, client.receive, client.send), timeout=5))
    return client


def make(inner=None, keys=None, routes=ROUTES) -> tuple[Front, list[str]]:
    counted: list[str] = []
    return Front(inner or Inner(), keys or ApiKeys([KEY.decode()]), routes, counted.append), counted


def assert_shape(client: Client, status: int, kind: str) -> dict:
    assert client.status == status
    assert client.headers["content-type"] == "application/json"
    body = json.loads(client.body)
    assert body["error"] == kind and body["message"]
    assert int(client.headers["content-length"]) == len(client.body)
    return body


@pytest.mark.parametrize(
    "token",
    [None, b"", b"k-12", b"k-1234", b"K-123", b"\xff\xfe", "clé".encode()],
    ids=["none", "empty", "prefix", "longer", "case", "not-utf8", "not-ascii"],
)
def test_a_keyless_post_is_refused_before_its_body_is_read_and_the_connection_closes(token):
    inner = Inner()
    front, counted = make(inner)
    client = run(front, scope(token=token))
    assert set(assert_shape(client, 401, "unauthorized")) == {"error", "message"}
    assert client.headers["www-authenticate"] == "Bearer"
    assert client.headers["connection"] == "close"
    assert client.received == 0 and inner.calls == 0  # nothing of the request was read
    assert counted == ["unauthorized"]


def test_every_post_needs_the_key_even_to_an_unknown_path_and_metadata_needs_it_too():
    for request in (
        scope(path="/empty", token=None),
        scope(path="/x", token=None),
        scope("GET", "/metadata", None),
    ):
        front, counted = make()
        assert_shape(run(front, request), 401, "unauthorized")
        assert counted == ["unauthorized"]


def test_a_keyed_request_reaches_the_app_untouched_and_uncounted():
    inner = Inner()
    front, counted = make(inner)
    client = run(front, scope())
    assert client.status == 200 and client.body == b"inner" and inner.calls == 1
    assert counted == []


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/metrics"])
def test_probes_and_the_metrics_scrape_need_no_key(path):
    inner = Inner()
    front, _ = make(inner)
    client = run(front, scope("GET", path, token=None))
    assert inner.calls == 1 and client.status == 200


def test_an_open_service_takes_keyless_posts():
    inner = Inner()
    front, counted = make(inner, keys=ApiKeys.off())
    assert run(front, scope(token=None)).status == 200 and inner.calls == 1 and counted == []


def test_unknown_paths_get_one_404_and_never_reach_the_app():
    inner = Inner()
    front, counted = make(inner)
    for path in ("/admin", "/predict/", "/.env", "/predict%00", "/" + "a" * 5000):
        assert_shape(run(front, scope("GET", path, token=None)), 404, "not_found")
    assert inner.calls == 0 and counted == ["not_found"] * 5


def test_a_known_path_with_another_method_is_a_405_naming_the_allowed_ones():
    front, counted = make()
    client = run(front, scope("GET", "/predict", token=None))
    assert_shape(client, 405, "method_not_allowed")
    assert client.headers["allow"] == "POST"
    assert counted == ["method_not_allowed"]
    client = run(front, scope("POST", "/livez"))  # keyed: past auth, then the method check
    assert_shape(client, 405, "method_not_allowed")


def test_bentomls_429_from_max_concurrency_is_rewritten_and_counted():
    release = asyncio.Event()

    async def busy(scope, receive, send):
        await release.wait()
        await PlainTextResponse("ok")(scope, receive, send)

    front, counted = make(MaxConcurrencyMiddleware(busy, max_concurrency=1))

    async def main():
        first_client, second = Client(), Client()
        first = asyncio.create_task(front(scope(), first_client.receive, first_client.send))
        await asyncio.sleep(0.01)
        await front(scope(), second.receive, second.send)
        release.set()
        await first
        return second

    client = asyncio.run(main())
    assert_shape(client, 429, "too_many_requests")
    assert client.headers["retry-after"] == "1"
    assert counted == ["too_many_requests"]


@pytest.mark.parametrize("timeout_layer", [TimeoutMiddleware, Deadline])
def test_the_504_of_bentomls_timeout_or_of_ours_is_rewritten_and_counted(timeout_layer):
    async def slow(scope, receive, send):
        await asyncio.sleep(1)

    front, counted = make(timeout_layer(slow, timeout=0.05))
    assert_shape(run(front, scope()), 504, "timeout")
    assert counted == ["timeout"]


def test_starlette_and_fastapi_detail_answers_are_rewritten_and_counted():
    async def teapot(_):
        raise HTTPException(418, detail="MARKER from the framework")

    async def boom(_):
        raise HTTPException(400, detail="There was an error parsing the body")

    app = Starlette(routes=[Route("/predict", teapot, methods=["POST"]), Route("/metadata", boom)])
    front, counted = make(app)
    client = run(front, scope())
    assert_shape(client, 418, "http_418")
    assert b"MARKER" not in client.body
    assert_shape(run(front, scope("GET", "/metadata")), 400, "malformed")
    assert counted == ["http_418", "malformed"]


def test_an_unhandled_failure_becomes_a_counted_500_in_our_shape():
    app = FastAPI()

    @app.post("/predict")
    async def fail():
        raise RuntimeError("MARKER secret detail")

    front, counted = make(app)
    client = Client()
    with pytest.raises(RuntimeError):  # Starlette re-raises after answering, so the server logs it
        asyncio.run(front(scope(), client.receive, client.send))
    body = assert_shape(client, 500, "internal_error")
    assert "MARKER" not in json.dumps(body)
    assert counted == ["error"]


def test_answers_already_in_our_shape_pass_through_and_are_not_counted_twice():
    async def ours(scope, receive, send):
        await error(422, "invalid_request", "x", field="records.0.a")(scope, receive, send)

    front, counted = make(ours)
    client = run(front, scope())
    assert json.loads(client.body) == {"error": "invalid_request", "message": "x", "field": "records.0.a"}
    assert counted == []


def test_a_long_foreign_error_body_is_cut_and_replaced():
    async def chatty(scope, receive, send):
        await send({"type": "http.response.start", "status": 502, "headers": []})
        for _ in range(100):
            await send({"type": "http.response.body", "body": b"x" * 4096, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    front, counted = make(chatty)
    client = run(front, scope())
    assert_shape(client, 502, "internal_error")
    assert len(client.body) < 200 and counted == ["error"]


@pytest.mark.parametrize(("keys", "mode"), [(ApiKeys(["k"]), "on"), (ApiKeys.off(), "off")])
def test_readyz_says_ready_and_whether_keys_are_required(keys, mode):
    front, counted = make(Inner(), keys=keys)
    client = run(front, scope("GET", "/readyz", token=None))
    assert client.status == 200 and json.loads(client.body) == {"status": "ready", "auth": mode}
    assert counted == []


def test_an_unready_service_says_so_in_our_shape():
    async def unready(_):
        raise HTTPException(503, detail="Service is not ready because .__is_ready__() returns False.")

    front, counted = make(Starlette(routes=[Route("/readyz", unready)]), keys=ApiKeys.off())
    client = run(front, scope("GET", "/readyz", token=None))
    body = assert_shape(client, 503, "not_ready")
    # A probe is not a prediction request: it never counts in tabular_predictions_total.
    assert body["auth"] == "off" and counted == []


def test_known_routes_lists_routes_mounted_apps_and_static_files(tmp_path):
    (tmp_path / "css").mkdir()
    (tmp_path / "css" / "a.css").write_text("x")
    (tmp_path / "index.js").write_text("x")
    api = FastAPI()

    @api.post("/predict")
    async def predict():
        return JSONResponse({})

    app = Starlette(
        routes=[
            Route("/livez", lambda _: PlainTextResponse("")),
            Mount("/static_content", StaticFiles(directory=tmp_path)),
            Mount("/", api),
        ]
    )
    routes = known_routes(app)
    assert routes["/livez"] == {"GET", "HEAD"}
    assert routes["/predict"] == {"POST"}
    assert routes["/static_content/css/a.css"] == {"GET", "HEAD"}
    assert "/static_content/index.js" in routes
    assert "/static_content/nope.js" not in routes
