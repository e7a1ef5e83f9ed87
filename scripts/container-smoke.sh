#!/usr/bin/env bash
# Container smoke test: builds the Dockerfile and runs the image's `--demo` mode, on a
# machine with no Docker engine and no access to an image registry (only to the Debian and
# PyPI package mirrors). Run as root from anywhere: scripts/container-smoke.sh
#
#  1. installs buildah, podman, runc and debootstrap with apt-get when missing;
#  2. builds a local base image localhost/realtimekit-base:bookworm from Debian packages
#     (debootstrap minbase + python3, python3-venv, ca-certificates) unless it exists;
#  3. builds localhost/realtimekit-exporter:smoke with buildah on that base;
#  4. checks the image config (user, entrypoint, healthcheck, labels) and filesystem (no
#     compiler, no tests, no pip), runs the default command and --config.check;
#  5. runs `--demo` with podman, as the image's own USER and ENTRYPOINT, with a read-only
#     root filesystem, no capabilities and the host network (loopback only), then polls
#     /metrics until the demo apps are up and a livestream is live, checks /-/healthy, the
#     process's UID, the image's HEALTHCHECK, and a clean exit on SIGTERM;
#  6. runs `--demo` again with no listen flag, in a network namespace of its own
#     (--network none), and checks from inside it that the image's default listen address
#     (:10241, which Kubernetes probes and `docker run -p` rely on) takes every interface.
#
# It cleans up after itself (containers, mounts, its /var/tmp/realtimekit-smoke.* directory)
# on exit, including on SIGTERM or SIGINT; the one container name it uses (SMOKE_CONTAINER)
# lets a caller remove what is left after a SIGKILL: `podman rm -f NAME`.
#
# Images are kept, so a second run reuses the base image and the build cache. Settings:
#   SMOKE_PORT=10241           loopback port for the exporter (10241 lets the HEALTHCHECK run
#                              verbatim; with another port its URL is rewritten to match)
#   SMOKE_TIMEOUT=60           seconds to wait for the demo metrics
#   SMOKE_CONTAINER=NAME       the demo containers' name (default realtimekit-smoke-PID; one
#                              at a time, so one name); must not exist yet
#   SMOKE_REBUILD_BASE=1       rebuild the base image even if it exists
#   SMOKE_DEBIAN_MIRROR=URL    Debian mirror for debootstrap (default: the one apt uses)
#   SMOKE_OCI_RUNTIME=runc     OCI runtime for podman (crun 1.8 rejects hybrid cgroups)
#   PIP_INDEX_URL=URL          passed to pip in the build (else index-url from pip.conf)
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=localhost/realtimekit-exporter:smoke
BASE=localhost/realtimekit-base:bookworm
EXPECT_USER=10241:10241
EXPECT_UID=10241
PORT="${SMOKE_PORT:-10241}"
TIMEOUT="${SMOKE_TIMEOUT:-60}"
RUNTIME="${SMOKE_OCI_RUNTIME:-runc}"
CONTAINER="${SMOKE_CONTAINER:-realtimekit-smoke-$$}"
HOST_CA=/etc/ssl/certs/ca-certificates.crt

SECONDS=0
work=""
rootfs=""
ctr=""
image_mounted=""

step() { printf '== [%3ds] %s\n' "$SECONDS" "$*"; }
fail() {
    printf 'container-smoke: FAIL: %s\n' "$*" >&2
    exit 1
}
show_log() { # show_log FILE: the end of a log, for a failure message
    [ -s "$1" ] && { echo "--- last lines of $1:" >&2; tail -n 40 "$1" >&2; }
    return 0
}

unmount_under() { # unmount anything left mounted below $1 (an interrupted debootstrap)
    local m
    findmnt -rn -o TARGET 2>/dev/null | awk -v d="$1" 'index($0, d "/") == 1' | sort -r |
        while read -r m; do umount -l "$m" || true; done
}

