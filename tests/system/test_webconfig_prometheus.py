"""A real Prometheus scrapes the exporter over HTTPS with basic auth (``--web.config.file``)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from tests.procs import spawned_exporter, spawned_prometheus, wait_for
from tests.webauth import HASH, PASSWORD, USER, make_tls, write_web_config

if TYPE_CHECKING:
    from pathlib import Path


def test_prometheus_scrapes_over_https_with_basic_auth(tmp_path: Path) -> None:
    """A real Prometheus scrapes the exporter (demo mode) over HTTPS, trusting the test's
    CA, with basic auth: up is 1 and the streams arrive; a job with a wrong password is
    refused (up 0)."""
    tls = make_tls(tmp_path / "tls")
    web = write_web_config(tmp_path / "web.yml", tls, {USER: HASH})
    with spawned_exporter(tmp_path, None, "--demo", "--web.config.file", str(web)) as (
        exporter,
        target,
    ):

        def job(name: str, password: str) -> dict[str, object]:
            return {
                "job_name": name,
                "scheme": "https",
                "tls_config": {"ca_file": str(tls.ca_file)},
                "basic_auth": {"username": USER, "password": password},
                "static_configs": [{"targets": [target]}],
            }

        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [job("rtk", PASSWORD), job("intruder", "wrong")],
        }
        with spawned_prometheus(tmp_path, config, watch=[exporter]) as prometheus:

            def scraped() -> bool:
                up = prometheus.value('up{job="rtk"}')
                intruder = prometheus.value('up{job="intruder"}')
                streams = prometheus.value('count(realtimekit_livestream_live{job="rtk"})')
                return up == 1 and intruder == 0 and bool(streams)

            wait_for(
                scraped,
                timeout=30,
                what=lambda: "an HTTPS scrape: " + prometheus.history("up"),
                watch=[exporter, prometheus.proc],
            )
        assert re.search(r"listening on 127\.0\.0\.1:\d+ \(https\)", exporter.log())
        assert "metrics at https://" in exporter.log()
