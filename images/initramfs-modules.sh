#!/usr/bin/env bash
# Copies kernel modules and everything they depend on into an initramfs tree, in load
# order, and lists them in its modules.load (read by the initramfs's init).
# Usage: images/initramfs-modules.sh MODULES_ROOT KVER INITRAMFS_DIR MODULE...
#   MODULES_ROOT holds lib/modules/KVER (a root filesystem, or an unpacked kernel package).
# Used by build-guest.sh and build-xen-host.sh. Built-in modules need no copy.
set -euo pipefail
root=$1 kver=$2 ird=$3
shift 3
: > "$ird/modules.load"
for m in "$@"; do
  modprobe -d "$root" -S "$kver" --show-depends "$m" | awk '$1 == "insmod" {print $2}'
done | awk '!seen[$0]++' | while read -r path; do
  rel=${path#"$root/lib/modules/$kver/"}
  mkdir -p "$ird/lib/modules/$(dirname "$rel")"
  cp "$path" "$ird/lib/modules/$rel"
  echo "$rel" >> "$ird/modules.load"
done