cleanup() {
    local rc=$?
    set +e
    if [ -n "$ctr" ]; then
        [ "$rc" -ne 0 ] && podman logs --tail 30 "$ctr" >&2 2>&1
        podman rm --force --time 5 "$ctr" >/dev/null 2>&1
    fi
    [ -n "$image_mounted" ] && podman image unmount "$IMAGE" >/dev/null 2>&1
    if [ -n "$work" ]; then
        unmount_under "$work"
        rm -rf --one-file-system "$work"
    fi
    if [ "$rc" -eq 0 ]; then
        echo "container-smoke: OK in ${SECONDS}s"
    else
        echo "container-smoke: failed after ${SECONDS}s (exit $rc)" >&2
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" -eq 0 ] || fail "run as root: rootful buildah/podman and debootstrap need it"
[[ "$CONTAINER" =~ ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$ ]] || fail "SMOKE_CONTAINER '$CONTAINER' is not a container name"
work="$(mktemp -d /var/tmp/realtimekit-smoke.XXXXXX)"
echo "work directory: $work; container: $CONTAINER"

# --- 1. tools ---------------------------------------------------------------------------
step "tools"
missing=()
command -v buildah >/dev/null || missing+=(buildah)
command -v podman >/dev/null || missing+=(podman)
# crun 1.8 (bookworm) refuses to start containers on a hybrid cgroup v1/v2 host such as
# this one ("cgroups in hybrid mode not supported"); runc works on both.
command -v "$RUNTIME" >/dev/null || missing+=("$RUNTIME")
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v curl >/dev/null || missing+=(curl)
[ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || missing+=(debian-archive-keyring)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >"$work/apt.log" 2>&1 || { show_log "$work/apt.log"; fail "apt-get update"; }
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$work/apt.log" 2>&1 ||
        { show_log "$work/apt.log"; fail "apt-get install ${missing[*]}"; }
fi
echo "$(buildah --version); $(podman --version); $("$RUNTIME" --version | head -n 1)"

# --- 2. base image ----------------------------------------------------------------------
debian_mirror() { # the Debian mirror apt uses here (deb822 .sources first, then .list)
    if [ -n "${SMOKE_DEBIAN_MIRROR:-}" ]; then
        echo "$SMOKE_DEBIAN_MIRROR"
        return
    fi
    local found=""
    shopt -s nullglob
    local sources=(/etc/apt/sources.list.d/*.sources) lists=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list)
    shopt -u nullglob
    if [ "${#sources[@]}" -gt 0 ]; then
        # Stanzas: a "deb" type, a suite without "-" (not -security/-updates), enabled.
        found="$(awk 'BEGIN { RS = ""; FS = "\n" }
            {
                uris = ""; suites = ""; types = ""; enabled = "yes"
                for (i = 1; i <= NF; i++) {
                    line = $i
                    if (line ~ /^#/) continue
                    if (sub(/^URIs:[ \t]*/, "", line)) uris = line
                    else if (sub(/^Suites:[ \t]*/, "", line)) suites = " " line " "
                    else if (sub(/^Types:[ \t]*/, "", line)) types = " " line " "
                    else if (sub(/^Enabled:[ \t]*/, "", line)) enabled = tolower(line)
                }
                if (types ~ / deb / && enabled != "no" && uris != "") {
                    split(uris, u, /[ \t]+/)
                    if (suites ~ / bookworm /) { print 1, u[1] }
                    else if (suites ~ / [a-z]+ /) { print 2, u[1] }
                }
            }' "${sources[@]}" 2>/dev/null | sort -s -k1,1n | awk 'NR == 1 { print $2 }')"
    fi
    if [ -z "$found" ] && [ "${#lists[@]}" -gt 0 ]; then
        found="$(awk '$1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while ($i !~ /\]$/ && i < NF) i++; i++ }
                if ($(i + 1) == "bookworm") print 1, $i
                else if ($(i + 1) !~ /-/) print 2, $i
            }' "${lists[@]}" 2>/dev/null | sort -s -k1,1n | awk 'NR == 1 { print $2 }')"
    fi
    echo "${found:-http://deb.debian.org/debian}"
}

