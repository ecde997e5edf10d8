#!/usr/bin/env bash
# Host set-up for plab on Debian 12, idempotent: packages, then the container image.
# Used by `make demo`, `make test` and CI; safe to run again at any time.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "ci/setup.sh: run as root (packages, namespaces, runc)" >&2; exit 1; }
need=(runc debootstrap openssh-client socat e2fsprogs iproute2 mount procps util-linux python3 libxml2-utils)
missing=()
for p in "${need[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
modprobe overlay 2>/dev/null || true
bash "$(dirname "$0")/../images/build-rootfs.sh"
