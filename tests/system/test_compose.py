"""deploy/compose: the exporter, Prometheus, Alertmanager and Grafana wired together.

There may be no container engine where the tests run, so the setup is checked piece by
piece: compose.yaml's structure (every mounted file exists, ports on loopback, health
checks, restart policies, pinned images), Prometheus' configuration with promtool in a
directory that mirrors the container's layout (so the mounted rule files are checked too),
the scrape target against the exporter service, the Alertmanager Prometheus sends to
against the alertmanager service and the configuration it runs against the shipped
example (tests/system/test_alertmanager_config.py checks that file), and Grafana's provisioning
against the mounted dashboard. With `docker compose` or podman-compose installed, compose
itself validates the file as well.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import yaml

from exporter.config import DEFAULT_WEBHOOK_PATH, DEFAULT_WEBHOOK_PORT
from tests import REPO
from tests.procs import require_tool, run

COMPOSE_DIR = REPO / "deploy" / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
DASHBOARD = REPO / "deploy" / "grafana" / "realtimekit-livestreams.json"
RULES = REPO / "deploy" / "prometheus"
ALERTMANAGER_CONFIG = REPO / "deploy" / "alertmanager" / "alertmanager.yml"
SERVICES = {"exporter", "prometheus", "alertmanager", "grafana"}
EXPORTER_PORT = 10241  # the exporter's default --web.listen-address
WEBHOOK_PORT = DEFAULT_WEBHOOK_PORT  # 10243, the default webhooks.listen_address
PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9093  # Alertmanager's default --web.listen-address port
GRAFANA_PORT = 3000
JOB = "realtimekit-exporter"  # what the alerts select


def _compose() -> dict[str, Any]:
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(compose, dict)
    return compose


def _service(name: str) -> dict[str, Any]:
    return dict(_compose()["services"][name])


def _mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read only) of every volume of a service, short or long syntax."""
    found = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            found.append((source, target, "ro" in (mode[0].split(",") if mode else [])))
        else:
            found.append((volume["source"], volume["target"], bool(volume.get("read_only"))))
    return found


