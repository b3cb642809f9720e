"""pipelines/serving/registry_view.py: the registry's champion, read without MLflow.

The SQLite case reads a store that real MLflow wrote (its own schema, its own alias moves); the
REST case talks to a small local HTTP server that answers as MLflow's documented endpoint does.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest

from pipelines.serving.registry_view import RegistryView, champion_version, shareable_uri

NAME = "m"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A real MLflow SQLite registry with two versions of NAME; version 1 is the champion."""
    import mlflow
    from mlflow import MlflowClient

    folder = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(NAME)
    for _ in range(2):
        client.create_model_version(NAME, source=str(folder), run_id=None)
    client.set_registered_model_alias(NAME, "champion", "1")
    mlflow.set_tracking_uri(None)
    return uri, client


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_sqlite_store_champion_and_a_rollback_seen_after_the_cache(store):
    uri, client = store
    clock = Clock()
    view = RegistryView(uri, NAME, served="1", env={}, ttl=5, clock=clock)
    first = view.status()
    assert first["champion_version"] == "1" and first["served_is_champion"] is True
    assert first["checked"].endswith("+00:00")
    client.set_registered_model_alias(NAME, "champion", "2")  # what a promote or rollback does
    try:
        clock.now = 4.9
        assert view.status() is first  # cached
        clock.now = 5.0
        moved = view.status()
        assert moved["champion_version"] == "2" and moved["served_is_champion"] is False
    finally:
        client.set_registered_model_alias(NAME, "champion", "1")


def test_the_store_is_opened_read_only(store):
    uri, _ = store
    path = uri.removeprefix("sqlite:///")
    before = open(path, "rb").read()  # noqa: SIM115
    assert champion_version(uri, NAME, {}) == "1"
    assert open(path, "rb").read() == before  # noqa: SIM115


def test_no_alias_is_no_champion_rather_than_unknown(store):
    uri, _ = store
    assert RegistryView(uri, "no-such-model", served="1", env={}).status()["champion_version"] is None


@pytest.mark.parametrize(
    "uri",
    [
        None,
        "",
        "sqlite:////nonexistent/folder/mlflow.db",
        "http://127.0.0.1:9",
        "file:///tmp/mlruns",
        "databricks",
    ],
)
def test_an_unreadable_registry_is_unknown_never_an_error(uri):
    status = RegistryView(uri, NAME, served="1", env={}).status()
    assert status["champion_version"] == "unknown" and status["served_is_champion"] == "unknown"


def test_for_meta_prefers_the_environments_tracking_uri(store):
    uri, _ = store
    meta = {"registered_model": NAME, "version": 1, "tracking_uri": "http://127.0.0.1:9"}
    assert (
        RegistryView.for_meta(meta, env={"MLFLOW_TRACKING_URI": uri}).status()["served_is_champion"] is True
    )
    assert RegistryView.for_meta(meta, env={}).status()["served_is_champion"] == "unknown"
    assert RegistryView.for_meta({"registered_model": NAME, "version": "1"}, env={}).uri is None


class Registry(BaseHTTPRequestHandler):
    """Answers GET /api/2.0/mlflow/registered-models/alias as an MLflow server does."""

    aliases: ClassVar[dict] = {(NAME, "champion"): "3"}
    seen: ClassVar[list[dict]] = []

    def do_GET(self):
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        Registry.seen.append({"path": url.path, "query": query, "auth": self.headers.get("Authorization")})
        version = self.aliases.get((query.get("name"), query.get("alias")))
        if url.path != "/api/2.0/mlflow/registered-models/alias" or version is None:
            self.send_response(404)
            payload = {"error_code": "RESOURCE_DOES_NOT_EXIST"}
        else:
            self.send_response(200)
            payload = {"model_version": {"name": NAME, "version": version, "aliases": ["champion"]}}
        body = json.dumps(payload).encode()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = HTTPServer(("127.0.0.1", 0), Registry)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Registry.seen.clear()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_a_tracking_server_is_asked_through_its_rest_api_with_its_token(server):
    status = RegistryView(server, NAME, served="1", env={"MLFLOW_TRACKING_TOKEN": "tok"}).status()
    assert status["champion_version"] == "3" and status["served_is_champion"] is False
    assert Registry.seen == [
        {
            "path": "/api/2.0/mlflow/registered-models/alias",
            "query": {"name": NAME, "alias": "champion"},
            "auth": "Bearer tok",
        }
    ]
    assert RegistryView(server + "/", "other", served="1", env={}).status()["champion_version"] is None


def test_credentials_are_not_written_into_the_bento():
    assert shareable_uri("https://user:secret@mlflow.example:5000/x") == "https://mlflow.example:5000/x"
    assert shareable_uri("http://mlflow.example") == "http://mlflow.example"
    assert shareable_uri("sqlite:////abs/mlflow.db") == "sqlite:////abs/mlflow.db"
