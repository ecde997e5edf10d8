#!/bin/sh
# plab-guest-init: the first program of a linux-kvm-x86 / linux-xen-x86 guest built by
# images/build-guest.sh (the initramfs mounts the root disk and switches to it). It reads
# the cloud-init NoCloud seed the node manager attaches (the second disk, label cidata),
# sets up the network from the kernel command line (plab.ip=, plab.gw=), grows the root
# filesystem to the disk quota, then hands over to plab-init (the same init as container
# VMs: slice login, sshd, bootscript). Everything goes to the serial console.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sys /sys 2>/dev/null
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /run && mount -t devpts devpts /dev/pts && mount -t tmpfs tmpfs /run
echo "plab-guest-init: starting"

root=/dev/vda; seed=/dev/vdb
[ -b /dev/xvda ] && root=/dev/xvda && seed=/dev/xvdb
# Grow the root filesystem to the disk quota (online) while the rest of the boot goes on.
( resize2fs "$root" >/dev/null 2>&1 || echo "plab-guest-init: could not grow $root" ) &

mkdir -p /run/plab-seed /etc/plab/keys
if mount -t vfat -o ro,iocharset=iso8859-1,codepage=437 "$seed" /run/plab-seed; then
  cp /run/plab-seed/plab/login /etc/plab/login
  rm -f /etc/plab/keys/* /etc/plab/bootscript
  cp /run/plab-seed/plab/keys/* /etc/plab/keys/ 2>/dev/null
  [ -f /run/plab-seed/plab/bootscript ] && cp /run/plab-seed/plab/bootscript /etc/plab/bootscript
  host=$(sed -n 's/^local-hostname: *//p' /run/plab-seed/meta-data)
  [ -n "$host" ] && hostname "$host"
  umount /run/plab-seed
else
  echo "plab-guest-init: no seed on $seed"
fi
chmod 755 /etc/plab /etc/plab/keys; chmod 644 /etc/plab/keys/* 2>/dev/null

for arg in $(cat /proc/cmdline); do
  case "$arg" in plab.ip=*) ip=${arg#plab.ip=} ;; plab.gw=*) gw=${arg#plab.gw=} ;; esac
done
ip link set lo up
dev=$(ls /sys/class/net | grep -v '^lo$' | head -n1)
if [ -n "${ip:-}" ] && [ -n "$dev" ]; then
  ip addr add "$ip" dev "$dev" && ip link set "$dev" up
  [ -n "${gw:-}" ] && ip route add default via "$gw"
  echo "plab-guest-init: $dev is $ip"
fi
exec /usr/bin/tini -s -- /sbin/plab-init
