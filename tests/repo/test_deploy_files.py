"""deploy/: the compose stack, Prometheus, HAProxy, Kubernetes and Grafana files, checked by the
real tools (the Compose v2 binary, promtool, haproxy -c, kubernetes-validate), each shown able to
fail on a broken copy. The last tests package a real bento and serve it as its image would: the
generated Dockerfile's user, the probe paths, where the server writes, and the dashboard's metric
names are read from that running service, never from our own code.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from helpers.support import PROJECT

DEPLOY = PROJECT / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
HAPROXY_CFG = DEPLOY / "haproxy" / "haproxy.cfg"
K8S = DEPLOY / "k8s"
DASHBOARD = DEPLOY / "grafana" / "dashboard.json"
KUBERNETES_VERSION = "1.33.0"  # pinned: a newer schema bundle must not change the verdict silently
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Series Prometheus makes itself for every target, which no /metrics page carries.
PROMETHEUS_OWN = {"up"}


def needs(name: str) -> pytest.MarkDecorator:
    """Skip locally without the Debian tool; in CI a missing tool fails instead (a skip would hide it)."""
    return pytest.mark.skipif(
        shutil.which(name) is None and not IN_CI, reason=f"{name} is not installed; CI installs it"
    )


def run(cmd: list[str], cwd: Path = PROJECT) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60)


# --- Compose ---------------------------------------------------------------------------------


def compose_binary() -> str:
    """The Compose v2 binary bundled in the `compose` package: its console script always exits 0."""
    import compose

    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.is_file() and os.access(binary, os.X_OK), binary
    return str(binary)


def compose(path: Path, *args: str, env_file: Path | None = ENV_EXAMPLE) -> subprocess.CompletedProcess:
    # Only the env file feeds the variables: none of the test runner's own may leak in.
    cmd = [compose_binary(), "-f", str(path)]
    if env_file is not None:
        cmd += ["--env-file", str(env_file)]
    return subprocess.run(
        [*cmd, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")},
    )


def compose_model() -> dict:
    """The file as Compose resolves it (anchors merged, variables from .env.example)."""
    done = compose(COMPOSE_FILE, "config", "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def copy_with(tmp_path: Path, source: Path, old: str, new: str) -> Path:
    """A copy of `source` in `tmp_path` with `old` replaced (the text must be there), beside the
    files it refers to by relative path."""
    text = source.read_text()
    assert old in text, old
    for sibling in source.parent.iterdir():
        if sibling.is_file():
            shutil.copy(sibling, tmp_path / sibling.name)
        elif sibling.is_dir():
            shutil.copytree(sibling, tmp_path / sibling.name)
    broken = tmp_path / source.name
    broken.write_text(text.replace(old, new, 1))
    return broken


def test_compose_config_is_valid_for_the_real_compose_binary() -> None:
    done = compose(COMPOSE_FILE, "config", "-q")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("old", "new", "says"),
    [
        ("        condition: service_completed_successfully", "        condition: finished", "condition"),
        ("    depends_on:\n      postgres:", "    depends_on:\n      postgress:", "postgress"),
    ],
)
def test_a_broken_compose_file_fails_the_check(tmp_path: Path, old: str, new: str, says: str) -> None:
    broken = copy_with(tmp_path, COMPOSE_FILE, old, new)
    shutil.copy(ENV_EXAMPLE, tmp_path / ENV_EXAMPLE.name)
    done = compose(broken, "config", "-q", env_file=tmp_path / ENV_EXAMPLE.name)
    assert done.returncode != 0
    assert says in done.stderr


def test_compose_refuses_to_run_without_the_secrets() -> None:
    """No default password: without deploy/.env (or its variables) Compose stops, naming one."""
    done = compose(COMPOSE_FILE, "config", "-q", env_file=None)
    assert done.returncode != 0
    assert "required variable" in done.stderr


def test_compose_takes_every_secret_from_the_environment() -> None:
    """The resolved values are .env.example's placeholders: the file itself holds none."""
    placeholders = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    )
    secrets = {"POSTGRES_PASSWORD", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY", "API_KEYS"}
    assert secrets <= set(placeholders)
    for name in secrets:
        assert placeholders[name].startswith("replace-me"), name
        assert placeholders[name] not in COMPOSE_FILE.read_text()
    services = compose_model()["services"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == placeholders["POSTGRES_PASSWORD"]
    assert services["mlflow"]["environment"]["AWS_SECRET_ACCESS_KEY"] == placeholders["S3_SECRET_ACCESS_KEY"]
    # The API keys reach the replicas as a mounted file, never in their environment.
    assert compose_model()["secrets"]["api_keys"]["environment"] == "API_KEYS"
    for name in ("replica-1", "replica-2"):
        env = services[name]["environment"]
        assert env["API_KEY_FILE"] == "/run/secrets/api_keys" and "API_KEY" not in env
        # No S3 credentials in the service: artifacts go through the tracking server.
        assert not any(key.startswith("AWS_") for key in env)


def test_the_local_env_file_is_git_ignored() -> None:
    patterns = [line.strip() for line in (PROJECT / ".gitignore").read_text().splitlines()]
    assert {"/deploy/.env", "deploy/.env", ".env"} & set(patterns), "add /deploy/.env to .gitignore"


def test_compose_publishes_only_on_loopback_and_every_server_is_healthchecked() -> None:
    services = compose_model()["services"]
    assert {"postgres", "seaweedfs", "mlflow-migrate", "mlflow", "haproxy", "prometheus"} < set(services)
    published = [port for svc in services.values() for port in svc.get("ports", [])]
    assert published, "nothing is reachable from the host"
    assert all(port["host_ip"] == "127.0.0.1" for port in published), published
    for name, svc in services.items():
        if name == "mlflow-migrate":
            continue
        assert svc.get("healthcheck", {}).get("test"), name
        assert svc.get("restart") in ("unless-stopped", "always", "on-failure"), name


def test_migrations_are_an_explicit_one_shot_step() -> None:
    services = compose_model()["services"]
    migrate, server = services["mlflow-migrate"], services["mlflow"]
    assert migrate["command"][:3] == ["mlflow", "db", "upgrade"]
    assert migrate["command"][3].startswith("postgresql+psycopg://")
    assert migrate["restart"] == "no"
    assert server["depends_on"]["mlflow-migrate"]["condition"] == "service_completed_successfully"
    flags = server["command"]
    assert "--serve-artifacts" in flags and "--artifacts-destination=s3://mlflow" in flags
    assert "--workers=1" in flags
    assert any(flag.startswith("--backend-store-uri=postgresql+psycopg://") for flag in flags)
    assert server["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def test_the_replicas_are_the_bento_image_as_its_non_root_user() -> None:
    services = compose_model()["services"]
    replicas = [svc for name, svc in services.items() if name.startswith("replica-")]
    assert len(replicas) >= 2
    assert {svc["image"] for svc in replicas} == {"tabular-mlops:replace-with-bento-version"}  # BENTO_IMAGE
    for name in ("replica-1", "replica-2", "mlflow", "mlflow-migrate", "postgres", "haproxy", "prometheus"):
        user = services[name]["user"]
        assert user.split(":")[0] not in ("", "0", "root"), name


# --- Prometheus and HAProxy ------------------------------------------------------------------


@needs("promtool")
def test_promtool_checks_the_prometheus_config() -> None:
    done = run(["promtool", "check", "config", PROMETHEUS.name], cwd=PROMETHEUS.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 1 rule files found" in done.stdout


@needs("promtool")
def test_promtool_fails_a_broken_prometheus_config(tmp_path: Path) -> None:
    broken = copy_with(tmp_path, PROMETHEUS, "  - alerts.yml", "  - alerts-missing.yml")
    done = run(["promtool", "check", "config", broken.name], cwd=tmp_path)
    assert done.returncode != 0


def test_prometheus_scrapes_each_replica_under_the_alerts_job_without_a_literal_secret() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "tabular-mlops"]
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    assert targets == {"replica-1:3000", "replica-2:3000"}
    services = compose_model()["services"]
    assert {t.split(":")[0] for t in targets} <= set(services)
    # /metrics is open (docs/serving.md); credentials, if ever added, come from a file.
    for key in ("basic_auth", "authorization", "bearer_token"):
        assert "password:" not in json.dumps(job.get(key, {})) and "credentials:" not in json.dumps(
            job.get(key, {})
        )


@needs("haproxy")
def test_haproxy_accepts_its_config_and_refuses_a_broken_one(tmp_path: Path) -> None:
    done = run(["haproxy", "-c", "-q", "-f", str(HAPROXY_CFG)])
    assert done.returncode == 0, done.stderr
    broken = copy_with(tmp_path, HAPROXY_CFG, "    balance leastconn", "    balance fastest")
    assert run(["haproxy", "-c", "-q", "-f", str(broken)]).returncode != 0


def test_haproxy_checks_readiness_and_bounds_slow_headers() -> None:
    text = HAPROXY_CFG.read_text()
    assert "http-check send meth GET uri /readyz" in text
    assert re.search(r"^\s*timeout http-request \d+s$", text, re.M)
    servers = set(re.findall(r"^\s*server (\S+) (\S+):3000\b", text, re.M))
    assert {address for _, address in servers} == {"replica-1", "replica-2"}


# --- Kubernetes ------------------------------------------------------------------------------


def manifests() -> dict[str, dict]:
    docs = [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return {doc["kind"]: doc for doc in docs}


def k8s_validate(paths: list[Path]) -> subprocess.CompletedProcess:
    cli = str(Path(sys.executable).parent / "kubernetes-validate")
    return run([cli, "--strict", "--quiet", "-k", KUBERNETES_VERSION, *map(str, paths)])


def test_the_manifests_pass_strict_kubernetes_validate() -> None:
    paths = sorted(K8S.glob("*.yaml"))
    assert {"Deployment", "Service", "HorizontalPodAutoscaler"} <= set(manifests())
    done = k8s_validate(paths)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (
            "          readOnlyRootFilesystem: true",
            "          readOnlyRootFilesystem: true\n          readOnlyRoot: true",
        ),
        ("        runAsUser: 1034", "        runAsUser: bentoml"),
    ],
)
def test_kubernetes_validate_fails_a_broken_manifest(tmp_path: Path, old: str, new: str) -> None:
    broken = copy_with(tmp_path, K8S / "deployment.yaml", old, new)
    assert k8s_validate([broken]).returncode != 0


def container() -> dict:
    (found,) = manifests()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return found


def test_the_deployment_runs_non_root_read_only_with_limits_and_keys_from_a_secret() -> None:
    pod = manifests()["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert isinstance(pod["securityContext"]["runAsUser"], int) and pod["securityContext"]["runAsUser"] > 0
    main = container()
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert main["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"cpu", "memory"} <= set(main["resources"]["requests"]) & set(main["resources"]["limits"])
    env = {item["name"]: item.get("value") for item in main["env"]}
    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    keys_dir = str(Path(env["API_KEY_FILE"]).parent)
    assert "secret" in volumes[mounts[keys_dir]]
    # Everything the server writes (tested below on a real one) is on a writable emptyDir.
    for folder in (env["PREDICTION_LOG_DIR"], env["BENTOML_HOME"], env["HOME"], "/tmp"):
        assert "emptyDir" in volumes[mounts[folder]], folder


def test_the_hpa_scales_the_deployment_on_cpu() -> None:
    hpa = manifests()["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == manifests()["Deployment"]["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


# --- Grafana ---------------------------------------------------------------------------------

PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers left once strings, label matchers,
    ranges and grouping labels are removed, that are not functions or keywords."""
    expr = re.sub(r'"[^"]*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    functions = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(", expr))
    return set(re.findall(r"\b[A-Za-z_:][A-Za-z0-9_:]*\b", expr)) - functions - PROMQL_KEYWORDS


def dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in board["panels"] for target in panel["targets"]]
    assert len(exprs) >= 10
    return exprs


def dashboard_metrics() -> set[str]:
    board = json.loads(DASHBOARD.read_text())
    names = set().union(*map(metric_names, dashboard_queries()))
    for variable in board["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):  # label_values(<metric>{…}, <label>)
            names |= set(re.findall(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)", query["query"]))
    return names


def test_the_metric_name_reader_finds_names_and_only_names() -> None:
    """The oracle of the dashboard check can fail: it sees a misspelt metric and no label or function."""
    expr = 'histogram_quantile(0.99, sum by (le, endpoint) (rate(tabular_typo_bucket{outcome=~"a|b"}[5m]))) / on (job) up'
    assert metric_names(expr) == {"tabular_typo_bucket", "up"}


@needs("promtool")
def test_every_dashboard_query_parses_as_promql(tmp_path: Path) -> None:
    """promtool parses each query as a recording rule (Grafana's variables given plain values)."""
    rules = [
        {
            "record": f"dashboard:query_{i}",
            "expr": e.replace("$__rate_interval", "5m").replace("$instance", ".*"),
        }
        for i, e in enumerate(dashboard_queries())
    ]
    (tmp_path / "queries.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = run(["promtool", "check", "rules", "queries.yml"], cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    (tmp_path / "bad.yml").write_text(
        yaml.safe_dump(
            {"groups": [{"name": "d", "rules": [{"record": "x:y", "expr": "sum by (le (rate(x[5m]))"}]}]}
        )
    )
    assert run(["promtool", "check", "rules", "bad.yml"], cwd=tmp_path).returncode != 0


def test_the_dashboard_selects_the_alerts_job_and_shares_their_outcomes() -> None:
    alerts = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    for expr in dashboard_queries():
        assert 'job="tabular-mlops"' in expr, expr
    outcome_sets = set(re.findall(r'outcome=~"([^"]+)"', alerts))
    assert set(re.findall(r'outcome=~"([^"]+)"', DASHBOARD.read_text())) <= outcome_sets


# --- A real bento, served as its image would serve it -----------------------------------------


@pytest.fixture(scope="module")
def bento(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bento built by `make package`'s code from the project's bentofile, laid out as
    `bentoml containerize` puts it in the image: the bento folder with its models inside."""
    from helpers.champion import new_project, package_project, train_candidate

    from pipelines.release import promotion

    root = tmp_path_factory.mktemp("deploy-bento")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    params = new_project(root)
    train_candidate(params, hide=[])
    assert promotion.run_promotion(root, params)["promoted"]
    record = package_project(root, params, PROJECT)
    home = Path(record["bentoml_home"])
    name, version = record["bento"].split(":")
    image_bento = root / "image" / "bento"
    shutil.copytree(home / "bentos" / name / version, image_bento)
    shutil.copytree(home / "models", image_bento / "models")
    return image_bento


def generated_user(dockerfile: str) -> tuple[str, int]:
    """The final USER of a Dockerfile and that user's uid, as BentoML's template declares it."""
    users = re.findall(r"^USER\s+(\S+)\s*$", dockerfile, re.M)
    assert users, "the Dockerfile never leaves root"
    uid = re.search(r"^ARG BENTO_USER_UID=(\d+)$", dockerfile, re.M)
    return users[-1], int(uid.group(1)) if uid else -1


@pytest.mark.integration
def test_the_generated_dockerfile_runs_as_the_non_root_user_the_deploy_files_name(bento: Path) -> None:
    user, uid = generated_user((bento / "env" / "docker" / "Dockerfile").read_text())
    assert user not in ("root", "0") and uid > 0
    assert re.search(rf"^ARG BENTO_USER={user}$", (bento / "env" / "docker" / "Dockerfile").read_text(), re.M)
    pod = manifests()["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == uid
    assert compose_model()["services"]["replica-1"]["user"] == f"{uid}:{uid}"
    assert generated_user("FROM x\nUSER bentoml\nUSER root\n")[0] == "root"  # the reader sees the last one


@pytest.fixture(scope="module")
def served(bento: Path, tmp_path_factory: pytest.TempPathFactory):
    """`bentoml serve <bento folder>`, as the image's entrypoint runs it, with the environment the
    Deployment sets: BENTOML_HOME, HOME and the prediction log on their own writable folders."""
    from helpers.champion import free_port, post, serve, stop

    env_of = {item["name"]: item.get("value") for item in container()["env"]}
    writable = tmp_path_factory.mktemp("writable")
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "BENTOML_HOME": str(writable / "bentoml-home"),
        "HOME": str(writable / "bentoml-home"),
        "PREDICTION_LOG_DIR": str(writable / "predictions"),
        "TMPDIR": str(writable / "tmp"),
        "BENTOML_DO_NOT_TRACK": env_of["BENTOML_DO_NOT_TRACK"],
        "API_KEY": "deploy-test-key",
        # As in the Deployment: a read-only image cannot take bytecode caches, so none are tried.
        "PYTHONDONTWRITEBYTECODE": env_of["PYTHONDONTWRITEBYTECODE"],
    }
    (writable / "tmp").mkdir()
    before = tree(bento)
    port = free_port()
    bentoml = str(Path(sys.executable).parent / "bentoml")
    proc = serve([bentoml, "serve", str(bento), "--host", "127.0.0.1", "--port", str(port)], bento, env, port)
    try:
        record = {"x1": 0.1, "x2": -0.3, "color": "red", "id": 7}
        status, _ = post(port, [record], headers={"Authorization": "Bearer deploy-test-key"})
        assert status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        yield port, metrics, before
    finally:
        stop(proc)


def tree(folder: Path) -> dict[str, tuple[int, float]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime) for p in folder.rglob("*")}


@pytest.mark.integration
def test_the_probe_paths_of_the_manifest_answer_on_the_real_service(served) -> None:
    port, _, _ = served
    probes = {
        container()[probe]["httpGet"]["path"] for probe in ("readinessProbe", "livenessProbe", "startupProbe")
    }
    assert container()["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for path in probes:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            assert response.status == 200, path
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
        assert json.loads(response.read())["status"] == "ready"


@pytest.mark.integration
def test_the_server_writes_nothing_into_the_image_s_files(served, bento: Path) -> None:
    """What readOnlyRootFilesystem needs: after start-up and a prediction, the bento folder is
    unchanged; the server wrote only in the folders the Deployment mounts writable."""
    _, _, before = served
    assert tree(bento) == before


@pytest.mark.integration
def test_every_dashboard_metric_is_on_the_real_service_s_metrics(served) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    _, metrics, _ = served
    exposed = {sample.name for family in text_string_to_metric_families(metrics) for sample in family.samples}
    assert {"tabular_predictions_total", "bentoml_service_request_duration_seconds_bucket"} <= exposed
    used = dashboard_metrics()
    assert used - exposed - PROMETHEUS_OWN == set(), sorted(used - exposed)
    alerts = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    assert set(re.findall(r"\b(tabular_[a-z_]+)", alerts)) <= exposed