def _is_bind(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def _binds(service: dict[str, Any]) -> dict[PurePosixPath, tuple[Path, bool]]:
    """Container path -> (host path, read only) of every bind mount."""
    return {
        PurePosixPath(target): ((COMPOSE_DIR / source).resolve(), read_only)
        for source, target, read_only in _mounts(service)
        if _is_bind(source)
    }


def _host_path(service: dict[str, Any], container_path: str) -> Path | None:
    """Where a path inside the container comes from on the host, through the bind mounts."""
    path = PurePosixPath(container_path)
    for target, (source, _) in sorted(_binds(service).items(), key=lambda b: -len(b[0].parts)):
        if path == target or target in path.parents:
            return source.joinpath(*path.parts[len(target.parts) :])
    return None


def _container_ports(service: dict[str, Any]) -> list[int]:
    return [int(str(port).rsplit(":", 1)[1].split("/")[0]) for port in service["ports"]]


def _container_port(service: dict[str, Any]) -> int:
    (port,) = _container_ports(service)
    return port


def _flags(service: dict[str, Any]) -> dict[str, str]:
    """The ``--name=value`` arguments of a service's command."""
    return dict(arg.split("=", 1) for arg in service["command"] if "=" in arg)


def _config_file(service: dict[str, Any]) -> str:
    """The --config.file of the prometheus or alertmanager service (a container path)."""
    return _flags(service)["--config.file"]


def _prometheus_config() -> dict[str, Any]:
    prometheus = _service("prometheus")
    config = _host_path(prometheus, _config_file(prometheus))
    assert config == COMPOSE_DIR / "prometheus.yml", config
    document = yaml.safe_load(config.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def test_compose_services_are_hardened_and_on_loopback() -> None:
    """Exporter, Prometheus, Alertmanager and Grafana: each restarts, has a health check,
    publishes ports on 127.0.0.1 only and (but for the exporter, built here) runs an image
    pinned to a release; every named volume is declared."""
    compose = _compose()
    assert set(compose["services"]) == SERVICES
    for name, service in compose["services"].items():
        assert service.get("restart") in ("unless-stopped", "always"), name
        health = service.get("healthcheck")
        assert health and health["test"][0] in ("CMD", "CMD-SHELL"), f"{name}: no healthcheck"
        assert health.get("interval") and health.get("retries"), name
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is not on loopback"
        if name != "exporter":
            image = service["image"]
            assert re.fullmatch(r"[\w./-]+:[\w.-]+", image) and not image.endswith(":latest")
    named = {source for s in compose["services"].values() for source, _, _ in _mounts(s)}
    named = {source for source in named if not _is_bind(source)}
    assert named <= set(compose.get("volumes") or {}), "a named volume is not declared"


def test_every_bind_mount_exists_and_configuration_is_read_only() -> None:
    for name in SERVICES:
        for target, (source, read_only) in _binds(_service(name)).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"
            assert read_only, f"{name}: {source} should be mounted read-only"


def test_exporter_is_built_from_the_repo_in_demo_mode() -> None:
    exporter = _service("exporter")
    build = exporter["build"]
    context = (COMPOSE_DIR / build["context"]).resolve()
    assert context == REPO
    dockerfile = context / build.get("dockerfile", "Dockerfile")
    assert dockerfile.is_file(), f"{dockerfile} does not exist (the image is built from it)"
    assert exporter["image"] == "realtimekit-exporter:local"
    assert exporter["command"] == ["--demo"]
    # Token mode is documented where users look for it.
    token_mode = "--config.file=/etc/realtimekit-exporter/config.yaml"
    assert token_mode in COMPOSE.read_text(encoding="utf-8")
    assert token_mode in (COMPOSE_DIR / "README.md").read_text(encoding="utf-8")

    # The ports, the health check and the image agree.
    assert _container_ports(exporter) == [EXPORTER_PORT, WEBHOOK_PORT]
    check = " ".join(exporter["healthcheck"]["test"][1:])
    assert f"http://127.0.0.1:{EXPORTER_PORT}/-/healthy" in check
    image = dockerfile.read_text(encoding="utf-8")
    assert re.search(r"^ENTRYPOINT\s+\[\"realtimekit-exporter\"\]", image, re.MULTILINE), (
        "command: [--demo] assumes the image's entrypoint is realtimekit-exporter"
    )
    interpreter = exporter["healthcheck"]["test"][1]
    assert interpreter in image, f"the health check runs {interpreter}, which the image lacks"
    assert re.search(rf"^EXPOSE\s+{EXPORTER_PORT}\b", image, re.MULTILINE)


def test_webhook_port_is_mapped_to_loopback_and_documented() -> None:
    """The receiver's port is published on 127.0.0.1 only, on the same number, for a TLS
    reverse proxy on the host; the README says how to turn the receiver on, what to expose
    (its path only) and what never (the main port)."""
    exporter = _service("exporter")
    assert f"127.0.0.1:{WEBHOOK_PORT}:{WEBHOOK_PORT}" in exporter["ports"]
    assert f"127.0.0.1:{EXPORTER_PORT}:{EXPORTER_PORT}" in exporter["ports"]
    readme = (COMPOSE_DIR / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Webhooks\n", 1)[1].split("\n## ", 1)[0]
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", section, re.DOTALL) if "webhooks" in b]
    webhooks = yaml.safe_load(block)["webhooks"]
    assert webhooks["listen_address"] == f":{WEBHOOK_PORT}"
    assert webhooks["path"] == DEFAULT_WEBHOOK_PATH
    for text in (
        f"POST {DEFAULT_WEBHOOK_PATH}",
        f"127.0.0.1:{WEBHOOK_PORT}",
        f"Never expose port {EXPORTER_PORT}",
        "webhooks register",
    ):
        assert text in " ".join(section.split()), text
    # Prometheus still scrapes the main port only.
    (job,) = _prometheus_config()["scrape_configs"]
    assert job["static_configs"][0]["targets"] == [f"exporter:{EXPORTER_PORT}"]


def test_prometheus_scrapes_the_exporter_service_with_the_shipped_rules() -> None:
    config = _prometheus_config()
    (job,) = config["scrape_configs"]
    assert job["job_name"] == JOB
    (static,) = job["static_configs"]
    assert static["targets"] == [f"exporter:{EXPORTER_PORT}"]
    # The rule files are deploy/prometheus's own, mounted, not copies.
    rules = {_host_path(_service("prometheus"), path) for path in config["rule_files"]}
    assert rules == {RULES / "alerts.yml", RULES / "recording.yml"}
    assert _container_port(_service("prometheus")) == PROMETHEUS_PORT


def test_promtool_accepts_the_config_and_its_rules_as_mounted() -> None:
    """promtool checks prometheus.yml and the rule files it names, in a directory laid out
    like the container: every bind mount of the service copied to its container path."""
    promtool = require_tool("promtool")
    prometheus = _service("prometheus")
    with tempfile.TemporaryDirectory(prefix="rtk-compose-") as tmp:
        root = Path(tmp)
        for target, (source, _) in _binds(prometheus).items():
            mirrored = root / target.relative_to("/")
            mirrored.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, mirrored)
            else:
                shutil.copy(source, mirrored)
        config_path = root / _config_file(prometheus).lstrip("/")
        config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
        config["rule_files"] = [str(root / p.lstrip("/")) for p in config["rule_files"]]
        config_path.write_text(yaml.safe_dump(config), encoding="utf-8")

        result = run([promtool, "check", "config", str(config_path)], timeout=30)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert "SUCCESS: 2 rule files found" in output, output


def test_prometheus_sends_alerts_to_the_alertmanager_service() -> None:
    """prometheus.yml names one Alertmanager, the alertmanager service on the port it
    listens on (its default, 9093: no --web.listen-address), over the v2 API Alertmanager
    0.27 and later alone serve; that port is published on loopback, and Prometheus starts
    after it."""
    (alerting,) = _prometheus_config()["alerting"]["alertmanagers"]
    assert set(alerting) == {"static_configs"}, alerting  # http, /api/v2, no path prefix
    (static,) = alerting["static_configs"]
    assert static["targets"] == [f"alertmanager:{ALERTMANAGER_PORT}"]
    alertmanager = _service("alertmanager")
    assert "--web.listen-address" not in _flags(alertmanager)
    assert "--web.route-prefix" not in _flags(alertmanager)
    assert _container_port(alertmanager) == ALERTMANAGER_PORT
    assert alertmanager["ports"] == [f"127.0.0.1:{ALERTMANAGER_PORT}:{ALERTMANAGER_PORT}"]
    assert "alertmanager" in _service("prometheus")["depends_on"]


def test_alertmanager_runs_the_shipped_example_config() -> None:
    """The alertmanager service reads deploy/alertmanager/alertmanager.yml itself, mounted
    read-only (not a copy that could drift), keeps silences and notification state in a
    named volume, runs alone (no cluster port) and is checked healthy on its own port."""
    alertmanager = _service("alertmanager")
    assert re.fullmatch(r"prom/alertmanager:v\d+\.\d+\.\d+", alertmanager["image"])
    flags = _flags(alertmanager)
    assert _host_path(alertmanager, flags["--config.file"]) == ALERTMANAGER_CONFIG
    assert _binds(alertmanager)[PurePosixPath(flags["--config.file"])] == (
        ALERTMANAGER_CONFIG,
        True,
    )
    volumes = {target: source for source, target, _ in _mounts(alertmanager)}
    assert volumes[flags["--storage.path"]] == "alertmanager-data"
    assert flags["--cluster.listen-address"] == ""
    check = " ".join(alertmanager["healthcheck"]["test"][1:])
    assert f"http://127.0.0.1:{ALERTMANAGER_PORT}/-/ready" in check


def test_grafana_provisions_the_datasource_and_the_dashboard() -> None:
    grafana = _service("grafana")
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert _container_port(grafana) == GRAFANA_PORT
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy"

    # The datasource: the prometheus service, its port, its scrape interval.
    provisioning = _host_path(grafana, "/etc/grafana/provisioning/datasources")
    assert provisioning is not None and provisioning.is_dir()
    sources = [
        source
        for path in sorted(provisioning.glob("*.y*ml"))
        for source in yaml.safe_load(path.read_text(encoding="utf-8"))["datasources"]
    ]
    (source,) = sources
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert source.get("uid")
    url = urlsplit(source["url"])
    assert (url.hostname, url.port) == ("prometheus", PROMETHEUS_PORT)
    assert source["jsonData"]["timeInterval"] == _prometheus_config()["global"]["scrape_interval"]

    # The dashboard provider loads the directory where the dashboard file is mounted.
    providers_dir = _host_path(grafana, "/etc/grafana/provisioning/dashboards")
    assert providers_dir is not None and providers_dir.is_dir()
    providers = [
        provider
        for path in sorted(providers_dir.glob("*.y*ml"))
        for provider in yaml.safe_load(path.read_text(encoding="utf-8"))["providers"]
    ]
    (provider,) = providers
    assert provider["type"] == "file"
    folder = PurePosixPath(provider["options"]["path"])
    mounted = {
        target: source
        for target, (source, _) in _binds(grafana).items()
        if target.parent == folder and target.suffix == ".json"
    }
    assert list(mounted.values()) == [DASHBOARD], mounted
    (dashboard_path,) = mounted
    assert env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == str(dashboard_path)

    # The dashboard asks for a Prometheus data source, which the provisioned one is.
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    kinds = {
        v["name"]: v.get("query")
        for v in dashboard["templating"]["list"]
        if v["type"] == "datasource"
    }
    assert kinds == {"DS_PROMETHEUS": source["type"]}


def test_readme_says_how_to_start_and_where_to_look() -> None:
    readme = (COMPOSE_DIR / "README.md").read_text(encoding="utf-8")
    for text in (
        "docker compose up",
        "http://localhost:3000",
        "http://localhost:9090",
        f"http://localhost:{ALERTMANAGER_PORT}",
    ):
        assert text in readme


def test_compose_itself_accepts_the_file(tmp_path: Path) -> None:
    """A real Compose implementation validates the file (``config`` needs no engine).

    ``docker compose`` (v2) when present; else Debian's ``docker-compose`` (v1.29, which
    .ci/run installs), on a copy in the same folder layout without the top-level ``name``,
    a key that v1 predates.
    """
    docker = shutil.which("docker")
    if docker and run([docker, "compose", "version"], timeout=30).returncode == 0:
        command = [docker, "compose", "-f", str(COMPOSE), "config", "--quiet"]
    else:
        legacy = require_tool("docker-compose")
        copy = tmp_path / "deploy"
        shutil.copytree(REPO / "deploy", copy)
        doc = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
        assert doc.pop("name", None) == "realtimekit"
        (copy / "compose" / "compose.yaml").write_text(yaml.safe_dump(doc), encoding="utf-8")
        command = [legacy, "-f", str(copy / "compose" / "compose.yaml"), "config", "--quiet"]
    result = run(command, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
