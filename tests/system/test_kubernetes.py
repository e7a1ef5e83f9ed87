"""The Kubernetes manifests in deploy/kubernetes, as kustomize renders them.

- The base and the demo and sharded overlays render offline (``kubectl kustomize``), into the
  expected objects, without a namespace, a Secret or a stray name.
- The core kinds validate against the Kubernetes API schemas (``kubernetes-validate``,
  offline, strict: unknown fields are errors) of the oldest supported and newest known
  Kubernetes versions; the Prometheus Operator's kinds are checked by hand here.
- The Deployment keeps its security settings, probes, resources and mounts; the config the
  ConfigMap carries passes ``--config.check``; a change to it renames the ConfigMap and so
  rolls the pod.
- The PrometheusRule is exactly what scripts/gen-prometheusrule writes, its groups are those
  of deploy/prometheus/*.yml and promtool accepts them; the ServiceMonitor makes the job
  label the one the alerts select, and its relabeling works in a real Prometheus.
- checkov finds nothing that is not suppressed with a reason.
- The webhook receiver: its port is on the container and alone on a Service of its own, which
  the ServiceMonitor leaves out; the base config's commented-out webhooks section, turned on,
  passes ``--config.check`` with that port and path; the Ingress examples, rendered with the
  base and the sharded overlay, route only the receiver's exact path over HTTPS to the
  receiver's port (of each shard, one host per shard), and nothing routes to port http.
- The sharded overlay is the base with a StatefulSet for the Deployment (same pod template,
  security settings included, but for the shard's env and args) and a headless Service: pod
  I runs ``--shard=I`` (from its pod-index label) ``--total-shards=N``, N following the one
  replica count, also through an overlay of it that repeats the README's replacement; the
  args pass the exporter's parser for every pod; shards scraped as the Operator's targets
  give every stream once and the app-level series once, in a real Prometheus.

kubectl, promtool, prometheus and checkov are looked up on PATH, kubernetes-validate is
imported: when one is missing the tests that need it skip, except in CI (``CI`` set),
where they fail.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import os
import re
import shutil
import sys
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
import yaml

from exporter import __version__
from exporter.cli import DEFAULT_PORT
from exporter.client import ENDPOINT_LISTING, ENDPOINTS
from exporter.config import DEFAULT_WEBHOOK_PATH, DEFAULT_WEBHOOK_PORT
from exporter.config import load as load_config
from tests import REPO
from tests.procs import (
    exporter_command,
    require_tool,
    run,
    spawned_exporter,
    spawned_prometheus,
    spawned_simulator,
    wait_for,
)

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path
    from types import ModuleType

K8S = REPO / "deploy" / "kubernetes"
BASE = K8S / "base"
DEMO = K8S / "demo"
SHARDED = K8S / "sharded"
README = K8S / "README.md"
CHECKOV_CONFIG = K8S / ".checkov.yaml"
RULE_FILES = (
    REPO / "deploy" / "prometheus" / "alerts.yml",
    REPO / "deploy" / "prometheus" / "recording.yml",
)
GENERATOR = REPO / "scripts" / "gen-prometheusrule"
EXAMPLES = K8S / "examples"
INGRESS_EXAMPLE = EXAMPLES / "webhooks-ingress.yaml"
SHARDED_INGRESS_EXAMPLE = EXAMPLES / "webhooks-ingress-sharded.yaml"
EXAMPLE_OF = {"base": INGRESS_EXAMPLE, "sharded": SHARDED_INGRESS_EXAMPLE}  # overlay: its Ingress
PROMETHEUS_RULE = BASE / "prometheusrule.yaml"

NAME = "realtimekit-exporter"
LABELS = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/instance": NAME}
IMAGE = f"ghcr.io/realtimekit-exporter/realtimekit-exporter:{__version__}"
CONFIG_DIR = "/etc/realtimekit-exporter"
CONFIG_PATH = f"{CONFIG_DIR}/config.yaml"
TOKEN_PATH = f"{CONFIG_DIR}/token/token"
TOKEN_SECRET = "realtimekit-exporter-token"
UID = 10241  # the image's USER (Dockerfile)
PORT = DEFAULT_PORT  # 10241, the default --web.listen-address port
WEBHOOK_PORT = DEFAULT_WEBHOOK_PORT  # 10243, the default webhooks.listen_address port
WEBHOOK_PATH = DEFAULT_WEBHOOK_PATH  # /webhooks/realtimekit
WEBHOOK_SERVICE = f"{NAME}-webhooks"
WEBHOOK_LABELS = {**LABELS, "app.kubernetes.io/component": "webhooks"}
CORE_KINDS = {"ServiceAccount", "ConfigMap", "Service"}  # and the overlay's WORKLOAD
WORKLOAD = {"base": "Deployment", "demo": "Deployment", "sharded": "StatefulSet"}
OPERATOR_API = "monitoring.coreos.com/v1"
# The oldest Kubernetes the manifests must suit, and the newest kubernetes-validate knows.
MIN_KUBERNETES = "1.29"
# What checkov may report as skipped, each with its reason in a checkov.io/skipN annotation
# (CKV_K8S_21, the default namespace, is skipped in .checkov.yaml: the base has none).
CHECKOV_ACCEPTED = {"CKV_K8S_43", "CKV_K8S_15", "CKV2_K8S_6"}
# The target labels the Prometheus Operator gives every scraped series.
OPERATOR_LABELS = {
    "endpoint": "http",
    "namespace": "test",
    "service": "realtimekit-exporter",
    "pod": "realtimekit-exporter-0",
    "container": "exporter",
}

TIMEOUT = 60  # seconds for one kubectl, promtool, checkov or exporter run; all take a few

Doc = dict[str, Any]


def _job_selected_by_alerts() -> str:
    """The job that RealtimeKitExporterDown selects in deploy/prometheus/alerts.yml."""
    rules = [r for g in _load(RULE_FILES[0])["groups"] for r in g["rules"]]
    (down,) = [r for r in rules if r.get("alert") == "RealtimeKitExporterDown"]
    match = re.search(r'up\{job="([^"]+)"\}', down["expr"])
    assert match, down["expr"]
    return match.group(1)


def _load(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def _source_groups() -> list[Doc]:
    return [group for path in RULE_FILES for group in _load(path)["groups"]]


def require_module(name: str) -> ModuleType:
    """Import ``name``; without it, fail on CI (env CI set), else skip."""
    try:
        return importlib.import_module(name)
    except ImportError:
        reason = f"Python module {name} is not installed; it is needed for this test"
        if os.environ.get("CI"):
            pytest.fail(reason + " and CI is set", pytrace=False)
        pytest.skip(reason)


def kustomize(directory: Path) -> list[Doc]:
    """The objects ``kubectl kustomize directory`` renders, in its order."""
    kubectl = require_tool("kubectl")
    done = run([kubectl, "kustomize", str(directory)], timeout=TIMEOUT)
    assert done.returncode == 0, f"kubectl kustomize {directory} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc is not None]


def one(docs: list[Doc], kind: str) -> Doc:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def named(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [doc for doc in docs if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def service(docs: list[Doc], name: str = NAME) -> Doc:
    """The Service ``name``: by default the exporter's own (port http)."""
    return named(docs, "Service", name)


