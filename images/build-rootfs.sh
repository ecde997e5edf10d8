#!/usr/bin/env bash
# Build the linux-vserver-x86 container root filesystem from Debian packages.
#
# Usage: images/build-rootfs.sh [OUT_DIR]
#   OUT_DIR defaults to $PLAB_IMAGE_DIR or /var/cache/plab/images/vserver-bookworm.
#
# The result is a minimal Debian 12 (minbase) tree with busybox-static, OpenSSH's
# server, sudo (the slice's login is root in its VM through it) and tini as PID 1.
# It is built once and cached: a finished tree carries a
# stamp file whose content is a hash of this script and vserver-init.sh, so editing
# either rebuilds it.
# Progress goes to stderr; debootstrap's own log is kept next to the tree.
set -euo pipefail

out=${1:-${PLAB_IMAGE_DIR:-/var/cache/plab/images/vserver-bookworm}}
mirror=${PLAB_DEBIAN_MIRROR:-$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)}
mirror=${mirror:-http://deb.debian.org/debian}
suite=${PLAB_DEBIAN_SUITE:-bookworm}
packages=busybox-static,openssh-server,tini,iproute2,procps,sudo
stamp_want=$(cat "$0" "$(dirname "$0")/vserver-init.sh" | sha256sum | cut -c1-16)

if [ -f "$out/.plab-image" ] && [ "$(cat "$out/.plab-image")" = "$stamp_want" ]; then
  echo "image: $out is up to date" >&2
  exit 0
fi
command -v debootstrap >/dev/null || {
  echo "image: debootstrap is missing: apt-get install debootstrap" >&2; exit 1; }

tmp="$out.tmp.$$"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$(dirname "$out")"
echo "image: building $out from $mirror ($suite, minbase + $packages); this takes a few minutes" >&2
start=$(date +%s)
# debootstrap prints one line per step (Retrieving/Validating/Unpacking/Configuring ...):
# show them as progress.
debootstrap --variant=minbase --include="$packages" "$suite" "$tmp" "$mirror" 2>&1 \
  | while IFS= read -r line; do
      case "$line" in I:\ Retrieving*|I:\ Validating*) ;; *) printf 'image: %s\n' "$line" >&2 ;; esac
    done
test -x "$tmp/usr/sbin/sshd" || { echo "image: sshd missing after debootstrap" >&2; exit 1; }

# Trim what a container never needs, so the per-VM overlay starts small.
rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/* \
       "$tmp"/usr/share/doc/* "$tmp"/usr/share/man/* "$tmp"/usr/share/locale/*
# Host keys are made per VM at first boot, never shared between VMs.
rm -f "$tmp"/etc/ssh/ssh_host_*
cat > "$tmp/etc/ssh/sshd_config" <<'CONF'
# plab VM sshd: keys only, keys installed by the node manager (read-only mount).
HostKey /etc/ssh/ssh_host_ed25519_key
AuthorizedKeysFile /etc/plab/keys/%u
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UsePAM no
PrintMotd no
Subsystem sftp /usr/lib/openssh/sftp-server
CONF
install -m 0755 "$(dirname "$0")/vserver-init.sh" "$tmp/sbin/plab-init"
echo "$stamp_want" > "$tmp/.plab-image"
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "image: done in $(( $(date +%s) - start )) s: $out ($(du -sh "$out" | cut -f1))" >&2
