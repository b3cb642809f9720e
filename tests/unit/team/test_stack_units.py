"""pipelines/team/stack.py's pure pieces: credentials, command lines, env files, SQL."""

from __future__ import annotations

import pytest

from pipelines.core.errors import PipelineError
from pipelines.team import stack

CREDS = stack.Credentials("pg-secret", "AKEY", "s3-secret")


def test_credentials_environment_wins_then_stored_then_made() -> None:
    made = stack.credentials_from({"STACK_PG_PASSWORD": "env"}, {"pg_password": "old", "s3_access_key": "k"})
    assert made.pg_password == "env" and made.s3_access_key == "k"
    assert len(made.s3_secret_key) >= 24
    assert stack.credentials_from({}, {}).s3_secret_key != stack.credentials_from({}, {}).s3_secret_key


def test_no_secret_on_any_command_line(tmp_path) -> None:
    ports = {name: 1000 + i for i, name in enumerate(stack.SEAWEED_PORTS)}
    lines = [
        stack.mlflow_args(tmp_path / "mlflow", 5432, 5000),
        stack.seaweed_args(tmp_path / "weed", tmp_path, 8333, ports),
        stack.postgres_args(tmp_path, tmp_path / "pg", 5432, tmp_path / "s"),
    ]
    for args in lines:
        assert not any(secret in " ".join(args) for secret in ("pg-secret", "s3-secret", "AKEY"))


def test_seaweed_binds_loopback_every_port_explicit_no_telemetry(tmp_path) -> None:
    ports = {name: 2000 + i for i, name in enumerate(stack.SEAWEED_PORTS)}
    args = stack.seaweed_args(tmp_path / "weed", tmp_path, 8333, ports)
    assert "-ip.bind=127.0.0.1" in args and "-master.telemetry=false" in args
    for name, port in ports.items():
        assert f"-{name}={port}" in args
    assert "-s3.port=8333" in args and "-webdav=false" in args


def test_mlflow_server_args_and_marker() -> None:
    args = stack.mlflow_args(stack.Path("/v/mlflow"), 5432, 5000)
    assert args[args.index("--backend-store-uri") + 1] == "postgresql+psycopg://mlflow@127.0.0.1:5432/mlflow"
    assert args[args.index("--workers") + 1] == "1" and "--serve-artifacts" in args
    assert stack.mlflow_marker(5000) in " ".join(args)


def test_server_env_holds_s3_keys_and_drops_the_callers() -> None:
    env = stack.server_env({"AWS_PROFILE": "mine", "MLFLOW_TRACKING_URI": "x", "PATH": "/bin"}, CREDS, 8333)
    assert "AWS_PROFILE" not in env and "MLFLOW_TRACKING_URI" not in env and env["PATH"] == "/bin"
    assert env["AWS_SECRET_ACCESS_KEY"] == "s3-secret" and env["PGPASSWORD"] == "pg-secret"
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://127.0.0.1:8333"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def test_env_file_round_trip_has_no_pg_password() -> None:
    text = stack.env_file_text(5000, 8333, CREDS)
    parsed = stack.parse_env_file(text)
    assert parsed["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
    assert parsed["AWS_ENDPOINT_URL"] == "http://127.0.0.1:8333"
    assert "pg-secret" not in text and "MLFLOW_S3_ENDPOINT_URL" not in parsed


def test_bootstrap_sql_quotes_the_password() -> None:
    sql = stack.bootstrap_sql("it's")
    assert "PASSWORD 'it''s'" in sql and "\\gexec" in sql


def test_pinned_ports() -> None:
    assert stack.pinned_ports({"STACK_MLFLOW_PORT": "5001"}) == {"mlflow": 5001}
    with pytest.raises(PipelineError, match="STACK_PG_PORT"):
        stack.pinned_ports({"STACK_PG_PORT": "five"})
