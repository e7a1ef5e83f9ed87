"""The Prometheus rules in deploy/prometheus: promtool accepts them, their unit tests pass,
and every alert and recording rule is covered by those tests and documented in docs/alerts.md.

Runbooks: every alert's ``runbook`` annotation is docs/alerts.md#<anchor of its name>, and
that anchor is a heading of docs/alerts.md, as are the anchors docs/alerts.md links to
itself (tests/unit/test_docs.py checks every runbook and anchor link too, without promtool);
the shipped rules have no ``runbook_url``, since where the page is published is the user's to
say. scripts/gen-prometheusrule with ``--runbook-base URL`` writes the PrometheusRule and
alerts.yml with only a ``runbook_url`` (URL#<anchor>) added to each alert, which promtool
still accepts, and refuses a base that is no plain URL or a runbook it could not link.

promtool comes from the Debian ``prometheus`` package. Without it the promtool tests skip,
except in CI (``CI`` set), where they fail: CI installs it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tests import REPO
from tests.markdown import file_anchors, github_anchor
from tests.procs import run

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

RULES_DIR = REPO / "deploy" / "prometheus"
ALERTS = RULES_DIR / "alerts.yml"
RECORDING = RULES_DIR / "recording.yml"
RULE_TESTS = sorted((RULES_DIR / "tests").glob("*.yml"))
ALERTS_DOC = REPO / "docs" / "alerts.md"
GENERATOR = REPO / "scripts" / "gen-prometheusrule"
PROMETHEUS_RULE = REPO / "deploy" / "kubernetes" / "base" / "prometheusrule.yaml"
RUNBOOK_PATH = "docs/alerts.md"  # every alert's runbook annotation: RUNBOOK_PATH#<anchor>
# Where a user may publish the runbooks (ids: what for).
RUNBOOK_BASES = {
    "git-tag": "https://git.example.com/ops/realtimekit-exporter/blob/v0.1.0/docs/alerts.md",
    "wiki": "https://wiki.example.com/display/OPS/RealtimeKit+runbooks?view=full",
}
RUNBOOK_LINE = re.compile(r"^( *)runbook: docs/alerts\.md(#[\w-]+)\n", flags=re.MULTILINE)
PROMTOOL_TIMEOUT = 30  # seconds; promtool finishes these files in well under one
GENERATOR_TIMEOUT = 30  # seconds; the generator takes a fraction of one
SEVERITIES = {"critical", "warning", "info"}


def _load(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def _rules(path: Path, kind: str) -> list[dict[str, Any]]:
    """Every rule of ``kind`` ("alert" or "record") in a rule file, in file order."""
    return [rule for group in _load(path)["groups"] for rule in group["rules"] if kind in rule]


ALERT_RULES = _rules(ALERTS, "alert")
RECORDING_RULES = _rules(RECORDING, "record")
PER_STREAM_ALERTS = [r for r in ALERT_RULES if "realtimekit_livestream_" in r["expr"]]
# A configured stream missing from the listing is exported only as unlisted (and
# expected_live): an alert on it alone has no name to give.
NAMELESS_ALERTS = {"RealtimeKitLivestreamUnlisted"}


def _tests_loading(rule_file: Path) -> list[dict[str, Any]]:
    """The test groups of every promtool test file whose rule_files include ``rule_file``."""
    groups: list[dict[str, Any]] = []
    for path in RULE_TESTS:
        spec = _load(path)
        loaded = {(path.parent / name).resolve() for name in spec.get("rule_files", [])}
        if rule_file.resolve() in loaded:
            groups.extend(spec.get("tests", []))
    return groups


def _doc_anchors() -> set[str]:
    """The anchors of docs/alerts.md's headings."""
    return file_anchors(ALERTS_DOC)


def _run(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    # promtool is the absolute path shutil.which found; the arguments are this repo's files.
    return subprocess.run(  # noqa: S603
        [promtool, *args],
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT,
        check=False,
        cwd=REPO,
    )


def _generate(*args: str, generator: Path = GENERATOR) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, str(generator), *args], timeout=GENERATOR_TIMEOUT)


def _assert_promtool_accepts(promtool: str, *rule_files: Path) -> None:
    result = _run(promtool, "check", "rules", *map(str, rule_files))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # Anything beyond "Checking FILE" and "SUCCESS: N rules found" is a warning or lint finding.
    extra = [
        line
        for line in output.splitlines()
        if line.strip()
        and not line.startswith("Checking ")
        and not re.fullmatch(r"\s*SUCCESS: \d+ rules found", line)
    ]
    assert extra == [], output


@pytest.fixture
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(
                "promtool is not on PATH; CI must install the Debian package prometheus",
                pytrace=False,
            )
        pytest.skip("promtool is not on PATH (install the Debian package prometheus)")
    return path


def test_promtool_check_rules(promtool: str) -> None:
    _assert_promtool_accepts(promtool, ALERTS, RECORDING)