if [ "${SMOKE_REBUILD_BASE:-0}" = 1 ] || ! podman image exists "$BASE"; then
    mirror="$(debian_mirror)"
    mirror="${mirror%/}"
    step "base image $BASE: debootstrap bookworm from $mirror"
    curl -fsS -o /dev/null -m 30 "$mirror/dists/bookworm/Release" ||
        fail "Debian mirror $mirror has no reachable dists/bookworm/Release (set SMOKE_DEBIAN_MIRROR)"
    rootfs="$work/rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 ||
        { show_log "$work/debootstrap.log"; fail "debootstrap (log above)"; }
    unmount_under "$rootfs"
    # Trim what a slim base leaves out: downloaded packages, apt lists, docs (but not the
    # copyright files), man pages, translations.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
        "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/*
    find "$rootfs"/usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete
    find "$rootfs"/usr/share/doc -mindepth 1 -type d -empty -delete
    step "base image: import"
    tar --numeric-owner --xattrs -C "$rootfs" \
        --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' --exclude='./run/*' \
        --exclude='./tmp/*' -c . |
        podman import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'CMD ["/bin/bash"]' \
            --message "debootstrap minbase bookworm + python3 python3-venv ca-certificates from $mirror" \
            - "$BASE" >"$work/import.log" 2>&1 || { show_log "$work/import.log"; fail "podman import"; }
    rm -rf --one-file-system "$rootfs"
    rootfs=""
else
    step "base image $BASE: exists, reused (SMOKE_REBUILD_BASE=1 rebuilds it)"
fi

# --- 3. build ---------------------------------------------------------------------------
# This machine reaches PyPI through a TLS-intercepting proxy whose CA is only in the host's
# system bundle; pip in the build (pip 23 uses its own certifi bundle) must be told to use
# that bundle, so /etc/ssl/certs is mounted read-only and PIP_CERT points into it. It is
# harmless where no proxy intercepts. The host's find-links / file:// indexes are host paths
# and are not passed on: the build uses PyPI (or PIP_INDEX_URL, or pip.conf's index-url).
# The mount is not committed: the image keeps the base's own CA bundle (checked below).
build_args=(
    --build-arg "PYTHON_IMAGE=$BASE"
    --build-arg "VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' exporter/__init__.py)"
)
if git rev-parse --verify -q HEAD >/dev/null 2>&1; then
    build_args+=(--build-arg "REVISION=$(git rev-parse HEAD)")
fi
volumes=()
if [ -s "$HOST_CA" ]; then
    volumes+=(-v /etc/ssl/certs:/etc/ssl/certs:ro)
    build_args+=(--build-arg "PIP_CERT=$HOST_CA")
fi
index_url="${PIP_INDEX_URL:-}"
if [ -z "$index_url" ]; then
    for conf in /etc/pip.conf /etc/xdg/pip/pip.conf "${HOME:-/root}/.config/pip/pip.conf" "${HOME:-/root}/.pip/pip.conf"; do
        [ -r "$conf" ] || continue
        index_url="$(sed -n 's/^[[:space:]]*index-url[[:space:]]*=[[:space:]]*\(https\{0,1\}:\/\/[^[:space:]]*\).*/\1/p' "$conf" | head -n 1)"
        [ -n "$index_url" ] && break
    done
fi
# Always given (pip's own default when nothing is configured): buildah warns about a
# declared ARG that is not passed.
build_args+=(--build-arg "PIP_INDEX_URL=${index_url:-https://pypi.org/simple}")

step "build $IMAGE"
# --format docker: the OCI image format has no HEALTHCHECK; buildah would drop it.
# --isolation chroot: RUN steps need no runtime, cgroups or network namespace.
buildah bud --isolation chroot --format docker --layers --force-rm \
    "${build_args[@]}" "${volumes[@]}" -t "$IMAGE" . >"$work/build.log" 2>&1 ||
    { show_log "$work/build.log"; fail "buildah bud (log above)"; }
