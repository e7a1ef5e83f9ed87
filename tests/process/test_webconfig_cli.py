"""``--web.config.file`` on the exporter's command line, the exporter a real process: a
bad file exits 2 with one line, ``--config.check`` covers it, ``--web.healthy-without-auth``
opens only /-/healthy."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.procs import LOOPBACK, exporter_command, get, run, spawned_exporter
from tests.webauth import (
    HASH,
    PASSWORD,
    USER,
    basic,
    exporter_config,
    make_tls,
    write_web_config,
)

if TYPE_CHECKING:
    from pathlib import Path


def test_a_bad_web_config_exits_2_as_a_process_with_no_traceback(tmp_path: Path) -> None:
    """The real process, started to serve (also with --demo): exit 2, one line, no
    traceback."""
    web = tmp_path / "web.yml"
    web.write_text("tls_server_config:\n  cert_file: absent.crt\n", encoding="utf-8")
    for mode in (["--config.file", str(exporter_config(tmp_path))], ["--demo"]):
        listen = ("--web.listen-address", f"{LOOPBACK}:0")
        done = run(exporter_command(*mode, "--web.config.file", str(web), *listen), timeout=30)
        assert done.returncode == 2, done.stderr
        assert done.stdout == "" and done.stderr.count("\n") == 1
        assert "tls_server_config.cert_file: cannot read" in done.stderr
        assert "tls_server_config.key_file: is required" in done.stderr


def test_config_check_covers_the_web_config(tmp_path: Path) -> None:
    """--config.check also checks the web config and says what it sets up."""
    tls = make_tls(tmp_path / "tls")
    web = write_web_config(tmp_path / "web.yml", tls, {USER: HASH})
    command = exporter_command(
        "--config.file", str(exporter_config(tmp_path)), "--web.config.file", str(web)
    )
    done = run([*command, "--config.check"], timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1
    assert f"{web}: OK: TLS, basic auth for 1 user(s)" in done.stdout


def test_the_healthy_flag_opens_only_healthy(tmp_path: Path) -> None:
    """The process started with --web.healthy-without-auth (here in demo mode, basic auth
    without TLS) answers /-/healthy without credentials and nothing else."""
    web = write_web_config(tmp_path / "web.yml", None, {USER: HASH})
    args = ("--demo", "--web.config.file", str(web), "--web.healthy-without-auth")
    with spawned_exporter(tmp_path, None, *args) as (_, target):
        assert get(f"http://{target}/-/healthy").status == 200
        refused = get(f"http://{target}/metrics")
        assert refused.status == 401 and refused.headers["www-authenticate"].startswith("Basic")
        allowed = get(f"http://{target}/metrics", headers={"Authorization": basic(USER, PASSWORD)})
        assert allowed.status == 200 and b"realtimekit_up" in allowed.body
        assert get(f"http://{target}/-/ready").status == 401
