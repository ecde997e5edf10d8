#!/usr/bin/env bash
# Build an emulated Xen host (to test linux-xen-x86 without Xen hardware):
# Debian's Xen 4.17 booted by QEMU (TCG) with a PV dom0 that runs xenstored/xenconsoled,
# virtlogd, libvirtd (libxl driver, xen:///system) and sshd. images/xen-host.sh boots it.
#   xen.bin       the hypervisor (xen-hypervisor-4.17-amd64, gunzipped: QEMU loads it
#                 as a multiboot kernel)
#   vmlinuz       the dom0 kernel (linux-image-amd64), the ELF from inside the bzImage
#                 (Xen would otherwise decompress it, slowly, under TCG)
#   initrd.img    busybox-static plus virtio/ext4 modules: mounts /dev/vda, starts
#                 tini + plab-xenhost-init (images/xen-host-init.sh); uncompressed cpio
#   dom0.qcow2    the dom0 root filesystem (ext4, no partition table): Debian bookworm
#                 (minbase) with the Xen tools, libvirt with its Xen driver, qemu-system-xen
#                 (qdisk, for qcow2 guest disks), OpenSSH, nftables, the kernel's modules
#   id_ed25519    root's ssh key for dom0 (made once and kept across rebuilds; or give
#                 PLAB_XENHOST_KEY=FILE.pub to authorize an existing key instead)
#   known_hosts   dom0's host key, under the name plab-xenhost (HostKeyAlias)
# Usage: images/build-xen-host.sh [OUT_DIR]   (default /var/cache/plab/images/xen-host)
# Cached: a stamp over the scripts, the key and the candidate versions of the main packages.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-${PLAB_XENHOST_DIR:-/var/cache/plab/images/xen-host}}
mirror=${PLAB_DEBIAN_MIRROR:-$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)}
mirror=${mirror:-http://deb.debian.org/debian}
security=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | grep -m1 security || true)
suite=${PLAB_DEBIAN_SUITE:-bookworm}
disk_size=${PLAB_XENHOST_DISK:-8G}
packages="xen-hypervisor-4.17-amd64 xen-utils-4.17 qemu-system-xen libvirt-daemon
  libvirt-daemon-driver-xen libvirt-daemon-system libvirt-daemon-system-sysv libvirt-clients
  openssh-server tini busybox-static kmod iproute2 bridge-utils nftables conntrack procps
  qemu-utils dosfstools mtools e2fsprogs less"
versioned="xen-hypervisor-4.17-amd64 xen-utils-4.17 libvirt-daemon-driver-xen qemu-system-xen openssh-server"

command -v debootstrap >/dev/null || {
  echo "xen host: installing debootstrap" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null; }
for t in depmod modprobe cpio mkfs.ext4 qemu-img ssh-keygen python3; do
  command -v $t >/dev/null || { echo "xen host: $t is missing (apt-get install kmod cpio e2fsprogs qemu-utils openssh-client python3)" >&2; exit 1; }