grep -i 'warn' "$work/build.log" | grep -v -i -e 'retrying' >&2 || true

# --- 4. image config and filesystem -----------------------------------------------------
step "image config"
inspect() { buildah inspect --type image --format "$1" "$IMAGE"; }
inspect_list() { # one element per line, a JSON-like ["a","b"] (buildah 1.28 has no json)
    local -a items
    mapfile -t items < <(inspect "{{range $1}}{{println .}}{{end}}")
    local out="" item
    for item in "${items[@]}"; do out+="${out:+,}\"$item\""; done
    echo "[$out]"
}
user="$(inspect '{{.OCIv1.Config.User}}')"
[ "$user" = "$EXPECT_USER" ] || fail "image USER is '$user', expected $EXPECT_USER"
entrypoint="$(inspect_list .OCIv1.Config.Entrypoint)"
[ "$entrypoint" = '["realtimekit-exporter"]' ] || fail "ENTRYPOINT is $entrypoint"
cmd="$(inspect_list .OCIv1.Config.Cmd)"
[ "$cmd" = '["--config.file=/etc/realtimekit-exporter/config.yaml"]' ] || fail "CMD is $cmd"
# Output is read whole before grep: `cmd | grep -q` lets grep exit at the first match, and
# under pipefail the writer's SIGPIPE would fail the check about one run in ten.
# shellcheck disable=SC2016 # a Go template, not a shell expansion
ports="$(inspect '{{range $port, $_ := .OCIv1.Config.ExposedPorts}}{{println $port}}{{end}}')"
grep -qx 10241/tcp <<<"$ports" || fail "10241/tcp is not exposed: $ports"
mapfile -t healthcheck < <(inspect '{{if .Docker.Config.Healthcheck}}{{range .Docker.Config.Healthcheck.Test}}{{println .}}{{end}}{{end}}')
if [ "${#healthcheck[@]}" -lt 2 ] || [ "${healthcheck[0]}" != CMD ]; then
    fail "no exec-form HEALTHCHECK in the image (built with --format oci?)"
