#!/bin/busybox sh
# shellcheck shell=dash
# The guest initramfs: load the virtio/xen block, ext4 and vfat modules, mount the root
# disk and switch to it.
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /newroot
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
# The Xen front ends only on Xen (a tenth of a second saved elsewhere under TCG).
hv=; [ -r /sys/hypervisor/type ] && read -r hv < /sys/hypervisor/type
while read -r m; do
  case "$m" in */xen-*) [ "$hv" = xen ] || continue ;; esac
  insmod "/lib/modules/$m" 2>/dev/null
done < /modules.load
for _ in $(seq 100); do [ -b /dev/vda ] || [ -b /dev/xvda ] && break; sleep 0.1; done
root=/dev/vda; [ -b /dev/xvda ] && root=/dev/xvda
if ! mount -t ext4 -o rw "$root" /newroot; then
  echo "initramfs: cannot mount the root disk $root"; exec sh
fi
umount /proc /sys; umount /dev 2>/dev/null
exec switch_root /newroot /sbin/plab-guest-init
