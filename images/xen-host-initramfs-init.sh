#!/bin/busybox sh
# shellcheck shell=dash
# The initramfs of the emulated Xen host's dom0 (images/build-xen-host.sh): load the
# virtio block and ext4 modules, mount the root disk (/dev/vda) and switch to it, with
# tini as PID 1 running plab-xenhost-init (images/xen-host-init.sh).
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /newroot
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
while read -r m; do insmod "/lib/modules/$m" 2>/dev/null; done < /modules.load
for _ in $(seq 100); do [ -b /dev/vda ] && break; sleep 0.1; done
if ! mount -t ext4 -o rw /dev/vda /newroot; then
  echo "initramfs: cannot mount the root disk /dev/vda"; exec sh
fi
umount /proc /sys; umount /dev 2>/dev/null
exec switch_root /newroot /usr/bin/tini -- /sbin/plab-xenhost-init