fi
for label in title description source licenses version revision; do
    [ -n "$(inspect "{{index .OCIv1.Config.Labels \"org.opencontainers.image.$label\"}}")" ] ||
        [ "$label" = source ] || fail "label org.opencontainers.image.$label is missing"
done
[ "$(inspect '{{index .OCIv1.Config.Labels "org.opencontainers.image.licenses"}}')" = Apache-2.0 ] ||
    fail "licenses label is not Apache-2.0"
label_version="$(inspect '{{index .OCIv1.Config.Labels "org.opencontainers.image.version"}}')"
echo "user $user, entrypoint $entrypoint, cmd $cmd, version label $label_version"
echo "healthcheck: ${healthcheck[*]:1}"

step "image filesystem"
mnt="$(podman image mount "$IMAGE")" || fail "podman image mount"
image_mounted=1
site="$(find "$mnt/opt/venv/lib" -maxdepth 2 -type d -name site-packages | head -n 1)"
[ -n "$site" ] || fail "no /opt/venv/lib/python*/site-packages in the image"
[ -f "$site/exporter/simulator/__init__.py" ] || fail "exporter.simulator is missing from the installed package"
compilers="$(find "$mnt/usr/bin" "$mnt/usr/local/bin" "$mnt/opt/venv/bin" -maxdepth 1 \
    \( -name gcc -o -name 'gcc-[0-9]*' -o -name cc -o -name c++ -o -name g++ -o -name 'g++-*' \
    -o -name 'clang*' -o -name '*-linux-gnu-gcc*' -o -name ld -o -name as -o -name make \) \
    -printf '/%P ' 2>/dev/null)"
[ -z "$compilers" ] || fail "build tools in the image: $compilers"
tests="$(find "$mnt" -xdev \( -path "$mnt/proc" -o -path "$mnt/sys" \) -prune -o \
    \( -name conftest.py -o -name 'test_simulator_*.py' -o -path "$site/tests" \) -print | head -n 5)"
[ -z "$tests" ] || fail "test files in the image: $tests"
[ ! -e "$mnt/src" ] || fail "/src (the build stage's sources) is in the image"
[ ! -e "$mnt/opt/venv/bin/pip" ] || fail "pip is still in /opt/venv"
[ ! -e "$mnt/root/.cache/pip" ] || fail "a pip cache is in the image"
# The host's /etc/ssl/certs was mounted into the build; the image must keep its own.
base_mnt="$(podman image mount "$BASE")" || fail "podman image mount $BASE"
ca="etc/ssl/certs/ca-certificates.crt"
same_ca=0
cmp -s "$mnt/$ca" "$base_mnt/$ca" && same_ca=1
podman image unmount "$BASE" >/dev/null
[ "$same_ca" = 1 ] || fail "/$ca in the image is not the base image's (the build's mount leaked)"
podman image unmount "$IMAGE" >/dev/null
image_mounted=""
echo "no compiler, no tests, no pip, base CA bundle; exporter and exporter.simulator installed"

# --- 5. run -----------------------------------------------------------------------------
# Podman without a daemon. Needed here: runc (see above); explicit ulimits, because root in
# this VM lacks CAP_SYS_RESOURCE and podman's defaults (nofile 1048576, nproc above
# conmon's 32768) cannot be set; --network host so that the host reaches 127.0.0.1:PORT
# without creating a bridge or iptables rules. The systemd timer for the healthcheck cannot
# be created without systemd; podman logs that as an error and carries on.
nofile="$(ulimit -Hn)"
[ "$nofile" = unlimited ] && nofile=1048576
nproc="$(ulimit -Hu)"
{ [ "$nproc" = unlimited ] || [ "$nproc" -gt 4096 ]; } && nproc=4096
# --http-proxy=false: podman would copy the host's proxy variables (passed to this script
# for the build) into the container, where urllib (the HEALTHCHECK, the checks below) would
# send requests for 127.0.0.1 to the proxy.
run_opts=(
    --ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc"
    --read-only --read-only-tmpfs=false --cap-drop ALL --security-opt no-new-privileges
    --http-proxy=false
)
podman_run() { podman --runtime "$RUNTIME" run --rm --network none "${run_opts[@]}" "$@"; }

step "default command (no configuration mounted): must fail with a clear message"
rc=0
podman_run "$IMAGE" >"$work/default.log" 2>&1 || rc=$?
out="$(grep -v -e 'systemd' -e '^time=' "$work/default.log" || true)"
echo "exit $rc: $out"
if [ "$rc" -ne 2 ] || ! grep -q '/etc/realtimekit-exporter/config.yaml' <<<"$out"; then
    fail "the default command without a configuration should exit 2 naming the file"
fi

step "--config.check with config.example.yaml mounted at the default path"
podman_run -e CLOUDFLARE_API_TOKEN=smoke-not-a-token \
    -v "$PWD/config.example.yaml:/etc/realtimekit-exporter/config.yaml:ro" \
    "$IMAGE" --config.file=/etc/realtimekit-exporter/config.yaml --config.check \
    2> >(grep -v -e 'systemd' -e '^time=' >&2) || fail "--config.check of config.example.yaml failed"

step "--demo on 127.0.0.1:$PORT"
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    fail "127.0.0.1:$PORT is already in use; stop what listens there or set SMOKE_PORT"
fi
podman container exists "$CONTAINER" && fail "a container named $CONTAINER exists already"
ctr="$CONTAINER"
podman --runtime "$RUNTIME" run -d --name "$ctr" --network host "${run_opts[@]}" \
    "$IMAGE" --demo --web.listen-address "127.0.0.1:$PORT" >"$work/run.log" 2>&1 ||
    { show_log "$work/run.log"; fail "podman run"; }
pid="$(podman inspect --format '{{.State.Pid}}' "$ctr")"
[ "${pid:-0}" -gt 0 ] || fail "the container has no process"

metrics="$work/metrics"
deadline=$((SECONDS + TIMEOUT))
while :; do
    [ "$(podman inspect --format '{{.State.Running}}' "$ctr")" = true ] ||
        fail "the exporter exited: $(podman inspect --format 'exit code {{.State.ExitCode}}' "$ctr")"
    if curl -fsS -m 3 -o "$metrics" "http://127.0.0.1:$PORT/metrics" 2>/dev/null &&
        grep -Eq '^realtimekit_up\{[^}]*app_id="demo-app"[^}]*\} 1(\.0)?$' "$metrics" &&
        grep -Eq '^realtimekit_up\{[^}]*app_id="demo-events"[^}]*\} 1(\.0)?$' "$metrics" &&
        grep -Eq '^realtimekit_livestream_live\{[^}]*\} 1\.0$' "$metrics"; then
        break
    fi
    [ "$SECONDS" -lt "$deadline" ] ||
        fail "no realtimekit_up 1 for both demo apps and a live livestream within ${TIMEOUT}s"
    sleep 1
done
grep -E '^realtimekit_(up|livestream_live)\{' "$metrics"

step "/-/healthy and /-/ready"
[ "$(curl -fsS -m 3 "http://127.0.0.1:$PORT/-/healthy")" = OK ] || fail "/-/healthy is not 200 OK"
curl -fsS -m 3 -o /dev/null "http://127.0.0.1:$PORT/-/ready" || fail "/-/ready is not 2xx"

step "process identity"
read -r _ ruid euid suid fsuid < <(grep '^Uid:' "/proc/$pid/status")
read -r _ rgid egid sgid fsgid < <(grep '^Gid:' "/proc/$pid/status")
for id in "$ruid" "$euid" "$suid" "$fsuid" "$rgid" "$egid" "$sgid" "$fsgid"; do
    [ "$id" = "$EXPECT_UID" ] || fail "exporter (pid $pid) runs as Uid $ruid/$euid Gid $rgid/$egid"
done
cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline")"
grep -q '/opt/venv/bin/realtimekit-exporter --demo' <<<"$cmdline" ||
    fail "pid $pid is not the image's ENTRYPOINT: $cmdline"
if command -v ss >/dev/null; then
    listeners="$(ss -Hltnp "sport = :$PORT")"
    grep -q "pid=$pid," <<<"$listeners" || fail "pid $pid does not own 127.0.0.1:$PORT"
fi
echo "pid $pid: Uid $ruid Gid $rgid, NoNewPrivs $(awk '/^NoNewPrivs:/ { print $2 }' "/proc/$pid/status"), CapEff $(awk '/^CapEff:/ { print $2 }' "/proc/$pid/status"): $cmdline"

step "HEALTHCHECK"
check=("${healthcheck[@]:1}")
check=("${check[@]//127.0.0.1:10241/127.0.0.1:$PORT}")
podman exec "$ctr" "${check[@]}" || fail "the HEALTHCHECK command failed in the container"
closed=$((PORT + 1))
if ! (exec 3<>"/dev/tcp/127.0.0.1/$closed") 2>/dev/null; then
    if podman exec "$ctr" "${check[@]//127.0.0.1:$PORT/127.0.0.1:$closed}" 2>/dev/null; then
        fail "the HEALTHCHECK command succeeds with nothing listening"
    fi
fi
if [ "$PORT" = 10241 ]; then
    podman healthcheck run "$ctr" 2>>"$work/run.log" || fail "podman healthcheck run: unhealthy"
    echo "podman healthcheck run: $(podman inspect --format '{{.State.Health.Status}}' "$ctr")"
else
    echo "HEALTHCHECK run with its URL rewritten to port $PORT (podman healthcheck run needs 10241)"
fi

stop_cleanly() { # stop_cleanly: SIGTERM to $ctr, a clean exit 0 before the 10 s SIGKILL
    local start=$SECONDS took code
    podman stop --time 10 "$ctr" >/dev/null 2>>"$work/run.log"
    took=$((SECONDS - start))
    code="$(podman inspect --format '{{.State.ExitCode}}' "$ctr")"
    if [ "$code" != 0 ] || [ "$took" -ge 10 ]; then
        fail "stop took ${took}s, exit code $code (expected a clean exit 0 before the 10s SIGKILL)"
    fi
    if podman logs "$ctr" 2>&1 | grep Traceback >/dev/null; then
        podman logs "$ctr" >&2 2>&1
        fail "a traceback in the exporter's log"
    fi
    echo "exited 0 after ${took}s"
    podman rm "$ctr" >/dev/null 2>&1
    ctr=""
}

step "SIGTERM"
stop_cleanly

# The runs above name 127.0.0.1 (the host network is shared); this one keeps the image's
# default, ":10241", in a network namespace of its own (loopback only, nothing on the host
# can clash), and looks from inside: /-/healthy answers on 127.0.0.1 and on 127.0.0.2 (which
# a socket bound to 127.0.0.1 does not take), and /proc/net/tcp{,6} shows the listening
# socket bound to 0.0.0.0 or ::.
step "--demo with the default listen address (:10241), --network none"
ctr="$CONTAINER"
podman --runtime "$RUNTIME" run -d --name "$ctr" --network none "${run_opts[@]}" \
    "$IMAGE" --demo >"$work/run.log" 2>&1 || { show_log "$work/run.log"; fail "podman run"; }
listen_check='
import sys, time, urllib.request
port, timeout = 10241, float(sys.argv[1])
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
def get(host):
    with opener.open(f"http://{host}:{port}/-/healthy", timeout=3) as response:
        return response.status, response.read().decode().strip()
deadline = time.monotonic() + timeout
while True:
    try:
        answer = get("127.0.0.1")
        break
    except OSError as exc:
        if time.monotonic() > deadline:
            sys.exit(f"nothing answers on 127.0.0.1:{port} after {timeout:.0f}s: {exc}")
        time.sleep(0.5)
try:
    other = get("127.0.0.2")
except OSError as exc:
    sys.exit(f"127.0.0.1:{port} answers, 127.0.0.2:{port} does not ({exc}): not all interfaces")
bound = []
for path in ("/proc/net/tcp", "/proc/net/tcp6"):
    try:
        with open(path) as f:
            lines = f.read().splitlines()[1:]
    except FileNotFoundError:
        continue
    for line in lines:
        fields = line.split()
        address, hexport = fields[1].split(":")
        if fields[3] == "0A" and int(hexport, 16) == port:  # 0A: LISTEN
            bound.append("0.0.0.0" if address == "0" * 8 else "::" if address == "0" * 32 else address)
print(f"127.0.0.1: {answer}, 127.0.0.2: {other}; listening on port {port}: {bound}")
if answer != (200, "OK") or other != (200, "OK"):
    sys.exit("/-/healthy is not 200 OK")
if not bound or any(b not in ("0.0.0.0", "::") for b in bound):
    sys.exit(f"port {port} is not bound to all interfaces only: {bound}")
'
podman exec "$ctr" /opt/venv/bin/python -c "$listen_check" "$TIMEOUT" ||
    fail "the image's default listen address does not take every interface on port 10241"
[ "$(podman inspect --format '{{.State.Running}}' "$ctr")" = true ] || fail "the exporter exited"
stop_cleanly

step "size"
size="$(podman image inspect --format '{{.Size}}' "$IMAGE")"
base_size="$(podman image inspect --format '{{.Size}}' "$BASE")"
echo "$IMAGE: $((size / 1000000)) MB ($((size - base_size > 0 ? (size - base_size) / 1000000 : 0)) MB over the $((base_size / 1000000)) MB base $BASE)"
