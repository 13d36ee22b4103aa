#!/usr/bin/env bash
# Build the enforcer image for real and run it (issue 15; docs/container.md). Run by .ci/run after `make test`, and by
# `make test-image`. Root only (it installs podman and runs rootful containers). Exits non-zero with one line
# "image-test: FAIL: ..." when any check fails.
#
# Steps:
#  1. podman, runc and debootstrap from Debian when missing; podman pointed (CONTAINERS_CONF) at a containers.conf of
#     this script's: runc (crun fails on hybrid cgroups), cgroupfs, file events, ulimits, and netns = "host" from
#     the first command on, so podman never creates its 10.88.0.0/16 bridge.
#  2. The base: a stand-in built with debootstrap (scripts/image-standin.sh, cached under
#     /var/cache/enforcer-image-test by the Dockerfile's BASE), or ENFORCER_IMAGE_BASE=<ref> for the real one.
#  3. `podman build --format docker` (keeps the HEALTHCHECK) with the host's pip index and CA settings passed as
#     build arguments (read from pip's own config, never written into the repository).
#  4. The image's shape: size on top of the base (<= 200 MB), HEALTHCHECK, user 10001, VOLUME, no skeleton files,
#     no pip or build tools in the venv.
#  5. scripts/image_checks.py: the image's 0.0.0.0 defaults under --network none; `serve` on 127.0.0.1 with host
#     networking against a local fake upstream (DNS sinkhole + EDE, block page, analyst with/without token,
#     healthcheck, uid, loopback-only sockets, events on the volume, clean stop); the compose file under
#     podman-compose (requirements/podman-compose.txt, hash-pinned, in a venv under the cache) with the loopback
#     override tests/docker/compose.loopback.yaml.
#  6. Nothing left behind: containers, volumes and the test image's containers removed; no podman bridge.
# Bounded: every step has a timeout; the build and the checks must finish within ENFORCER_IMAGE_TEST_BUDGET (360 s)
# of the base being ready (installing podman and building the stand-in are one-time, cached, separately bounded).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
START=$(date +%s)
BUDGET=${ENFORCER_IMAGE_TEST_BUDGET:-360}
CACHE=${ENFORCER_IMAGE_CACHE:-/var/cache/enforcer-image-test}
IMAGE=localhost/enforcer:image-test
PY=${ENFORCER_TEST_PYTHON:-$ROOT/.venv/bin/python}

log() { echo "image-test: $* ($(( $(date +%s) - START )) s)" >&2; }
fail() { echo "image-test: FAIL: $*" >&2; exit 1; }
# The budget counts from the moment the base is ready: installing podman and building the stand-in happen once per
# machine (each under its own timeout) and are cached; the image build and every check must fit in it.
budget() { [ $(( $(date +%s) - BUDGET_START )) -le "$BUDGET" ] || fail "over the ${BUDGET} s budget before: $1"; }

[ "$(id -u)" = 0 ] || fail "must run as root (rootful podman, apt-get)"
[ -x "$PY" ] || fail "no $PY: run make .venv/.installed first (the checks use its dnspython and httpx)"