done
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)/\1/p' | head -n1)
[ -n "$kpkg" ] || { echo "xen host: cannot resolve linux-image-amd64 (apt-get update?)" >&2; exit 1; }
kver=${kpkg#linux-image-}

mkdir -p "$out"
if [ -n "${PLAB_XENHOST_KEY:-}" ]; then
  pubkey=$(cat "$PLAB_XENHOST_KEY")
else
  [ -f "$out/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C plab-xenhost -f "$out/id_ed25519"
  pubkey=$(cat "$out/id_ed25519.pub")
fi
# shellcheck disable=SC2086 # $versioned is a space-separated list of package names.
versions=$(apt-cache policy $versioned | awk '/^[^ ]/{p=$1} /Candidate:/{print p, $2}')
stamp=$( { cat "$0" "$here/xen-host-init.sh" "$here/xen-host-initramfs-init.sh" "$here/kernel-elf.py" "$here/initramfs-modules.sh"
           echo "$pubkey $kpkg $versions"; } | sha256sum | cut -c1-16)-$kver
if [ -f "$out/.plab-image" ] && [ "$(cat "$out/.plab-image")" = "$stamp" ]; then
  echo "xen host: $out is up to date" >&2; exit 0
fi

start=$(date +%s)
work=$(mktemp -d /var/tmp/plab-xenhost.XXXXXX)
tree="$work/tree"
cleanup() {
  for m in dev/pts proc; do
    mountpoint -q "$tree/$m" 2>/dev/null && umount "$tree/$m"
  done
  rm -rf "$work"
}
trap cleanup EXIT

echo "xen host: debootstrap $suite (minbase) from $mirror (a few minutes)" >&2
nice -n 15 debootstrap --variant=minbase "$suite" "$tree" "$mirror" 2>&1 \
  | while IFS= read -r line; do
      case "$line" in I:\ Retrieving*|I:\ Validating*) ;; *) printf 'xen host: %s\n' "$line" >&2 ;; esac
    done
{ echo "deb $mirror $suite main"; echo "deb $mirror $suite-updates main"
  [ -z "$security" ] || echo "deb $security $suite-security main"; } > "$tree/etc/apt/sources.list"
# apt inside the tree orders the configuration; nothing is started (policy-rc.d).
mount -t proc proc "$tree/proc"
mount -t devpts devpts "$tree/dev/pts" 2>/dev/null || true
cp /etc/resolv.conf "$tree/etc/resolv.conf" 2>/dev/null || true
printf '#!/bin/sh\nexit 101\n' > "$tree/usr/sbin/policy-rc.d"; chmod 755 "$tree/usr/sbin/policy-rc.d"
chroot "$tree" apt-get update -q 2>&1 | sed 's/^/xen host: /' >&2
echo "xen host: installing $(echo "$packages" | wc -w) packages and their dependencies" >&2
# shellcheck disable=SC2086 # $packages is a space-separated list of package names.
DEBIAN_FRONTEND=noninteractive nice -n 15 chroot "$tree" apt-get install -y -q --no-install-recommends $packages 2>&1 \
  | grep -E '^(Setting up (xen|libvirt|qemu|openssh)|E:)' | sed 's/^/xen host: /' >&2
rm -f "$tree/usr/sbin/policy-rc.d" "$tree/etc/resolv.conf"
umount "$tree/dev/pts" 2>/dev/null || true
umount "$tree/proc"
for f in usr/sbin/xl usr/sbin/libvirtd usr/sbin/sshd usr/bin/tini bin/busybox etc/init.d/xen etc/init.d/libvirtd; do
  [ -e "$tree/$f" ] || { echo "xen host: /$f missing after apt-get install" >&2; exit 1; }
done
hv=$(find "$tree/boot" -name 'xen-4.17*-amd64.gz' | sort | tail -n1)
[ -n "$hv" ] || { echo "xen host: no xen-*.gz in /boot of the tree" >&2; exit 1; }

echo "xen host: kernel $kpkg" >&2
(cd "$work" && apt-get download -q "$kpkg" >/dev/null 2>&1)
# The modules go into the tree (modprobe in dom0: xen backends, 9p, bridge, nftables);
# unpacked aside, since extracting the package over the tree would replace its /lib symlink.
dpkg-deb -x "$work"/linux-image-*.deb "$work/k"
mkdir -p "$tree/usr/lib/modules"
cp -a "$work/k/lib/modules/$kver" "$tree/usr/lib/modules/"
depmod -b "$tree" "$kver"