@pytest.mark.parametrize("test_file", RULE_TESTS, ids=[p.name for p in RULE_TESTS])
def test_promtool_unit_tests(promtool: str, test_file: Path) -> None:
    result = _run(promtool, "test", "rules", str(test_file))
    assert result.returncode == 0, f"promtool test rules failed:\n{result.stdout}{result.stderr}"


def test_rule_files_and_tests_exist() -> None:
    assert ALERT_RULES
    assert RECORDING_RULES
    assert RULE_TESTS


@pytest.mark.parametrize("rule", ALERT_RULES, ids=[r["alert"] for r in ALERT_RULES])
def test_alert_is_tested_firing_and_quiet(rule: dict[str, Any]) -> None:
    cases = [
        case
        for group in _tests_loading(ALERTS)
        for case in group.get("alert_rule_test", [])
        if case["alertname"] == rule["alert"]
    ]
    assert any(case.get("exp_alerts") for case in cases), "no case where it fires"
    assert any(not case.get("exp_alerts") for case in cases), "no case where it stays quiet"


@pytest.mark.parametrize("rule", ALERT_RULES, ids=[r["alert"] for r in ALERT_RULES])
def test_alert_labels_and_annotations(rule: dict[str, Any]) -> None:
    assert re.fullmatch(r"RealtimeKit(?:[A-Z][a-z0-9]*)+", rule["alert"])
    assert rule.get("labels", {}).get("severity") in SEVERITIES
    annotations = rule.get("annotations", {})
    for key in ("summary", "description", "runbook"):
        assert str(annotations.get(key, "")).strip(), f"missing annotation {key}"
    assert "runbook_url" not in annotations, (
        "only scripts/gen-prometheusrule --runbook-base adds it"
    )
    assert "keep_firing_for" not in rule  # Prometheus 2.42 does not know it


@pytest.mark.parametrize("rule", ALERT_RULES, ids=[r["alert"] for r in ALERT_RULES])
def test_runbook_points_at_the_alert_section(rule: dict[str, Any]) -> None:
    """The runbook is docs/alerts.md and the anchor of the alert's own heading there."""
    path, _, anchor = rule["annotations"]["runbook"].partition("#")
    assert path == RUNBOOK_PATH
    assert anchor == github_anchor(rule["alert"])
    assert anchor in _doc_anchors(), f"docs/alerts.md has no heading for #{anchor}"


def test_alerts_doc_links_to_its_own_sections() -> None:
    """Every #anchor link in docs/alerts.md (the alert table) leads to one of its headings."""
    links = re.findall(r"\]\(#([^)\s]+)\)", ALERTS_DOC.read_text(encoding="utf-8"))
    assert links
    assert sorted(set(links) - _doc_anchors()) == []


