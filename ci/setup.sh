#!/usr/bin/env bash
# Host set-up for plab on Debian 12, idempotent: packages, then the container image.
# Used by `make demo`, `make test` and CI; safe to run again at any time.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "ci/setup.sh: run as root (packages, namespaces, runc)" >&2; exit 1; }
need=(runc debootstrap openssh-client socat ethtool conntrack e2fsprogs iproute2 mount procps util-linux python3 python3-yaml libxml2-utils postgresql
      libpcap-dev libvirt-dev libvirt-clients libvirt-daemon-system libvirt-daemon-driver-qemu qemu-system-x86 qemu-utils
      dosfstools mtools kmod cpio fdisk grub-pc-bin shellcheck nftables
      golang-github-containers-common lxcfs nfdump chromium chromium-driver tcpdump softflowd)
# Two passes: Debian's qemu-system-x86 conflicts with a newer qemu-utils some images
# carry, and apt removes that one; the second pass installs the matching qemu-utils.
updated=
for _ in 1 2; do
  missing=()
  for p in "${need[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
  [ ${#missing[@]} -gt 0 ] || break
  echo "setup: installing ${missing[*]}" >&2
  [ -n "$updated" ] || { apt-get update -q >/dev/null; updated=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
done
modprobe overlay 2>/dev/null || true
# The lint gates (make lint) need rustfmt and clippy, which rustup's default profile has.
for c in fmt clippy; do
  cargo "$c" --version >/dev/null 2>&1 || { echo "setup: cargo $c is missing: rustup component add $( [ $c = fmt ] && echo rustfmt || echo clippy )" >&2; exit 1; }
done

# PostgreSQL for the authority tests (SQLite needs nothing): start the cluster if it is
# down, and make the role and database the tests use (postgres://plab:plab@127.0.0.1/plab).
pgver=$(for d in /usr/lib/postgresql/*/; do basename "$d"; done | sort -n | tail -n1)
if ! pg_lsclusters -h 2>/dev/null | grep -q online; then
  pg_lsclusters -h 2>/dev/null | grep -q . || pg_createcluster "$pgver" main >/dev/null
  pg_ctlcluster "$pgver" main start
fi
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='plab'\"" | grep -q 1 \
  || su postgres -c "psql -qc \"CREATE ROLE plab LOGIN PASSWORD 'plab' CREATEDB\""
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname='plab'\"" | grep -q 1 \
  || su postgres -c "psql -qc 'CREATE DATABASE plab OWNER plab'"
# Databases earlier test runs made (plab_t_*) are dropped.
for d in $(su postgres -c "psql -qtAc \"SELECT datname FROM pg_database WHERE datname LIKE 'plab_t_%'\""); do
  su postgres -c "psql -qc 'DROP DATABASE $d'" >/dev/null
done
# lxcfs: container VMs' /proc/meminfo, cpuinfo, uptime, ... show their own limits (no
# systemd here to start it: start it when it is not serving).
if ! [ -e /var/lib/lxcfs/proc/meminfo ]; then
  umount -l /var/lib/lxcfs 2>/dev/null || true
  mkdir -p /var/lib/lxcfs
  # (An lxcfs still exiting holds its pid file for a moment: try again.)
  for _ in 1 2 3; do
    setsid -f lxcfs -l --enable-pidfd /var/lib/lxcfs </dev/null >>/var/log/lxcfs.log 2>&1
    for _ in $(seq 30); do [ -e /var/lib/lxcfs/proc/meminfo ] && break 2; sleep 0.1; done
  done
  [ -e /var/lib/lxcfs/proc/meminfo ] || { echo "setup: lxcfs does not serve /var/lib/lxcfs (see /var/log/lxcfs.log)" >&2; exit 1; }
fi
# libvirt for linux-kvm-x86 (no systemd here: start the daemons when they are not running).
mkdir -p /var/log/libvirt /var/run/libvirt
# Without udev, /dev/kvm stays root:root 0600. libvirt probes QEMU as root (KVM usable),
# then finds that its QEMU user (libvirt-qemu, in group kvm) cannot open /dev/kvm, and
# probes QEMU again at every call: about 36 s per domain start. Debian's udev rule makes
# it root:kvm 0660; do the same. (plab-nm says so at start when it is not.)
if [ -c /dev/kvm ] && getent group kvm >/dev/null; then
  chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
fi
pgrep -x virtlogd >/dev/null || virtlogd -d
if ! pgrep -x libvirtd >/dev/null; then
  libvirtd -d
fi
for _ in $(seq 100); do virsh -c qemu:///system version >/dev/null 2>&1 && break; sleep 0.2; done
virsh -c qemu:///system version >/dev/null 2>&1 || { echo "setup: libvirtd does not answer (see /var/log/libvirt/libvirtd.log)" >&2; exit 1; }

bash "$(dirname "$0")/../images/build-rootfs.sh"
bash "$(dirname "$0")/../images/build-guest.sh"