def container(docs: list[Doc], kind: str = "Deployment") -> Doc:
    (only,) = one(docs, kind)["spec"]["template"]["spec"]["containers"]
    return dict(only)


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether a Kubernetes label selector (matchLabels and matchExpressions) selects an
    object with these labels."""
    if not dict(selector.get("matchLabels", {})).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
        assert operator in {"In", "NotIn", "Exists", "DoesNotExist"}, operator
    return True


@pytest.fixture(scope="module")
def base() -> list[Doc]:
    return kustomize(BASE)


@pytest.fixture(scope="module")
def demo() -> list[Doc]:
    return kustomize(DEMO)


@pytest.fixture(scope="module")
def sharded() -> list[Doc]:
    return kustomize(SHARDED)


# -- what is rendered -----------------------------------------------------------------
def test_base_renders_the_expected_objects(base: list[Doc]) -> None:
    kinds = sorted((doc["apiVersion"], doc["kind"]) for doc in base)
    assert kinds == sorted(
        [
            ("v1", "ServiceAccount"),
            ("v1", "ConfigMap"),
            ("v1", "Service"),
            ("v1", "Service"),
            ("apps/v1", "Deployment"),
            (OPERATOR_API, "ServiceMonitor"),
            (OPERATOR_API, "PrometheusRule"),
        ]
    )
    for doc in base:
        meta = doc["metadata"]
        assert "namespace" not in meta, f"{doc['kind']} names a namespace"
        assert LABELS.items() <= meta["labels"].items(), doc["kind"]
        if doc["kind"] == "Service":
            assert meta["name"] in {NAME, WEBHOOK_SERVICE}, meta["name"]
        elif doc["kind"] != "ConfigMap":
            assert meta["name"] == NAME, doc["kind"]
    # No Secret: it is created by hand (an applied placeholder would overwrite the token).
    example = _load(BASE / "secret.example.yaml")
    assert example["kind"] == "Secret" and example["metadata"]["name"] == TOKEN_SECRET
    assert set(example["stringData"]) == {"token"}


def _scrape_job(docs: list[Doc]) -> str:
    """The job label the Prometheus Operator gives the targets of the rendered ServiceMonitor:
    the value of the selected Service's label that jobLabel names, else the Service's name
    (and no relabeling of job overrides it)."""
    monitor = one(docs, "ServiceMonitor")["spec"]
    assert set(monitor["selector"]) <= {"matchLabels", "matchExpressions"}
    selected = [
        doc["metadata"]["name"]
        for doc in docs
        if doc["kind"] == "Service" and selects(monitor["selector"], doc["metadata"]["labels"])
    ]
    assert selected == [NAME], f"the ServiceMonitor selects the Services {selected}"
    labels = service(docs)["metadata"]["labels"]
    for endpoint in monitor["endpoints"]:
        relabeled = [r for r in endpoint.get("relabelings", []) if r.get("targetLabel") == "job"]
        assert relabeled == [], relabeled
    return str(labels.get(monitor.get("jobLabel", ""), NAME))


def test_demo_is_scraped_as_a_job_the_alerts_do_not_select(
    base: list[Doc], demo: list[Doc]
) -> None:
    """In a Prometheus that loads the real rules too, the demo's streams (which stop every
    minute, one of them expected live) must not count as the exporter's: its job differs."""
    alerts_job = _job_selected_by_alerts()
    assert _scrape_job(base) == alerts_job
    assert _scrape_job(demo) == "realtimekit-exporter-demo" != alerts_job
    # The demo Service still selects the demo pod.
    demo_service = service(demo)
    pod_labels = one(demo, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert demo_service["spec"]["selector"].items() <= pod_labels.items()
    # And the base's ServiceMonitor would not pick the demo's Service up.
    base_selector = one(base, "ServiceMonitor")["spec"]["selector"]
    assert not selects(base_selector, demo_service["metadata"]["labels"])


def test_demo_overlay_runs_demo_mode_without_token_or_rules(
    base: list[Doc], demo: list[Doc]
) -> None:
    assert {d["kind"] for d in demo} == {d["kind"] for d in base} - {"PrometheusRule"}
    exporter = container(demo)
    assert exporter["args"] == ["--demo", "--log.format=json"]
    assert not exporter.get("volumeMounts")
    assert not one(demo, "Deployment")["spec"]["template"]["spec"].get("volumes")
    # Demo mode runs no webhook receiver: neither its port nor its Service.
    assert [d["metadata"]["name"] for d in demo if d["kind"] == "Service"] == [NAME]
    assert exporter["ports"] == [p for p in container(base)["ports"] if p["name"] != "webhooks"]
    # Everything else is the base's.
    for key in ("securityContext", "resources", "livenessProbe", "readinessProbe"):
        assert exporter[key] == container(base)[key], key


@pytest.mark.parametrize("overlay", sorted(WORKLOAD))
@pytest.mark.parametrize("version", [MIN_KUBERNETES, "newest"])
def test_core_objects_validate_against_the_kubernetes_schemas(
    overlay: str, version: str, request: pytest.FixtureRequest
) -> None:
    kv = require_module("kubernetes_validate")
    if version == "newest":
        version = kv.latest_version()
    known = {kv.utils.major_minor(v) for v in kv.utils.all_versions()}
    assert kv.utils.major_minor(version) in known, (
        f"kubernetes-validate {kv.version.__version__} has no schemas for Kubernetes "
        f"{version} (only {sorted(known)}): raise MIN_KUBERNETES or pin an older release"
    )
    docs: list[Doc] = request.getfixturevalue(overlay)
    kinds = CORE_KINDS | {WORKLOAD[overlay]}
    core = [doc for doc in docs if doc["kind"] in kinds]
    assert {doc["kind"] for doc in core} == kinds
    for doc in core:
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            pytest.fail(
                f"{doc['kind']} is invalid for Kubernetes {version} at {where}: {exc.message}"
            )


def test_schema_validation_catches_a_misspelt_field(base: list[Doc]) -> None:
    """The validation above is strict: a typo in a security setting is not ignored."""
    kv = require_module("kubernetes_validate")
    deployment = copy.deepcopy(one(base, "Deployment"))
    context = deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    context["readOnlyRootFileSystem"] = context.pop("readOnlyRootFilesystem")
    with pytest.raises(kv.ValidationError, match="readOnlyRootFileSystem"):
        kv.validate(deployment, MIN_KUBERNETES, strict=True)


# -- the Deployment -------------------------------------------------------------------
def test_deployment_runs_one_exporter_at_a_time(base: list[Doc]) -> None:
    spec = one(base, "Deployment")["spec"]
    assert spec["replicas"] == 1  # one exporter per API token
    assert spec["strategy"] == {"type": "Recreate"}  # never two, even during a rollout
    assert spec["selector"]["matchLabels"] == LABELS
    assert LABELS.items() <= spec["template"]["metadata"]["labels"].items()


def test_deployment_security_settings(base: list[Doc]) -> None:
    sa = one(base, "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False
    pod = one(base, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "fsGroup": UID,  # the group the kubelet gives the token file (see the mounts)
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    exporter = container(base)
    assert exporter["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "privileged": False,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert all(mount.get("readOnly") for mount in exporter["volumeMounts"])


def test_deployment_image_args_and_resources(base: list[Doc]) -> None:
    exporter = container(base)
    assert exporter["image"] == IMAGE  # the release in exporter/__init__.py
    assert exporter["args"] == [f"--config.file={CONFIG_PATH}", "--log.format=json"]
    assert "command" not in exporter  # the image's ENTRYPOINT, realtimekit-exporter
    resources = exporter["resources"]
    assert set(resources) == {"requests", "limits"}
    for kind in ("requests", "limits"):
        assert set(resources[kind]) == {"cpu", "memory"}, kind
    assert resources["requests"] == {"cpu": "10m", "memory": "64Mi"}
    assert resources["limits"] == {"cpu": "500m", "memory": "128Mi"}


def test_probes_and_port(base: list[Doc]) -> None:
    exporter = container(base)
    assert exporter["ports"] == [
        {"name": "http", "containerPort": PORT, "protocol": "TCP"},
        {"name": "webhooks", "containerPort": WEBHOOK_PORT, "protocol": "TCP"},
    ]
    # No --web.listen-address: the exporter's default, :10241, is the containerPort.
    assert not any(arg.startswith("--web.listen-address") for arg in exporter["args"])
    assert exporter["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": "http"}
    assert exporter["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "http"}


def test_config_and_token_mounts(base: list[Doc]) -> None:
    configmap = one(base, "ConfigMap")
    generated = configmap["metadata"]["name"]
    assert re.fullmatch(r"realtimekit-exporter-config-[a-z0-9]{10}", generated), generated
    pod = one(base, "Deployment")["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["name"]: mount for mount in container(base)["volumeMounts"]}
    assert set(volumes) == set(mounts) == {"config", "token"}

    # The config file: the generated (hash-suffixed) ConfigMap, mounted where the args say.
    assert volumes["config"]["configMap"]["name"] == generated
    assert mounts["config"]["mountPath"] == CONFIG_PATH
    assert mounts["config"]["subPath"] in configmap["data"]
    assert configmap["data"][mounts["config"]["subPath"]] == (BASE / "config.yaml").read_text(
        encoding="utf-8"
    )

    # The token: the Secret's key `token`, at the path config.yaml's api.token_file names.
    secret = volumes["token"]["secret"]
    assert secret["secretName"] == TOKEN_SECRET
    assert not secret.get("optional")
    # Owned by root and the pod's fsGroup: readable by the exporter's group, not by others.
    assert secret["defaultMode"] == 0o440
    assert pod["securityContext"]["fsGroup"] == container(base)["securityContext"]["runAsGroup"]
    (item,) = secret["items"]
    assert item["key"] == "token"
    assert f"{mounts['token']['mountPath']}/{item['path']}" == TOKEN_PATH
    config = yaml.safe_load(configmap["data"]["config.yaml"])
    assert config["api"]["token_file"] == TOKEN_PATH
    assert "token" not in config["api"]


def test_configmap_config_passes_config_check(base: list[Doc], tmp_path: Path) -> None:
    """The exporter accepts the config the ConfigMap carries, with the Secret's file in
    place (only api.token_file is pointed at a stand-in for it)."""
    config = yaml.safe_load(one(base, "ConfigMap")["data"]["config.yaml"])
    assert config["api"]["token_file"] == TOKEN_PATH
    token = tmp_path / "token"
    token.write_text("dummy-token-for-config-check\n", encoding="utf-8")
    config["api"]["token_file"] = str(token)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "CLOUDFLARE_API_TOKEN"}
    done = run(
        exporter_command("--config.file", str(path), "--config.check"), timeout=TIMEOUT, env=env
    )
    assert done.returncode == 0, done.stderr
    assert ": OK: " in done.stdout, done.stdout


def test_a_config_change_renames_the_configmap_and_rolls_the_pod(
    base: list[Doc], tmp_path: Path
) -> None:
    copied = tmp_path / "base"
    shutil.copytree(BASE, copied)
    config = copied / "config.yaml"
    config.write_text(config.read_text(encoding="utf-8").replace("30s", "60s"), encoding="utf-8")
    changed = kustomize(copied)
    before, after = (
        one(base, "ConfigMap")["metadata"]["name"],
        one(changed, "ConfigMap")["metadata"]["name"],
    )
    assert before != after
    (volume,) = [
        v
        for v in one(changed, "Deployment")["spec"]["template"]["spec"]["volumes"]
        if "configMap" in v
    ]
    assert volume["configMap"]["name"] == after


# -- Service and ServiceMonitor -------------------------------------------------------
def test_service_selects_the_pod_on_port_http(base: list[Doc]) -> None:
    metrics = service(base)
    assert metrics["spec"]["type"] == "ClusterIP"
    pod_labels = one(base, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert metrics["spec"]["selector"].items() <= pod_labels.items()
    # Port http only: the webhook receiver has a Service of its own.
    assert metrics["spec"]["ports"] == [
        {"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}
    ]


def test_servicemonitor_scrapes_the_service_as_the_alerts_job(base: list[Doc]) -> None:
    job = _job_selected_by_alerts()
    assert job == NAME
    metrics = service(base)
    monitor = one(base, "ServiceMonitor")
    assert monitor["apiVersion"] == OPERATOR_API
    assert monitor["metadata"]["name"] == NAME
    spec = monitor["spec"]
    assert set(spec) <= {"jobLabel", "selector", "endpoints", "namespaceSelector"}
    # The Operator's job label is the value of the Service label jobLabel names, and the
    # Service's name when that label is missing: both are the alerts' job.
    assert metrics["metadata"]["labels"][spec["jobLabel"]] == job
    assert metrics["metadata"]["name"] == job
    # It selects the Service, in its own namespace (no namespaceSelector), and not the
    # webhook receiver's, which carries the same name labels.
    assert selects(spec["selector"], metrics["metadata"]["labels"])
    assert not selects(spec["selector"], service(base, WEBHOOK_SERVICE)["metadata"]["labels"])
    assert "namespaceSelector" not in spec
    (endpoint,) = spec["endpoints"]
    assert endpoint["port"] in {port["name"] for port in metrics["spec"]["ports"]}
    assert endpoint["port"] == "http"
    assert endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "30s"  # what the rules' unit tests assume
    assert _seconds(endpoint["scrapeTimeout"]) <= _seconds(endpoint["interval"])
    assert "metricRelabelings" not in endpoint  # the exporter's labels need no repair


def _seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)([sm])", duration)
    assert match, duration
    return int(match[1]) * (60 if match[2] == "m" else 1)


# -- PrometheusRule -------------------------------------------------------------------
def test_prometheusrule_is_what_the_generator_writes() -> None:
    """The committed file cannot drift from deploy/prometheus/*.yml."""
    done = run([sys.executable, str(GENERATOR), "--stdout"], timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert done.stdout == PROMETHEUS_RULE.read_text(encoding="utf-8"), (
        f"{PROMETHEUS_RULE.relative_to(REPO)} is out of date: run scripts/gen-prometheusrule"
    )
    assert done.stdout.startswith("# generated by scripts/gen-prometheusrule; do not edit")
    check = run([sys.executable, str(GENERATOR), "--check"], timeout=TIMEOUT)
    assert check.returncode == 0, check.stderr


def test_prometheusrule_carries_the_rule_files_groups(base: list[Doc]) -> None:
    rule = one(base, "PrometheusRule")
    assert rule["apiVersion"] == OPERATOR_API
    assert rule["metadata"]["name"] == NAME
    assert set(rule["spec"]) == {"groups"}
    assert rule["spec"]["groups"] == _source_groups()
    assert _load(PROMETHEUS_RULE)["spec"]["groups"] == _source_groups()
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"}, group["name"]
        for item in group["rules"]:
            assert ("alert" in item) != ("record" in item), item
            assert set(item) <= {
                "alert",
                "record",
                "expr",
                "for",
                "keep_firing_for",
                "labels",
                "annotations",
            }
            assert isinstance(item["expr"], str) and item["expr"].strip()


def test_promtool_accepts_the_prometheusrule_groups(base: list[Doc], tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    rules = tmp_path / "prometheusrule-groups.yml"
    rules.write_text(
        yaml.safe_dump({"groups": one(base, "PrometheusRule")["spec"]["groups"]}), encoding="utf-8"
    )
    done = run([promtool, "check", "rules", str(rules)], timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout, done.stdout


def test_an_overlay_adds_runbook_links_as_the_readme_says(base: list[Doc], tmp_path: Path) -> None:
    """README.md's way to give the alerts runbook links: the generator's PrometheusRule with
    --runbook-base, as a patch in an overlay of the base. Every alert then has runbook_url
    BASE#<anchor of its runbook>; nothing else of the rules or the other objects changes."""
    text = README.read_text(encoding="utf-8")
    assert "scripts/gen-prometheusrule --runbook-base" in text
    assert "- path: prometheusrule.yaml" in text
    runbooks = "https://git.example.com/ops/realtimekit-exporter/blob/v0.1.0/docs/alerts.md"
    shutil.copytree(BASE, tmp_path / "base")
    mine = tmp_path / "mine"
    mine.mkdir()
    done = run(
        [sys.executable, str(GENERATOR), "--runbook-base", runbooks, "--stdout"], timeout=TIMEOUT
    )
    assert done.returncode == 0, done.stderr
    (mine / "prometheusrule.yaml").write_text(done.stdout, encoding="utf-8")
    kustomization = {"resources": ["../base"], "patches": [{"path": "prometheusrule.yaml"}]}
    (mine / "kustomization.yaml").write_text(yaml.safe_dump(kustomization), encoding="utf-8")
    rendered = kustomize(mine)

    groups = one(rendered, "PrometheusRule")["spec"]["groups"]
    alerts = [r for g in groups for r in g["rules"] if "alert" in r]
    assert alerts
    for rule in alerts:
        annotations = rule["annotations"]
        path, _, anchor = annotations["runbook"].partition("#")
        assert path == "docs/alerts.md" and anchor, annotations["runbook"]
        assert annotations.pop("runbook_url") == f"{runbooks}#{anchor}"
    assert groups == _source_groups()
    assert [d for d in rendered if d["kind"] != "PrometheusRule"] == [
        d for d in base if d["kind"] != "PrometheusRule"
    ]


# -- checkov --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overlay", [*sorted(WORKLOAD), *(f"{name}+webhooks-ingress" for name in sorted(EXAMPLE_OF))]
)
def test_checkov_finds_nothing_unexplained(
    overlay: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Also with the Ingress example of the base and of the sharded overlay."""
    checkov = require_tool("checkov")
    name, _, example = overlay.partition("+")
    docs: list[Doc] = (
        _with_example(name, tmp_path / "render") if example else request.getfixturevalue(name)
    )
    manifests = tmp_path / f"{overlay}.yaml"
    manifests.write_text(yaml.safe_dump_all(docs), encoding="utf-8")
    command = [checkov, "--config-file", str(CHECKOV_CONFIG), "-f", str(manifests), "-o", "json"]
    env = {**os.environ, "HOME": str(tmp_path)}  # its caches go there, not to ~
    done = run(command, timeout=TIMEOUT, env=env)
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        pytest.fail(
            f"checkov gave no JSON report (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    reports = report if isinstance(report, list) else [report]
    assert [r["check_type"] for r in reports] == ["kubernetes"]
    results = reports[0]["results"]
    failed = [
        f"{c['check_id']} {c['check_name']}: {c['resource']}" for c in results["failed_checks"]
    ]
    assert failed == [], "checkov findings:\n" + "\n".join(failed)
    assert results["parsing_errors"] == []
    skipped = {c["check_id"]: c for c in results["skipped_checks"]}
    assert set(skipped) == CHECKOV_ACCEPTED
    for check in skipped.values():
        reason = check["check_result"].get("suppress_comment", "")
        assert len(reason) > 20, f"{check['check_id']} is skipped without a reason"
    assert done.returncode == 0, done.stderr


# -- the exporter's labels under the Operator's target labels, in a real Prometheus ----
@pytest.mark.timeout(90)
def test_no_exporter_label_collides_with_the_operators_target_labels(tmp_path: Path) -> None:
    """Scraped with the target labels the Operator sets, no series of the demo exporter has
    a label renamed to exported_* (as an `endpoint` label of its own once was)."""
    require_tool("prometheus")
    with spawned_exporter(tmp_path, None, "--demo") as (exporter, address):
        target = {"targets": [address], "labels": OPERATOR_LABELS}
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [{"job_name": NAME, "static_configs": [target]}],
        }
        with spawned_prometheus(tmp_path, config, watch=[exporter]) as prometheus:

            def series() -> list[dict[str, str]]:
                return list(prometheus.data("/api/v1/series", **{"match[]": f'{{job="{NAME}"}}'}))

            requests = "realtimekit_exporter_api_requests_total"
            wait_for(
                lambda: (
                    any(m["__name__"] == requests for m in series())
                    and any(m["__name__"] == "realtimekit_livestream_live" for m in series())
                ),
                timeout=30,
                what=f"{requests} and the livestream series in Prometheus",
                watch=[exporter],
            )
            found = series()
            renamed = sorted({k for m in found for k in m if k.startswith("exported_")})
            assert renamed == [], renamed
            assert all(m["endpoint"] == "http" for m in found)
            api = {m["api_endpoint"] for m in found if m["__name__"] == requests}
            assert api <= set(ENDPOINTS)  # the client's names
            assert ENDPOINT_LISTING in api


# -- the sharded overlay --------------------------------------------------------------
SHARDS = 3  # sharded/kustomization.yaml's replica count, the shard count
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"  # set on StatefulSet pods, Kubernetes >= 1.28
SHARD_ARGS = ["--shard=$(POD_INDEX)", "--total-shards=$(TOTAL_SHARDS)"]


def statefulset(docs: list[Doc]) -> Doc:
    return one(docs, "StatefulSet")


def _env(exporter: Doc) -> dict[str, Doc]:
    return {var["name"]: var for var in exporter.get("env", [])}


def _total_shards(docs: list[Doc]) -> str:
    """The value the shards get as --total-shards."""
    return str(_env(container(docs, "StatefulSet"))["TOTAL_SHARDS"]["value"])


def _pod_args(docs: list[Doc], ordinal: int | None) -> list[str]:
    """The arguments the kubelet gives the exporter in the StatefulSet's pod ``ordinal``:
    its env resolved (fieldRefs to labels from the pod's labels, the pod-index label among
    them unless ``ordinal`` is None, as before Kubernetes 1.28; a missing label is empty),
    then $(VAR) in the args expanded as Kubernetes does ($$ is a $, an unknown var stays)."""
    template = statefulset(docs)["spec"]["template"]
    labels = dict(template["metadata"]["labels"])
    if ordinal is not None:
        labels[POD_INDEX_LABEL] = str(ordinal)
    values: dict[str, str] = {}
    for name, var in _env(container(docs, "StatefulSet")).items():
        if "value" in var:
            values[name] = str(var["value"])
            continue
        path = var["valueFrom"]["fieldRef"]["fieldPath"]
        match = re.fullmatch(r"metadata\.labels\['([^']+)'\]", path)
        assert match, f"{name}: a fieldRef this test cannot resolve: {path}"
        values[name] = labels.get(match[1], "")

    def expand(arg: str) -> str:
        return re.sub(
            r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
            lambda m: "$" if m[0] == "$$" else values.get(m[1], m[0]),
            arg,
        )

    return [expand(arg) for arg in container(docs, "StatefulSet")["args"]]


def test_sharded_is_the_base_with_a_statefulset_for_the_deployment(
    base: list[Doc], sharded: list[Doc]
) -> None:
    def kinds(docs: list[Doc]) -> list[str]:
        return sorted(doc["kind"] for doc in docs)

    # Less the base's webhook Service: a shared Service would hand each delivery to any one
    # shard (each shard needs a URL of its own: examples/webhooks-ingress-sharded.yaml).
    base_kinds = kinds([d for d in base if d["metadata"]["name"] != WEBHOOK_SERVICE])
    assert kinds(sharded) == sorted([*(k for k in base_kinds if k != "Deployment"), "StatefulSet"])
    assert [d["metadata"]["name"] for d in sharded if d["kind"] == "Service"] == [NAME]
    for doc in sharded:
        assert "namespace" not in doc["metadata"], doc["kind"]
    # The base's objects, unchanged: its ConfigMap (the same config.yaml, the same generated
    # name), ServiceAccount, ServiceMonitor and PrometheusRule.
    for kind in ("ConfigMap", "ServiceAccount", "ServiceMonitor", "PrometheusRule"):
        assert one(sharded, kind) == one(base, kind), kind
    deployment, sts = one(base, "Deployment"), statefulset(sharded)
    assert sts["apiVersion"] == "apps/v1"
    assert sts["metadata"] == deployment["metadata"]  # name, labels, checkov's reasons


def test_statefulset_runs_the_shards(base: list[Doc], sharded: list[Doc]) -> None:
    spec = statefulset(sharded)["spec"]
    assert spec["replicas"] == SHARDS
    assert _total_shards(sharded) == str(SHARDS)
    # Independent shards: started and stopped together; the default RollingUpdate stops a
    # pod before starting its replacement, so no shard ever runs twice.
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec.get("updateStrategy", {"type": "RollingUpdate"}) == {"type": "RollingUpdate"}
    assert "strategy" not in spec
    assert spec["serviceName"] == service(sharded)["metadata"]["name"]
    assert spec["selector"] == one(base, "Deployment")["spec"]["selector"]
    assert spec["revisionHistoryLimit"] == one(base, "Deployment")["spec"]["revisionHistoryLimit"]
    assert not spec.get("volumeClaimTemplates")  # nothing to keep between restarts


def test_statefulset_pod_template_is_the_deployments_but_for_the_shard(
    base: list[Doc], sharded: list[Doc]
) -> None:
    """Every setting of the base's pod (security, probes, resources, mounts, the token's
    mode, the service account) holds for the shards: their pod template is the Deployment's
    with the shard's env and two args added, nothing else."""
    template = copy.deepcopy(statefulset(sharded)["spec"]["template"])
    (exporter,) = template["spec"]["containers"]
    base_args = container(base)["args"]
    assert exporter["args"] == [*base_args, *SHARD_ARGS]
    assert set(_env(exporter)) == {"POD_INDEX", "TOTAL_SHARDS"}
    exporter["args"] = base_args
    del exporter["env"]
    assert template == one(base, "Deployment")["spec"]["template"]

    # Spelled out, what that equality keeps (the base's tests check the values).
    pod, exporter = (
        statefulset(sharded)["spec"]["template"]["spec"],
        container(sharded, "StatefulSet"),
    )
    base_pod = one(base, "Deployment")["spec"]["template"]["spec"]
    for key in ("securityContext", "automountServiceAccountToken", "serviceAccountName", "volumes"):
        assert pod[key] == base_pod[key], key
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    secret = {v["name"]: v for v in pod["volumes"]}["token"]["secret"]
    assert secret["defaultMode"] == 0o440 and pod["securityContext"]["fsGroup"] == UID
    for key in ("securityContext", "resources", "livenessProbe", "readinessProbe", "ports"):
        assert exporter[key] == container(base)[key], key
    assert exporter["securityContext"]["readOnlyRootFilesystem"] is True
    assert exporter["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert exporter["volumeMounts"] == container(base)["volumeMounts"]


def test_each_pod_takes_its_shard_from_its_pod_index_label(sharded: list[Doc]) -> None:
    env = _env(container(sharded, "StatefulSet"))
    assert env["POD_INDEX"] == {
        "name": "POD_INDEX",
        "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{POD_INDEX_LABEL}']"}},
    }
    base_args = [f"--config.file={CONFIG_PATH}", "--log.format=json"]
    for ordinal in range(SHARDS):
        assert _pod_args(sharded, ordinal) == [
            *base_args,
            f"--shard={ordinal}",
            f"--total-shards={SHARDS}",
        ]
    # Without the label (Kubernetes before 1.28) the value is empty: see the parser test.
    assert _pod_args(sharded, None)[-2:] == ["--shard=", f"--total-shards={SHARDS}"]


def _sharded_copy(tmp_path: Path) -> Path:
    """A copy of the sharded overlay and the base it builds on, side by side as in the
    repository; the copy of the overlay's directory."""
    shutil.copytree(BASE, tmp_path / "base")
    shutil.copytree(SHARDED, tmp_path / "sharded")
    return tmp_path / "sharded"


@pytest.mark.parametrize("count", [1, 7])
def test_the_shard_count_is_changed_in_one_place(
    count: int, sharded: list[Doc], tmp_path: Path
) -> None:
    """The `replicas:` count of sharded/kustomization.yaml sets both the number of pods and
    --total-shards."""
    overlay = _sharded_copy(tmp_path)
    kustomization = _load(overlay / "kustomization.yaml")
    assert kustomization["replicas"] == [{"name": NAME, "count": SHARDS}]
    kustomization["replicas"][0]["count"] = count
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization), encoding="utf-8")
    changed = kustomize(overlay)
    assert statefulset(changed)["spec"]["replicas"] == count
    assert _total_shards(changed) == str(count)
    assert _pod_args(changed, count - 1)[-2:] == [f"--shard={count - 1}", f"--total-shards={count}"]
    # Nothing else moves.
    assert [d for d in changed if d["kind"] != "StatefulSet"] == [
        d for d in sharded if d["kind"] != "StatefulSet"
    ]


def _readme_overlay() -> Doc:
    """The kustomization README.md gives for an overlay of the sharded one that changes the
    shard count (the YAML block of its sharding section that has `replacements:`)."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Sharding", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```yaml\n(.*?)```", section, flags=re.DOTALL)
    found = [yaml.safe_load(b) for b in blocks if "replacements:" in b]
    assert len(found) == 1, "README.md's sharding section: one YAML block with replacements"
    return dict(found[0])


def test_an_overlay_that_changes_the_count_keeps_total_shards_in_step(tmp_path: Path) -> None:
    """kustomize runs each kustomization's replacements on what it has built so far: a count
    changed in an overlay of the sharded one leaves --total-shards behind, unless the overlay
    repeats the replacement, as README.md's example does (with the same replacement as the
    sharded overlay)."""
    _sharded_copy(tmp_path)
    example = _readme_overlay()
    assert example["replacements"] == _load(SHARDED / "kustomization.yaml")["replacements"]
    (count,) = [r["count"] for r in example["replicas"] if r["name"] == NAME]
    assert count != SHARDS
    example["resources"] = ["../sharded"]  # the copy, not where a checkout would be
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "kustomization.yaml").write_text(yaml.safe_dump(example), encoding="utf-8")
    rendered = kustomize(mine)
    assert statefulset(rendered)["spec"]["replicas"] == count
    assert _total_shards(rendered) == str(count)

    # Without it, the pods and the shards disagree.
    del example["replacements"]
    (mine / "kustomization.yaml").write_text(yaml.safe_dump(example), encoding="utf-8")
    stale = kustomize(mine)
    assert statefulset(stale)["spec"]["replicas"] == count
    assert _total_shards(stale) == str(SHARDS)


def test_sharded_service_is_headless_and_every_shard_a_target(
    base: list[Doc], sharded: list[Doc]
) -> None:
    headless, base_service = service(sharded), service(base)
    assert headless["spec"]["clusterIP"] == "None"  # its endpoints are the pods, each a target
    assert headless["metadata"] == base_service["metadata"]
    assert {k: v for k, v in headless["spec"].items() if k != "clusterIP"} == base_service["spec"]
    # It selects every shard: the labels are the pod template's, the same for every ordinal.
    pod_labels = statefulset(sharded)["spec"]["template"]["metadata"]["labels"]
    assert headless["spec"]["selector"].items() <= pod_labels.items()
    assert POD_INDEX_LABEL not in headless["spec"]["selector"]
    # And the ServiceMonitor scrapes them as the alerts' job.
    assert _scrape_job(sharded) == _job_selected_by_alerts()


def test_sharded_args_pass_the_exporters_parser(sharded: list[Doc], tmp_path: Path) -> None:
    """Pod I's args, with the ConfigMap's config, are accepted as shard I of the count; a pod
    beyond the count (replicas above --total-shards) and a pod without its pod-index label
    (Kubernetes before 1.28) are refused, so that neither runs a wrong shard."""
    config = yaml.safe_load(one(sharded, "ConfigMap")["data"]["config.yaml"])
    token = tmp_path / "token"
    token.write_text("dummy-token-for-config-check\n", encoding="utf-8")
    config["api"]["token_file"] = str(token)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "CLOUDFLARE_API_TOKEN"}

    def check(ordinal: int | None) -> Any:
        args = [
            f"--config.file={path}" if a == f"--config.file={CONFIG_PATH}" else a
            for a in _pod_args(sharded, ordinal)
        ]
        assert f"--config.file={path}" in args
        return run(exporter_command(*args, "--config.check"), timeout=TIMEOUT, env=env)

    for ordinal in range(SHARDS):
        done = check(ordinal)
        assert done.returncode == 0, done.stderr
        assert ": OK: " in done.stdout, done.stdout
        assert f"shard {ordinal} of {SHARDS}" in done.stdout, done.stdout
    for wrong in (SHARDS, None):
        done = check(wrong)
        assert done.returncode != 0, (wrong, done.stdout)
        assert "--shard" in done.stderr, done.stderr


@pytest.mark.timeout(90)
def test_shards_scraped_as_the_operators_targets_give_each_stream_once(
    sharded: list[Doc], tmp_path: Path
) -> None:
    """The pods of the StatefulSet, run with their args and the ConfigMap's config against
    the simulator and scraped as the Operator would (one target per pod, job from the
    ServiceMonitor), export every stream from exactly one shard, and the app-level series
    (realtimekit_up) from shard 0 only."""
    require_tool("prometheus")
    job = _scrape_job(sharded)
    config = yaml.safe_load(one(sharded, "ConfigMap")["data"]["config.yaml"])
    (app,) = config["apps"]
    streams = 24
    token = tmp_path / "token"
    token.write_text("sharded-test-token\n", encoding="utf-8")
    with contextlib.ExitStack() as stack:
        simulator, origin = stack.enter_context(
            spawned_simulator(
                tmp_path,
                *("--account-id", app["account_id"], "--app-id", app["app_id"]),
                *("--token-file", str(token), "--livestreams", str(streams)),
            )
        )
        procs = [simulator]
        config["api"].update(base_url=origin + "/client/v4", token_file=str(token))
        config["poll"]["interval"] = "1s"
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        targets = []
        for ordinal in range(SHARDS):
            args = [
                f"--config.file={path}" if a.startswith("--config.file=") else a
                for a in _pod_args(sharded, ordinal)
            ]
            workdir = tmp_path / f"pod-{ordinal}"
            workdir.mkdir()
            proc, address = stack.enter_context(spawned_exporter(workdir, None, *args))
            procs.append(proc)
            labels = {**OPERATOR_LABELS, "pod": f"{NAME}-{ordinal}"}
            targets.append({"targets": [address], "labels": labels})
        prometheus = stack.enter_context(
            spawned_prometheus(
                tmp_path,
                {
                    "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                    "scrape_configs": [{"job_name": job, "static_configs": targets}],
                },
                watch=procs,
            )
        )
        procs.append(prometheus.proc)
        live = f'realtimekit_livestream_live{{job="{job}"}}'
        wait_for(
            lambda: (
                prometheus.value(f'count(up{{job="{job}"}} == 1)') == SHARDS
                and prometheus.value(f"count(count by (livestream_id) ({live}))") == streams
            ),
            timeout=30,
            what=lambda: (
                f"{SHARDS} targets up and {streams} streams in Prometheus: "
                + prometheus.history(f"count by (pod) ({live})")
            ),
            watch=procs,
        )
        per_stream = prometheus.query(f"count by (livestream_id) ({live}) > 1")
        assert per_stream == [], "streams exported by more than one shard"
        shards = prometheus.query(f"count by (pod) ({live})")
        assert len(shards) == SHARDS, shards  # each shard has some of the 24 streams
        (up,) = prometheus.query(f'realtimekit_up{{job="{job}"}}')
        assert up["metric"]["pod"] == f"{NAME}-0", up
        renamed = sorted(n for n in prometheus.data("/api/v1/labels") if n.startswith("exported_"))
        assert renamed == [], renamed


# -- the webhook receiver -------------------------------------------------------------
POD_NAME_LABEL = "statefulset.kubernetes.io/pod-name"  # set on every StatefulSet pod
# (host, path, pathType, pod, container port name, container port number)
Route = tuple[str, str, str, str, str, int]


def _pods(docs: list[Doc]) -> list[tuple[str, dict[str, str], Doc]]:
    """(name, labels, exporter container) of every pod the rendered workload runs: the
    Deployment's one, or the StatefulSet's 0 to replicas-1 with the labels the StatefulSet
    controller gives each (its name and its number)."""
    pods = []
    for doc in docs:
        if doc["kind"] not in WORKLOAD.values():
            continue
        template, name = doc["spec"]["template"], doc["metadata"]["name"]
        (exporter,) = template["spec"]["containers"]
        labels = dict(template["metadata"]["labels"])
        if doc["kind"] == "Deployment":
            pods.append((name, labels, exporter))
            continue
        for ordinal in range(doc["spec"]["replicas"]):
            pod = f"{name}-{ordinal}"
            own = {POD_NAME_LABEL: pod, POD_INDEX_LABEL: str(ordinal)}
            pods.append((pod, {**labels, **own}, exporter))
    return pods


def _routes(docs: list[Doc]) -> list[Route]:
    """Where the Ingresses among ``docs`` lead: every rule's path, followed through its
    backend's Service port and that port's targetPort (a name or a number) to each pod the
    Service selects and the container port it reaches. A rule that reaches nothing has no
    route."""
    pods = _pods(docs)
    routes: list[Route] = []
    for ingress in (doc for doc in docs if doc["kind"] == "Ingress"):
        spec = ingress["spec"]
        assert "defaultBackend" not in spec, "a defaultBackend would take every other path"
        for rule in spec["rules"]:
            for path in rule["http"]["paths"]:
                assert set(path["backend"]) == {"service"}, path["backend"]
                backend = path["backend"]["service"]
                target = service(docs, backend["name"])
                wanted = backend["port"]
                (port,) = [
                    p
                    for p in target["spec"]["ports"]
                    if p.get("name") == wanted.get("name") or p["port"] == wanted.get("number")
                ]
                target_port = port.get("targetPort", port["port"])
                for pod, labels, exporter in pods:
                    if not selects({"matchLabels": target["spec"]["selector"]}, labels):
                        continue
                    routes.extend(
                        (
                            rule["host"],
                            path["path"],
                            path["pathType"],
                            pod,
                            c["name"],
                            c["containerPort"],
                        )
                        for c in exporter["ports"]
                        if target_port in (c["name"], c["containerPort"])
                    )
    return routes


def _with_example(overlay: str, tmp_path: Path) -> list[Doc]:
    """``overlay`` and its Ingress example, rendered together by an overlay of both (as a
    user would add the example to theirs)."""
    shutil.copytree(BASE, tmp_path / "base")
    if overlay != "base":
        shutil.copytree(K8S / overlay, tmp_path / overlay)
    example = EXAMPLE_OF[overlay]
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(example, mine / example.name)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [f"../{overlay}", example.name],
    }
    (mine / "kustomization.yaml").write_text(yaml.safe_dump(kustomization), encoding="utf-8")
    return kustomize(mine)


def _webhooks_section_turned_on(config_text: str) -> str:
    """config.yaml with its commented-out ``webhooks:`` section uncommented."""
    lines = config_text.splitlines()
    start = lines.index("# webhooks:")
    end = start
    while (end < len(lines) and lines[end].startswith("#   ")) or end == start:
        end += 1
    return "\n".join([*lines[:start], *(line[2:] for line in lines[start:end]), *lines[end:]])


def test_webhook_port_is_on_the_container_and_alone_on_a_service_of_its_own(
    base: list[Doc],
) -> None:
    """The receiver's port is the container's port `webhooks`, and the only port of the
    Service realtimekit-exporter-webhooks, which selects the pod; the exporter's Service
    keeps port http alone, and the base exposes nothing by itself (no Ingress)."""
    ports = {p["name"]: p for p in container(base)["ports"]}
    assert ports["webhooks"]["containerPort"] == WEBHOOK_PORT != PORT
    receiver = service(base, WEBHOOK_SERVICE)
    assert receiver["metadata"]["labels"] == WEBHOOK_LABELS
    assert receiver["spec"]["type"] == "ClusterIP"
    pod_labels = one(base, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert receiver["spec"]["selector"].items() <= pod_labels.items()
    assert receiver["spec"]["ports"] == [
        {"name": "webhooks", "port": WEBHOOK_PORT, "targetPort": "webhooks", "protocol": "TCP"}
    ]
    assert [p["name"] for p in service(base)["spec"]["ports"]] == ["http"]
    # The probes stay on port http.
    for probe in ("livenessProbe", "readinessProbe"):
        assert container(base)[probe]["httpGet"]["port"] == "http", probe
    assert not [doc for doc in base if doc["kind"] == "Ingress"]


def test_base_config_webhooks_section_turned_on_passes_config_check(
    base: list[Doc], tmp_path: Path
) -> None:
    """The base's config leaves webhooks off; its commented-out section, uncommented, is
    accepted and puts the receiver on the container's port `webhooks`, at the path the
    Ingress example routes."""
    text = one(base, "ConfigMap")["data"]["config.yaml"]
    assert "webhooks" not in yaml.safe_load(text)
    turned_on = yaml.safe_load(_webhooks_section_turned_on(text))
    assert set(turned_on["webhooks"]) >= {"listen_address", "path"}
    token = tmp_path / "token"
    token.write_text("dummy-token-for-config-check\n", encoding="utf-8")
    turned_on["api"]["token_file"] = str(token)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(turned_on), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "CLOUDFLARE_API_TOKEN"}
    done = run(
        exporter_command("--config.file", str(path), "--config.check"), timeout=TIMEOUT, env=env
    )
    assert done.returncode == 0, done.stderr
    assert ": OK: " in done.stdout, done.stdout
    webhooks = load_config(path).webhooks
    assert webhooks is not None
    ports = {p["name"]: p["containerPort"] for p in container(base)["ports"]}
    assert webhooks.port == ports["webhooks"]
    (ingress,) = [doc for doc in yaml.safe_load_all(INGRESS_EXAMPLE.read_text()) if doc]
    paths = {p["path"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]}
    assert paths == {webhooks.path} == {WEBHOOK_PATH}


@pytest.mark.parametrize("overlay", sorted(EXAMPLE_OF))
def test_nothing_routes_to_the_metrics_port(overlay: str, tmp_path: Path) -> None:
    """With its Ingress example, every route of the overlay is the receiver's exact path,
    over TLS, to the container's port `webhooks`; none reaches port http (/metrics, the
    status page, /-/reload), and no Service puts port http outside the cluster."""
    docs = _with_example(overlay, tmp_path)
    routes = _routes(docs)
    assert routes
    for host, path, path_type, _, port_name, number in routes:
        assert (path, path_type) == (WEBHOOK_PATH, "Exact"), (host, path, path_type)
        assert (port_name, number) == ("webhooks", WEBHOOK_PORT), (host, port_name, number)
    ingresses = [doc for doc in docs if doc["kind"] == "Ingress"]
    for ingress in ingresses:
        hosts = {rule["host"] for rule in ingress["spec"]["rules"]}
        covered = {host for tls in ingress["spec"]["tls"] for host in tls["hosts"]}
        assert hosts <= covered, f"{sorted(hosts - covered)} without TLS"
        assert all(tls["secretName"] for tls in ingress["spec"]["tls"])
        assert "namespace" not in ingress["metadata"]
        assert WEBHOOK_LABELS.items() <= ingress["metadata"]["labels"].items()
    for doc in docs:
        if doc["kind"] == "Service":
            targets = {p.get("targetPort") for p in doc["spec"]["ports"]}
            if targets & {"http", PORT}:
                assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", doc["metadata"]
                assert doc["metadata"]["name"] == NAME
    # The example adds its objects and changes none of the overlay's.
    rendered = kustomize(K8S / overlay)
    assert [doc for doc in docs if doc in rendered] == rendered
    # And the ServiceMonitor picks none of its Services.
    assert _scrape_job(docs) == _job_selected_by_alerts()


def test_ingress_example_exposes_the_base_receiver(base: list[Doc], tmp_path: Path) -> None:
    """One rule: the receiver's path on one host, to the one pod's port `webhooks`."""
    docs = _with_example("base", tmp_path)
    assert [doc for doc in docs if doc not in base] == [one(docs, "Ingress")]
    assert _routes(docs) == [
        ("webhooks.example.com", WEBHOOK_PATH, "Exact", NAME, "webhooks", WEBHOOK_PORT)
    ]


def test_sharded_ingress_example_gives_every_shard_a_url_of_its_own(
    sharded: list[Doc], tmp_path: Path
) -> None:
    """RealtimeKit sends every delivery to every registered URL, and a shard ignores the
    streams it does not own: each shard's URL (host) must lead to that shard alone, and
    every shard must have one."""
    docs = _with_example("sharded", tmp_path)
    routes = _routes(docs)
    pods = {host: {route[3] for route in routes if route[0] == host} for host, *_ in routes}
    assert sorted(pods.values(), key=sorted) == [{f"{NAME}-{i}"} for i in range(SHARDS)]
    assert len(pods) == SHARDS
    # Per-shard Services with the receiver's port only.
    added = [doc for doc in docs if doc not in sharded]
    assert sorted(doc["kind"] for doc in added) == ["Ingress", *["Service"] * SHARDS]
    for doc in added:
        if doc["kind"] == "Service":
            assert doc["metadata"]["labels"] == WEBHOOK_LABELS
            assert [p["name"] for p in doc["spec"]["ports"]] == ["webhooks"]


@pytest.mark.parametrize("example", sorted(EXAMPLE_OF.values()), ids=lambda p: p.name)
@pytest.mark.parametrize("version", [MIN_KUBERNETES, "newest"])
def test_ingress_examples_validate_against_the_kubernetes_schemas(
    example: Path, version: str
) -> None:
    kv = require_module("kubernetes_validate")
    if version == "newest":
        version = kv.latest_version()
    docs = [doc for doc in yaml.safe_load_all(example.read_text(encoding="utf-8")) if doc]
    assert docs
    for doc in docs:
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            pytest.fail(
                f"{example.name}: {doc['kind']} is invalid for Kubernetes {version} at "
                f"{where}: {exc.message}"
            )


# -- the AlertmanagerConfig example ---------------------------------------------------
# examples/alertmanagerconfig.yaml is deploy/alertmanager/alertmanager.yml for the Prometheus
# Operator. kubernetes-validate has no schema for the Operator's kinds: its fields are checked
# here against the CRD's (monitoring.coreos.com_alertmanagerconfigs.yaml of prometheus-operator
# v0.93; unknown fields are errors, as kubectl's strict validation makes them), it renders
# with the base, and it is compared with the plain file, field by field.
ALERTMANAGER_CONFIG_EXAMPLE = EXAMPLES / "alertmanagerconfig.yaml"
ALERTMANAGER_CONFIG = REPO / "deploy" / "alertmanager" / "alertmanager.yml"
OPERATOR_ALPHA_API = "monitoring.coreos.com/v1alpha1"
AMC_SPEC_FIELDS = {"route", "receivers", "inhibitRules", "muteTimeIntervals"}
AMC_ROUTE_FIELDS = {
    "receiver",
    "groupBy",
    "groupWait",
    "groupInterval",
    "repeatInterval",
    "matchers",
    "continue",
    "routes",
    "muteTimeIntervals",
    "activeTimeIntervals",
}
AMC_MATCHER_FIELDS = {"name", "value", "matchType", "regex"}
AMC_MATCH_TYPES = {"=", "!=", "=~", "!~"}
AMC_RECEIVER_FIELDS = {
    "name",
    *(
        f"{kind}Configs"
        for kind in (
            "discord",
            "email",
            "msteams",
            "msteamsv2",
            "opsgenie",
            "pagerduty",
            "pushover",
            "rocketchat",
            "slack",
            "sns",
            "telegram",
            "victorops",
            "webex",
            "webhook",
            "wechat",
        )
    ),
}
AMC_WEBHOOK_FIELDS = {
    "url",
    "urlSecret",
    "sendResolved",
    "httpConfig",
    "maxAlerts",
    "timeout",
    "payload",
}
AMC_INHIBIT_FIELDS = {"sourceMatch", "targetMatch", "equal"}
AMC_DURATION = re.compile(r"0|(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?")  # the CRD's


class _Yaml11Loader(yaml.SafeLoader):
    """kustomize writes the matchType ``=`` bare, which YAML 1.1 (PyYAML) takes for its
    ``value`` tag and cannot construct; Kubernetes reads YAML 1.2, a string. So does this."""


def _as_string(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    assert isinstance(node, yaml.ScalarNode), node
    return str(loader.construct_scalar(node))


_Yaml11Loader.add_constructor("tag:yaml.org,2002:value", _as_string)


def _alertmanagerconfig() -> Doc:
    (doc,) = [d for d in yaml.safe_load_all(ALERTMANAGER_CONFIG_EXAMPLE.read_text()) if d]
    return dict(doc)


def _amc_matchers(matchers: list[Doc]) -> list[tuple[str, str, str]]:
    """An AlertmanagerConfig's matchers as (label, operator, value); the CRD's defaults
    (matchType "=", or "=~" with the deprecated regex: true) made explicit."""
    found = []
    for matcher in matchers:
        assert set(matcher) <= AMC_MATCHER_FIELDS, matcher
        assert "regex" not in matcher, "matchType replaces the deprecated regex"
        assert matcher["name"] and matcher.get("matchType", "=") in AMC_MATCH_TYPES, matcher
        found.append((matcher["name"], matcher.get("matchType", "="), matcher.get("value", "")))
    return found


def _am_matchers(matchers: list[str]) -> list[tuple[str, str, str]]:
    """alertmanager.yml's matchers (``name="value"``, ``name=~"regex"``...) likewise."""
    found = []
    for text in matchers:
        match = re.fullmatch(r'\s*([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*', text)
        assert match, f"not a quoted matcher: {text!r}"
        found.append((match[1], match[2], json.loads(f'"{match[3]}"')))
    return found


def _amc_route_fields(route: Doc) -> None:
    """Every field of ``route`` and of its child routes is one the CRD defines, with a
    duration of the CRD's pattern and a unique groupBy."""
    assert set(route) <= AMC_ROUTE_FIELDS, sorted(set(route) - AMC_ROUTE_FIELDS)
    for key in ("groupWait", "groupInterval", "repeatInterval"):
        if key in route:
            assert AMC_DURATION.fullmatch(route[key]) and route[key], (key, route[key])
    assert len(route.get("groupBy", [])) == len(set(route.get("groupBy", [])))
    _amc_matchers(route.get("matchers", []))
    for child in route.get("routes", []):
        _amc_route_fields(child)


def test_alertmanagerconfig_example_has_the_crds_fields_only() -> None:
    """An AlertmanagerConfig the Operator accepts: the CRD's fields only, at every level,
    receivers named once and every route's receiver among them, no namespace (applied where
    the exporter runs) and the exporter's labels."""
    doc = _alertmanagerconfig()
    assert doc["apiVersion"] == OPERATOR_ALPHA_API and doc["kind"] == "AlertmanagerConfig"
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
    assert doc["metadata"] == {"name": NAME, "labels": LABELS}
    spec = doc["spec"]
    assert set(spec) <= AMC_SPEC_FIELDS, sorted(set(spec) - AMC_SPEC_FIELDS)
    _amc_route_fields(spec["route"])
    names = [receiver["name"] for receiver in spec["receivers"]]
    assert len(names) == len(set(names)), names
    routes = [spec["route"], *spec["route"]["routes"]]
    assert {route["receiver"] for route in routes} <= set(names)
    for receiver in spec["receivers"]:
        assert set(receiver) <= AMC_RECEIVER_FIELDS, sorted(set(receiver) - AMC_RECEIVER_FIELDS)
        for webhook in receiver.get("webhookConfigs", []):
            assert set(webhook) <= AMC_WEBHOOK_FIELDS, sorted(set(webhook) - AMC_WEBHOOK_FIELDS)
            url = urlsplit(webhook["url"])
            assert url.scheme in {"http", "https"} and url.hostname, webhook["url"]
            assert url.hostname.endswith("example.com"), "the URLs are placeholders"
    for rule in spec["inhibitRules"]:
        assert set(rule) <= AMC_INHIBIT_FIELDS, sorted(set(rule) - AMC_INHIBIT_FIELDS)
        assert _amc_matchers(rule["sourceMatch"]) and _amc_matchers(rule["targetMatch"])


def test_alertmanagerconfig_example_renders_with_the_base(base: list[Doc], tmp_path: Path) -> None:
    """Added to an overlay of the base, as a user would, kustomize takes it unchanged and
    changes nothing of the base's; the README points to it."""
    shutil.copytree(BASE, tmp_path / "base")
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(ALERTMANAGER_CONFIG_EXAMPLE, mine / ALERTMANAGER_CONFIG_EXAMPLE.name)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["../base", ALERTMANAGER_CONFIG_EXAMPLE.name],
    }
    (mine / "kustomization.yaml").write_text(yaml.safe_dump(kustomization), encoding="utf-8")
    done = run([require_tool("kubectl"), "kustomize", str(mine)], timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    docs = [doc for doc in yaml.load_all(done.stdout, Loader=_Yaml11Loader) if doc]
    assert [doc for doc in docs if doc not in base] == [_alertmanagerconfig()]
    assert [doc for doc in docs if doc in base] == base
    assert "examples/alertmanagerconfig.yaml" in README.read_text(encoding="utf-8")


def test_alertmanagerconfig_example_is_equivalent_to_alertmanager_yml() -> None:
    """The example routes, groups, notifies and inhibits as deploy/alertmanager/alertmanager.yml
    does: the same receiver at the root, group_by and timings, the same child routes in the
    same order (matchers and receiver), the same receivers (webhooks with send_resolved, the
    placeholder URLs' paths) and the same inhibit rules (source and target matchers, equal).
    The plain file's global section has no counterpart: it is the Alertmanager's own."""
    plain = _load(ALERTMANAGER_CONFIG)
    assert set(plain) == {"global", "route", "receivers", "inhibit_rules"}, (
        "alertmanager.yml has a section this test does not compare: extend it, and the example"
    )
    spec = _alertmanagerconfig()["spec"]

    # The route tree.
    am_route, amc_route = plain["route"], spec["route"]
    pairs = {
        "receiver": "receiver",
        "group_by": "groupBy",
        "group_wait": "groupWait",
        "group_interval": "groupInterval",
        "repeat_interval": "repeatInterval",
        "routes": "routes",
    }
    assert set(am_route) == set(pairs), sorted(am_route)
    assert set(amc_route) == set(pairs.values()), sorted(amc_route)
    for am_key, amc_key in pairs.items():
        if am_key != "routes":
            assert amc_route[amc_key] == am_route[am_key], am_key
    assert [
        (_am_matchers(route["matchers"]), route["receiver"], sorted(route))
        for route in am_route["routes"]
    ] == [
        (_amc_matchers(route["matchers"]), route["receiver"], sorted(route))
        for route in amc_route["routes"]
    ]

    # The receivers: names, one webhook each, what is sent.
    def receivers(items: list[Doc], configs: str, resolved: str) -> dict[str, list[Any]]:
        found = {}
        for receiver in items:
            assert set(receiver) == {"name", configs}, receiver
            found[receiver["name"]] = [
                (urlsplit(hook["url"]).path, hook[resolved], sorted(set(hook) - {resolved}))
                for hook in receiver[configs]
            ]
        return found

    assert receivers(plain["receivers"], "webhook_configs", "send_resolved") == receivers(
        spec["receivers"], "webhookConfigs", "sendResolved"
    )

    # The inhibit rules, as sets: their order does not matter.
    def rule(source: list[Any], target: list[Any], equal: list[str]) -> tuple[Any, ...]:
        return (frozenset(source), frozenset(target), frozenset(equal), len(equal))

    am_rules = [
        rule(_am_matchers(r["source_matchers"]), _am_matchers(r["target_matchers"]), r["equal"])
        for r in plain["inhibit_rules"]
    ]
    amc_rules = [
        rule(_amc_matchers(r["sourceMatch"]), _amc_matchers(r["targetMatch"]), r["equal"])
        for r in spec["inhibitRules"]
    ]
    for r in plain["inhibit_rules"]:
        assert set(r) == {"source_matchers", "target_matchers", "equal"}, r
    assert len(am_rules) == len(amc_rules)
    assert set(am_rules) == set(amc_rules)
