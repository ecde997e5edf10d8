#!/bin/sh
# plab-guest-init: the first program of a linux-kvm-x86 / linux-xen-x86 guest built by
# images/build-guest.sh (the initramfs mounts the root disk and switches to it). It reads
# the cloud-init NoCloud seed the node manager attaches (the second disk, label cidata),
# sets up the network from the kernel command line (plab.ip=, plab.gw=), grows the root
# filesystem to the disk quota, then hands over to plab-init (the same init as container
# VMs: slice login, sshd, bootscript). Everything goes to the serial console.
# Under TCG every program started costs tens of milliseconds, so this script uses shell
# built-ins where it can.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sys /sys 2>/dev/null
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /run && mount -t devpts devpts /dev/pts && mount -t tmpfs tmpfs /run
echo "plab-guest-init: starting"

root=/dev/vda; seed=/dev/vdb
[ -b /dev/xvda ] && root=/dev/xvda && seed=/dev/xvdb

# The seed's plab/ holds what container VMs find at /etc/plab: login, keys/<login>,
# bootscript, and the VM's ssh host key (made by the node manager, which shows its
# public half in the VM's status).
mkdir -p /run/plab-seed /etc/plab
if mount -t vfat -o ro,fmask=0133,dmask=0022,iocharset=iso8859-1,codepage=437 "$seed" /run/plab-seed; then
  rm -rf /etc/plab/keys /etc/plab/bootscript /etc/plab/ssh_host_ed25519_key
  cp -r /run/plab-seed/plab/. /etc/plab/
  [ -f /etc/plab/ssh_host_ed25519_key ] && chmod 600 /etc/plab/ssh_host_ed25519_key
  while read -r key value; do
    [ "$key" = local-hostname: ] && echo "$value" > /proc/sys/kernel/hostname
  done < /run/plab-seed/meta-data
  umount /run/plab-seed
else
  echo "plab-guest-init: no seed on $seed"
fi

read -r cmdline < /proc/cmdline
for arg in $cmdline; do
  case "$arg" in plab.ip=*) ip=${arg#plab.ip=} ;; plab.gw=*) gw=${arg#plab.gw=} ;; esac
done
dev=
for d in /sys/class/net/*; do
  d=${d##*/}; [ "$d" = lo ] || { dev=$d; break; }
done
if [ -n "${ip:-}" ] && [ -n "$dev" ]; then
  { echo "link set lo up"; echo "addr add $ip dev $dev"; echo "link set $dev up"
    [ -n "${gw:-}" ] && echo "route add default via $gw"; } | ip -batch - && echo "plab-guest-init: $dev is $ip"
  # Announce the address (gratuitous ARP): a peer already waiting for it, such as a first
  # ssh attempt, goes ahead at once instead of at its next ARP retry, up to a second later.
  /bin/busybox arping -q -U -c 1 -I "$dev" "${ip%/*}" &
else
  ip link set lo up
fi

# Grow the root filesystem to the disk quota (online), at the lowest priority so that it
# does not slow the way to sshd.
( nice -n 19 resize2fs "$root" >/dev/null 2>&1 || echo "plab-guest-init: could not grow $root" ) &
# libvirt's shutdown presses the ACPI power button; acpid hands it to plab-init, which
# stops the VM cleanly (see /etc/acpi/PWRF/00000080). A Xen PV guest has no ACPI: Xen's
# shutdown request makes the kernel run poweroff_cmd, which does the same.
/bin/busybox acpid -c /etc/acpi -l /run/acpid.log
echo /etc/acpi/PWRF/00000080 > /proc/sys/kernel/poweroff_cmd 2>/dev/null || true
export PLAB_GUEST=1
exec /usr/bin/tini -s -- /sbin/plab-init