echo "xen host: configuring" >&2
echo plab-xenhost > "$tree/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 plab-xenhost\n' > "$tree/etc/hosts"
install -m 0755 "$here/xen-host-init.sh" "$tree/sbin/plab-xenhost-init"
mkdir -p "$tree/etc/plab-xenhost.d" "$tree/root/.ssh"
echo "$pubkey" > "$tree/root/.ssh/authorized_keys"
chmod 700 "$tree/root/.ssh"; chmod 600 "$tree/root/.ssh/authorized_keys"
rm -f "$tree"/etc/ssh/ssh_host_*
ssh-keygen -q -t ed25519 -N '' -C plab-xenhost -f "$tree/etc/ssh/ssh_host_ed25519_key"
cat > "$tree/etc/ssh/sshd_config" <<'CONF'
# The emulated Xen host's dom0: root by key only (the key of images/build-xen-host.sh).
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
PrintMotd no
Subsystem sftp /usr/lib/openssh/sftp-server
CONF
echo "/dev/vda / ext4 rw 0 0" > "$tree/etc/fstab"
# Guests' consoles also go to /var/log/xen/console/guest-NAME.log (xenconsoled).
mkdir -p "$tree/var/log/xen/console"
echo 'XENCONSOLED_ARGS="--log=guest --log-dir=/var/log/xen/console"' >> "$tree/etc/default/xen"
# libvirt's libxl driver decodes the host CPU from Xen's feature words (no vendor) and fails
# to start ("Cannot find suitable CPU model for given data") unless some model's features
# are all present: QEMU's TCG has no VME, and Xen hides SEP on AMD-like CPUs, which rules
# out every model libvirt ships. A model with qemu64's features less those two.
cpumap="$tree/usr/share/libvirt/cpu_map"
{ echo "<cpus>"; echo "  <model name='qemu64-xen'>"; echo "    <decode host='on' guest='off'/>"
  for f in apic clflush cmov cx16 cx8 de fpu fxsr lm mca mce mmx msr mtrr nx pae pat pge pni \
           pse pse36 sse sse2 syscall tsc; do echo "    <feature name='$f'/>"; done
  echo "  </model>"; echo "</cpus>"; } > "$cpumap/x86_plab-qemu64-xen.xml"
sed -i "s|^\( *\)<include filename='x86_qemu64.xml'/>|&\n\1<include filename='x86_plab-qemu64-xen.xml'/>|" "$cpumap/index.xml"
grep -q plab-qemu64-xen "$cpumap/index.xml" || { echo "xen host: could not add the CPU model to libvirt's cpu_map" >&2; exit 1; }
rm -rf "$tree"/var/cache/apt/archives/*.deb "$tree"/var/lib/apt/lists/* \
       "$tree"/usr/share/doc/* "$tree"/usr/share/man/* "$tree"/usr/share/locale/*

echo "xen host: initramfs" >&2
ird="$work/initramfs"
mkdir -p "$ird/bin" "$ird/lib/modules"
cp "$tree/bin/busybox" "$ird/bin/busybox"
install -m 0755 "$here/xen-host-initramfs-init.sh" "$ird/init"
bash "$here/initramfs-modules.sh" "$tree" "$kver" "$ird" virtio_pci virtio_blk ext4
(cd "$ird" && find . | cpio -o -H newc --quiet) > "$work/initrd.img"

echo "xen host: root filesystem ($disk_size, $(du -sh "$tree" | cut -f1) used)" >&2
mkdir -p "$out.tmp"
nice -n 15 mkfs.ext4 -q -F -L plab-xenhost -d "$tree" "$work/root.raw" "$disk_size" >/dev/null
nice -n 15 qemu-img convert -O qcow2 "$work/root.raw" "$out.tmp/dom0.qcow2"
gzip -dc "$hv" > "$out.tmp/xen.bin"
python3 "$here/kernel-elf.py" "$work/k/boot/vmlinuz-$kver" "$out.tmp/vmlinuz"
cp "$work/initrd.img" "$out.tmp/initrd.img"
awk '{print "plab-xenhost", $1, $2}' "$tree/etc/ssh/ssh_host_ed25519_key.pub" > "$out.tmp/known_hosts"
rm -f "$out/.plab-image"
for f in xen.bin vmlinuz initrd.img dom0.qcow2 known_hosts; do mv "$out.tmp/$f" "$out/$f"; done
rmdir "$out.tmp"
echo "$stamp" > "$out/.plab-image"
echo "xen host: done in $(( $(date +%s) - start )) s: $out ($(du -sh "$out" | cut -f1))" >&2
