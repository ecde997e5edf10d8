#!/usr/bin/env bash
# Build a stock-style cloud image from Debian packages, the kind an operator points the
# node manager at instead of the project's own guest image (`guest_image = FILE`):
# a partitioned disk with GRUB in the boot sector, Debian's cloud kernel
# (linux-image-cloud-amd64) with its own initramfs, systemd, OpenSSH and cloud-init, and no
# plab code at all. It boots from its disk through the firmware, and cloud-init configures
# it from the node manager's NoCloud seed exactly as it would a downloaded cloud image.
# The tests use it because no stock image can be downloaded here (only package
# registries are reachable); any Debian/Ubuntu genericcloud image works the same way.
# Usage: images/build-cloud.sh [OUT_FILE]   (default /var/cache/plab/images/cloud-bookworm.qcow2)
# Cached: rebuilt only when this script changes. Needs debootstrap, fdisk, grub-pc-bin,
# e2fsprogs and qemu-utils (ci/setup.sh installs them).
set -euo pipefail
out=${1:-${PLAB_CLOUD_IMAGE:-/var/cache/plab/images/cloud-bookworm.qcow2}}
mirror=${PLAB_DEBIAN_MIRROR:-$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)}
mirror=${mirror:-http://deb.debian.org/debian}
suite=${PLAB_DEBIAN_SUITE:-bookworm}
packages="linux-image-cloud-amd64 initramfs-tools systemd-sysv udev dbus cloud-init openssh-server ifupdown iproute2 netbase procps locales sudo"
stamp=$(sha256sum < "$0" | cut -c1-16)
if [ -f "$out" ] && [ "$(cat "$out.stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "cloud image: $out is up to date" >&2; exit 0
fi
for t in debootstrap sfdisk grub-mkimage mkfs.ext4 qemu-img; do
  command -v $t >/dev/null || { echo "cloud image: $t is missing (apt-get install debootstrap fdisk grub-pc-bin grub-common e2fsprogs qemu-utils)" >&2; exit 1; }
done
[ -d /usr/lib/grub/i386-pc ] || { echo "cloud image: GRUB's BIOS modules are missing (apt-get install grub-pc-bin)" >&2; exit 1; }

start=$(date +%s)
work=$(mktemp -d /var/tmp/plab-cloud.XXXXXX)
cleanup() {
  mountpoint -q "$work/tree/dev/pts" 2>/dev/null && umount "$work/tree/dev/pts"
  mountpoint -q "$work/tree/proc" 2>/dev/null && umount "$work/tree/proc"
  rm -rf "$work"
}
trap cleanup EXIT

echo "cloud image: debootstrap $suite (minbase), then $packages (a few minutes)" >&2
tree="$work/tree"
debootstrap --variant=minbase "$suite" "$tree" "$mirror" 2>&1 \
  | while IFS= read -r line; do
      case "$line" in I:\ Retrieving*|I:\ Validating*) ;; *) printf 'cloud image: %s\n' "$line" >&2 ;; esac
    done
# apt inside the tree orders the configuration of the rest (debootstrap --include cannot
# for cloud-init's Python dependencies); nothing is started (policy-rc.d).
mount -t proc proc "$tree/proc"
cp /etc/resolv.conf "$tree/etc/resolv.conf" 2>/dev/null || true
printf '#!/bin/sh\nexit 101\n' > "$tree/usr/sbin/policy-rc.d"; chmod 755 "$tree/usr/sbin/policy-rc.d"
mount -t devpts devpts "$tree/dev/pts" 2>/dev/null || true
chroot "$tree" apt-get update -q 2>&1 | sed 's/^/cloud image: /' >&2
# shellcheck disable=SC2086 # $packages is a space-separated list of package names.
DEBIAN_FRONTEND=noninteractive chroot "$tree" apt-get install -y -q --no-install-recommends $packages 2>&1 \
  | grep -E '^(Setting up|E:)' | sed 's/^/cloud image: /' >&2
