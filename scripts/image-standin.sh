#!/usr/bin/env bash
# A local stand-in for docker/Dockerfile's base image, for machines that reach Debian's mirror and PyPI but no
# container registry. Prints the image reference to pass as `--build-arg BASE=...`.
#
#   scripts/image-standin.sh            # build (or reuse) the stand-in, print its reference
#
# What it is: Debian bookworm (minbase, from the mirror apt already uses) with python3 + venv and the machine's CA
# bundle at /etc/ssl/certs/ca-certificates.crt (so pip in the build stage reaches the package index the way the
# host does). The real base (python:X.Y.Z-slim-bookworm) has the same Debian release; its Python is newer than
# bookworm's 3.11, which is why requirements/ has a lock per Python and the Dockerfile picks the one that matches.
#
# Cache: the debootstrap tree is kept as a tarball under $ENFORCER_IMAGE_CACHE (default /var/cache/enforcer-image-test),
# keyed by the Dockerfile's default BASE, this script and the CA bundle; a warm run only imports it (seconds) or
# reuses the image already in podman's storage.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${ENFORCER_IMAGE_CACHE:-/var/cache/enforcer-image-test}
CA=${ENFORCER_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
SUITE=bookworm
die() { echo "image-standin: $*" >&2; exit 1; }

base=$(sed -n 's/^ARG BASE=\(.*\)$/\1/p' docker/Dockerfile | head -n1)
[ -n "$base" ] || die "docker/Dockerfile has no 'ARG BASE=...' line"
case "$base" in *"-$SUITE"*) ;; *) die "BASE $base is not a $SUITE image; this stand-in only builds $SUITE" ;; esac
[ -r "$CA" ] || die "no CA bundle at $CA (set ENFORCER_CA_BUNDLE)"
key=$( { echo "$base"; cat "$0"; cat "$CA"; } | sha256sum | cut -c1-16)
ref="localhost/enforcer-base-standin:$key"

if podman image exists "$ref"; then
  echo "$ref"
  exit 0
fi

mkdir -p "$CACHE"
tarball="$CACHE/standin-$key.tar"
if [ ! -s "$tarball" ]; then
  command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
  # The mirror apt already uses for this suite (no host name kept in the repository); debootstrap's default otherwise.
  mirror=$(apt-get indextargets --format '$(SITE) $(RELEASE)' 2>/dev/null | awk -v s="$SUITE" '$2 == s {print $1; exit}')
  root=$(mktemp -d "$CACHE/root.XXXXXX")
  trap 'rm -rf "$root"' EXIT
  echo "image-standin: debootstrap $SUITE ${mirror:-(default mirror)} (once per cache key; about a minute)" >&2
  debootstrap --variant=minbase --include=python3,python3-venv "$SUITE" "$root" ${mirror:+"$mirror"} \
    > "$CACHE/debootstrap.log" 2>&1 || die "debootstrap failed; see $CACHE/debootstrap.log"
  mkdir -p "$root/etc/ssl/certs"
  cp "$CA" "$root/etc/ssl/certs/ca-certificates.crt"
  # What a slim base does not carry either: package lists and downloaded .debs.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb "$root"/usr/share/doc/* "$root"/usr/share/man/*
  tar -C "$root" --numeric-owner -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
  rm -rf "$root"
  trap - EXIT
fi
podman import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' "$tarball" "$ref" >/dev/null \
  || die "podman import of $tarball failed"
echo "$ref"