# -- 1. podman ------------------------------------------------------------------------------------------------------
bridges_before=$(ip -o link show 2>/dev/null | grep -c -E ': (cni-podman|podman)[0-9]+' || true)
need=()
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]} (Debian)"
  created_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then  # package scripts must not start services
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && created_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  { timeout 300 apt-get update -q && timeout 600 apt-get install -y -q --no-install-recommends podman runc debootstrap; } \
    > "${TMPDIR:-/tmp}/enforcer-image-test-apt.log" 2>&1 \
    || fail "apt-get install podman runc debootstrap failed; see ${TMPDIR:-/tmp}/enforcer-image-test-apt.log"
  [ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi
mkdir -p "$CACHE"
export CONTAINERS_CONF="$CACHE/containers.conf"
cat > "$CONTAINERS_CONF" <<'EOF'
# Written by scripts/image-test.sh (see there for why each setting).
[containers]
netns = "host"
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
podman info --format '{{.Host.OCIRuntime.Name}}' >/dev/null 2>&1 || fail "podman does not start: $(podman info 2>&1 | tail -1)"
volumes_before=$(podman volume ls -q | sort)

# -- 2. the base ----------------------------------------------------------------------------------------------------
if [ -n "${ENFORCER_IMAGE_BASE:-}" ]; then
  base=$ENFORCER_IMAGE_BASE
else
  base=$(timeout 600 bash scripts/image-standin.sh) || fail "the stand-in base did not build (scripts/image-standin.sh)"
fi
log "base $base"
BUDGET_START=$(date +%s)

# -- 3. build -------------------------------------------------------------------------------------------------------
# pip's settings on this machine, as the build stage's pip will see them: an http(s) index (a file:// one is not
# reachable from the build) and, when the host names a CA bundle, the stand-in's copy of it.
pipconf() { "$PY" -m pip config list 2>/dev/null | sed -n "s/^[^.]*\.$1='\(.*\)'$/\1/p" | tail -n1; }
build_args=(--build-arg "BASE=$base")
index=${PIP_INDEX_URL:-$(pipconf index-url)}
case "$index" in http://*|https://*) build_args+=(--build-arg "PIP_INDEX_URL=$index") ;; esac
if [ -n "${PIP_CERT:-$(pipconf cert)}" ] && [ -z "${ENFORCER_IMAGE_BASE:-}" ]; then
  build_args+=(--build-arg "PIP_CERT=/etc/ssl/certs/ca-certificates.crt")
fi
build_log="$CACHE/build.log"
timeout 300 podman build --format docker --network host "${build_args[@]}" \
  -f docker/Dockerfile -t "$IMAGE" . > "$build_log" 2>&1 \
  || fail "podman build failed: $(grep -E 'ERROR|Error|error:' "$build_log" | tail -n1) (log: $build_log)"
log "built $IMAGE"

# -- 4. the image's shape -------------------------------------------------------------------------------------------
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
base_size=$(podman image inspect --format '{{.Size}}' "$base")
added=$(( (size - base_size) / 1000000 ))
log "image $(( size / 1000000 )) MB = base $(( base_size / 1000000 )) MB + ${added} MB"
[ "$added" -le 200 ] || fail "the image adds ${added} MB to its base (target <= 200 MB)"
health=$(podman image inspect --format '{{json .Config.Healthcheck}}' "$IMAGE")
case "$health" in *enforcer.healthcheck*) ;; *) fail "the image has no HEALTHCHECK (built without --format docker?)" ;; esac
[ "$(podman image inspect --format '{{.Config.User}}' "$IMAGE")" = "10001:10001" ] || fail "the image does not run as 10001"
podman image inspect --format '{{json .Config.Volumes}}' "$IMAGE" | grep -q '"/var/lib/enforcer"' \
  || fail "the image declares no VOLUME /var/lib/enforcer"
shape=$(timeout 60 podman run --rm --network none --no-healthcheck --entrypoint /bin/sh "$IMAGE" -c '
  ls -A /var/lib/enforcer | grep -v -x -E "events|mitmproxy|analyst" | sed "s/^/stray in \/var\/lib\/enforcer: /"
  ls /opt/venv/bin/pip* /wheels 2>/dev/null | sed "s/^/left in the image: /"
  python -c "import setuptools" 2>/dev/null && echo "left in the image: setuptools"
  command -v gcc cc make 2>/dev/null | sed "s/^/build tool in the image: /"
  true') || fail "could not look inside $IMAGE"
[ -z "$shape" ] || fail "$(echo "$shape" | head -n1)"

# -- 5. run it ------------------------------------------------------------------------------------------------------
budget "the runtime checks"
timeout 120 "$PY" scripts/image_checks.py defaults --image "$IMAGE" || exit 1
timeout 150 "$PY" scripts/image_checks.py serve --image "$IMAGE" || exit 1
budget "the compose checks"
lock=requirements/podman-compose.txt
venv="$CACHE/podman-compose-$(sha256sum "$lock" | cut -c1-12)"
if [ ! -x "$venv/bin/podman-compose" ]; then
  rm -rf "$venv"
  { python3 -m venv "$venv" && "$venv/bin/pip" install --quiet --require-hashes -r "$lock"; } \
    > "$CACHE/podman-compose-install.log" 2>&1 \
    || { rm -rf "$venv"; fail "podman-compose did not install from $lock (log: $CACHE/podman-compose-install.log)"; }
fi
timeout 200 "$PY" scripts/image_checks.py compose --image "$IMAGE" --compose "$venv/bin/podman-compose" || exit 1

# -- 6. nothing left behind -----------------------------------------------------------------------------------------
left=$(podman ps -a --format '{{.Names}}' | grep -E '^enforcer-image-test' || true)
[ -z "$left" ] || fail "containers left behind: $left"
volumes_left=$(comm -13 <(echo "$volumes_before") <(podman volume ls -q | sort) | head -n3 | tr '\n' ' ')
[ -z "$volumes_left" ] || fail "volumes left behind: $volumes_left"
bridges_after=$(ip -o link show 2>/dev/null | grep -c -E ': (cni-podman|podman)[0-9]+' || true)
[ "$bridges_after" -le "$bridges_before" ] || fail "podman created a bridge (netns = \"host\" not applied?)"
log "all checks passed; the image build and checks took $(( $(date +%s) - BUDGET_START )) s"