# The locale cloud-init sets by default (en_US.UTF-8), generated as in Debian's images.
sed -i 's/^# *\(en_US.UTF-8 UTF-8\)/\1/' "$tree/etc/locale.gen"
chroot "$tree" locale-gen 2>&1 | sed 's/^/cloud image: /' >&2
rm -f "$tree/usr/sbin/policy-rc.d" "$tree/etc/resolv.conf"
umount "$tree/dev/pts" 2>/dev/null || true
umount "$tree/proc"
test -x "$tree/usr/bin/cloud-init" || { echo "cloud image: cloud-init missing after apt-get install" >&2; exit 1; }

echo "cloud image: configuring" >&2
# What every cloud image does: no host keys, machine id or apt lists baked in; root
# locked; the serial console on; networking left to cloud-init.
rm -f "$tree"/etc/ssh/ssh_host_*
: > "$tree/etc/machine-id"
rm -rf "$tree"/var/lib/apt/lists/* "$tree"/var/cache/apt/*.bin "$tree"/var/cache/apt/archives/*.deb
chroot "$tree" passwd -l root >/dev/null
printf 'auto lo\niface lo inet loopback\n\nsource /etc/network/interfaces.d/*\n' > "$tree/etc/network/interfaces"
mkdir -p "$tree/etc/network/interfaces.d"
echo "localhost" > "$tree/etc/hostname"

echo "cloud image: disk" >&2
# A 2 GiB disk: an MBR partition from 1 MiB holding the ext4 root, and GRUB in the boot
# sector and the gap before the partition. Written straight into the file (mke2fs at an
# offset, GRUB's images with dd), so no loop device is needed.
raw="$work/disk.raw"
truncate -s 2G "$raw"
echo 'start=2048, type=83, bootable' | sfdisk -q "$raw"
uuid=$(cat /proc/sys/kernel/random/uuid)
echo "UUID=$uuid / ext4 rw,discard,errors=remount-ro 0 1" > "$tree/etc/fstab"
mkdir -p "$tree/boot/grub"
cp -r /usr/lib/grub/i386-pc "$tree/boot/grub/"
cat > "$tree/boot/grub/grub.cfg" <<CFG
set timeout=0
set default=0
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
menuentry 'Debian GNU/Linux' {
  insmod part_msdos
  insmod ext2
  search --no-floppy --fs-uuid --set=root $uuid
  linux /vmlinuz root=UUID=$uuid ro console=tty0 console=ttyS0,115200
  initrd /initrd.img
}
CFG
mkfs.ext4 -q -F -U "$uuid" -L cloudimg-rootfs -E offset=$((2048 * 512)) -d "$tree" "$raw" $(( (2048 - 1) * 1024 ))k
# GRUB's first stage finds its second (core.img, right after the boot sector) by sector
# number; core.img finds the root filesystem by its UUID and reads grub.cfg there.
# shellcheck disable=SC2016 # $root is GRUB's variable, for GRUB to expand.
printf 'search --no-floppy --fs-uuid --set=root %s\nset prefix=($root)/boot/grub\n' "$uuid" > "$work/early.cfg"
grub-mkimage -O i386-pc -o "$work/core.img" -c "$work/early.cfg" -p /boot/grub \
  biosdisk part_msdos ext2 search search_fs_uuid normal configfile
[ "$(stat -c %s "$work/core.img")" -lt $(( 2047 * 512 )) ] || { echo "cloud image: core.img too big" >&2; exit 1; }
dd if=/usr/lib/grub/i386-pc/boot.img of="$raw" bs=440 count=1 conv=notrunc status=none
dd if="$work/core.img" of="$raw" bs=512 seek=1 conv=notrunc status=none

mkdir -p "$(dirname "$out")"
qemu-img convert -O qcow2 "$raw" "$out.tmp"
mv "$out.tmp" "$out"
echo "$stamp" > "$out.stamp"
echo "cloud image: done in $(( $(date +%s) - start )) s: $out ($(du -h "$out" | cut -f1))" >&2
