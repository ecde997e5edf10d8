#!/usr/bin/env bash
# Build the guest image for linux-kvm-x86 and linux-xen-x86 from Debian packages:
#   vmlinuz      the Debian kernel (linux-image-amd64), uncompressed (its PVH ELF entry):
#                under TCG, decompressing the bzImage costs seconds at every boot
#   initrd.img   busybox-static plus the virtio/xen, ext4, vfat and rng modules,
#                and evdev/button, so the ACPI power button (libvirt shutdown) reaches
#                acpid (uncompressed cpio, for the same reason)
#   base.qcow2   the root filesystem: the container image's Debian tree plus
#                plab-guest-init; VMs get a qcow2 overlay on it sized to their quota
# Usage: images/build-guest.sh [OUT_DIR]   (default /var/cache/plab/images/guest-bookworm)
# Cached like build-rootfs.sh: a stamp over the scripts and the kernel version.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-${PLAB_GUEST_DIR:-/var/cache/plab/images/guest-bookworm}}
tree=${PLAB_IMAGE_DIR:-/var/cache/plab/images/vserver-bookworm}
bash "$here/build-rootfs.sh" "$tree"
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)/\1/p' | head -n1)
[ -n "$kpkg" ] || { echo "guest: cannot resolve linux-image-amd64 (apt-get update?)" >&2; exit 1; }
kver=${kpkg#linux-image-}
stamp=$(cat "$0" "$here/guest-init.sh" "$here/initramfs-init.sh" "$here/kernel-elf.py" "$here/initramfs-modules.sh" "$tree/.plab-image" | sha256sum | cut -c1-16)-$kver
if [ -f "$out/.plab-image" ] && [ "$(cat "$out/.plab-image")" = "$stamp" ]; then
  echo "guest image: $out is up to date" >&2; exit 0
fi
for t in depmod modprobe cpio mkfs.ext4 qemu-img; do
  command -v $t >/dev/null || { echo "guest image: $t is missing (apt-get install kmod cpio e2fsprogs qemu-utils)" >&2; exit 1; }
done
start=$(date +%s)
work=$(mktemp -d /var/tmp/plab-guest.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "guest image: kernel $kpkg" >&2
(cd "$work" && apt-get download "$kpkg" 2>/dev/null)
dpkg-deb -x "$work"/linux-image-*.deb "$work/k"
depmod -b "$work/k" "$kver"

echo "guest image: initramfs" >&2
ird="$work/initramfs"
mkdir -p "$ird/bin" "$ird/lib/modules"
cp "$tree/bin/busybox" "$ird/bin/busybox"
install -m 0755 "$here/initramfs-init.sh" "$ird/init"
bash "$here/initramfs-modules.sh" "$work/k" "$kver" "$ird" \
  virtio_pci virtio_blk virtio_net virtio-rng ext4 vfat nls_cp437 nls_iso8859_1 evdev button xen-blkfront xen-netfront
(cd "$ird" && find . | cpio -o -H newc --quiet) > "$work/initrd.img"

echo "guest image: root filesystem" >&2
root="$work/root"
cp -a "$tree" "$root"
install -m 0755 "$here/guest-init.sh" "$root/sbin/plab-guest-init"
mkdir -p "$root/etc/acpi/PWRF"
cat > "$root/etc/acpi/PWRF/00000080" <<'SH'
#!/bin/sh
# The ACPI power button (libvirt's shutdown of the domain): plab-init stops the VM cleanly.
read -r pid < /run/plab-init.pid && kill -TERM "$pid"
SH
chmod 0755 "$root/etc/acpi/PWRF/00000080"
rm -f "$root/.plab-image"
mkfs.ext4 -q -F -L plab-root -d "$root" "$work/root.raw" 512M
mkdir -p "$out.tmp"
qemu-img convert -O qcow2 "$work/root.raw" "$out.tmp/base.qcow2"
python3 "$here/kernel-elf.py" "$work/k/boot/vmlinuz-$kver" "$out.tmp/vmlinuz"
cp "$work/initrd.img" "$out.tmp/initrd.img"
echo "$stamp" > "$out.tmp/.plab-image"
rm -rf "$out"; mv "$out.tmp" "$out"
echo "guest image: done in $(( $(date +%s) - start )) s: $out ($(du -sh "$out" | cut -f1))" >&2