def _alert_rules_of(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


@pytest.mark.parametrize("kind", ["prometheusrule", "alerts"])
@pytest.mark.parametrize("base", list(RUNBOOK_BASES.values()), ids=list(RUNBOOK_BASES))
def test_runbook_base_adds_only_the_runbook_urls(
    promtool: str, kind: str, base: str, tmp_path: Path
) -> None:
    """With --runbook-base, the PrometheusRule (--stdout) and alerts.yml (--alerts-out) are
    the shipped ones byte for byte, but for a runbook_url line (BASE#<anchor of the runbook>)
    after each alert's runbook; promtool accepts them."""
    if kind == "alerts":
        out = tmp_path / "alerts.yml"
        done = _generate("--runbook-base", base, "--alerts-out", str(out))
        assert done.returncode == 0, done.stderr
        default, text, rule_file = ALERTS.read_text(encoding="utf-8"), out.read_text("utf-8"), out
        groups = yaml.safe_load(text)["groups"]
    else:
        default_run = _generate("--stdout")
        done = _generate("--runbook-base", base, "--stdout")
        assert default_run.returncode == 0 and done.returncode == 0, done.stderr
        default, text = default_run.stdout, done.stdout
        assert default == PROMETHEUS_RULE.read_text(encoding="utf-8")
        groups = yaml.safe_load(text)["spec"]["groups"]
        rule_file = tmp_path / "prometheusrule-groups.yml"
        rule_file.write_text(yaml.safe_dump({"groups": groups}), encoding="utf-8")
    # One runbook line per alert, no runbook_url without the base ...
    assert len(RUNBOOK_LINE.findall(default)) == len(ALERT_RULES)
    assert not re.search(r"^\s*runbook_url:", default, flags=re.MULTILINE)
    # ... and with it, a runbook_url after each, nothing else.
    assert text == RUNBOOK_LINE.sub(lambda m: f"{m[0]}{m[1]}runbook_url: {base}{m[2]}\n", default)
    links = {r["alert"]: r["annotations"]["runbook_url"] for r in _alert_rules_of(groups)}
    assert links == {r["alert"]: f"{base}#{github_anchor(r['alert'])}" for r in ALERT_RULES}
    _assert_promtool_accepts(promtool, rule_file)


@pytest.mark.parametrize(
    "base",
    [
        "https://wiki.example.com/runbooks#top",
        "wiki.example.com/runbooks",
        "https://wiki.example.com/run books",
        '"https://wiki.example.com/runbooks"',
        "https://wiki.example.com/{{ $labels.job }}",
        "",
    ],
    ids=["fragment", "relative", "space", "quoted", "template", "empty"],
)
def test_generator_refuses_a_runbook_base_that_is_no_plain_url(base: str, tmp_path: Path) -> None:
    """A base that would not stay one literal URL before #<anchor> is an error (exit 2),
    and nothing is written."""
    out = tmp_path / "alerts.yml"
    done = _generate("--runbook-base", base, "--alerts-out", str(out))
    assert done.returncode == 2, done.stdout
    assert "--runbook-base must be an absolute URL" in done.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "change",
    [
        lambda line: line.replace("docs/alerts.md#", "docs/runbooks.md#"),
        lambda line: line.replace("runbook: ", 'runbook: "').replace("\n", '"\n'),
        lambda line: line.replace("\n", "  # the runbook\n"),
        lambda line: line.partition("#")[0] + "\n",
        lambda line: (
            line + line.replace("runbook: docs/alerts.md", "runbook_url: https://x.test/a")
        ),
    ],
    ids=["another-path", "quoted", "comment", "no-anchor", "runbook-url-given"],
)
def test_generator_refuses_a_runbook_it_would_not_link(
    change: Callable[[str], str], tmp_path: Path
) -> None:
    """A runbook in alerts.yml that is not docs/alerts.md#<anchor>, unquoted and alone on its
    line, or a runbook_url written by hand, stops the generator (exit 2, naming the line): a
    --runbook-base could not link it, or would leave a link it did not write."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "deploy" / "prometheus").mkdir(parents=True)
    generator = tmp_path / "scripts" / GENERATOR.name
    shutil.copyfile(GENERATOR, generator)
    shutil.copyfile(RECORDING, tmp_path / "deploy" / "prometheus" / RECORDING.name)
    lines = ALERTS.read_text(encoding="utf-8").splitlines(keepends=True)
    index = next(i for i, text in enumerate(lines) if RUNBOOK_LINE.fullmatch(text))
    changed = change(lines[index]).splitlines(keepends=True)
    lines[index : index + 1] = changed
    # The line the generator must name: the changed one, or the runbook_url added after it.
    number = index + len(changed)
    (tmp_path / "deploy" / "prometheus" / ALERTS.name).write_text("".join(lines), "utf-8")
    done = _generate("--stdout", generator=generator)
    assert done.returncode == 2, done.stdout
    assert f"deploy/prometheus/alerts.yml:{number}: each alert needs runbook:" in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("rule", PER_STREAM_ALERTS, ids=[r["alert"] for r in PER_STREAM_ALERTS])
def test_per_stream_alert_names_the_stream(rule: dict[str, Any]) -> None:
    description = rule["annotations"]["description"]
    assert "$labels.livestream_id" in description
    assert "$labels.app_id" in description
    if rule["alert"] in NAMELESS_ALERTS:
        # Only about unlisted streams, which have no info series and so no name.
        assert set(re.findall(r"realtimekit_livestream_\w+", rule["expr"])) == {
            "realtimekit_livestream_unlisted"
        }
    else:
        assert "$labels.name" in description
        assert "realtimekit_livestream_info" in rule["expr"]


@pytest.mark.parametrize("rule", RECORDING_RULES, ids=[r["record"] for r in RECORDING_RULES])
def test_recording_rule_is_tested(rule: dict[str, Any]) -> None:
    name = re.compile(rf"(?<![\w:]){re.escape(rule['record'])}(?![\w:])")
    cases = [
        case
        for group in _tests_loading(RECORDING)
        for case in group.get("promql_expr_test", [])
        if name.search(case["expr"])
    ]
    assert any(case.get("exp_samples") for case in cases), "no promql_expr_test with samples"


@pytest.mark.parametrize("rule", RECORDING_RULES, ids=[r["record"] for r in RECORDING_RULES])
def test_recording_rule_counts_each_stream_once(rule: dict[str, Any]) -> None:
    """A rule over the exporter's per-stream series takes the max per stream over targets
    (job, instance) first, so that two targets exporting the same stream during a rolling
    restart do not count it twice; the promtool tests check the values."""
    if not re.search(r"(?<![\w:])realtimekit_livestream_\w+", rule["expr"]):
        return  # built on another recording rule, which did so already
    assert re.search(r"\bmax by \(account_id, app_id, livestream_id\b", rule["expr"]), rule["expr"]
    assert not re.search(r"\bsum by \([^)]*\) \(\s*(?:rate|realtimekit_)", rule["expr"]), (
        "sums the exporter's series across targets"
    )


def test_github_anchor() -> None:
    assert github_anchor("RealtimeKitApiDown") == "realtimekitapidown"
    assert github_anchor("Loading the rules") == "loading-the-rules"
    assert github_anchor("What `for` means, briefly!") == "what-for-means-briefly"
