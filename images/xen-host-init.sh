#!/bin/sh
# plab-xenhost-init: the first program of the emulated Xen host's dom0 (tini is PID 1 and
# reaps), built by images/build-xen-host.sh and booted by images/xen-host.sh. A few
# programs instead of a full init system: under TCG, and more so in a PV dom0 whose page
# table updates are hypercalls, every process started costs time. In order: the drivers
# (no udev), the network (QEMU's user-mode network; the guests' bridge xenbr0), the 9p
# shares the launcher passes (each at /mnt/TAG), the Xen daemons (xenstored, xenconsoled,
# dom0's QEMU for qdisk), virtlogd, libvirtd (its libxl driver is xen:///system), the
# executables in /etc/plab-xenhost.d, and last sshd: a login means the host is ready.
# Everything goes to the console (hvc0, which Xen copies to com1).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm /run /tmp
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mkdir -p /run/lock /run/sshd
# What udev would add to devtmpfs; Xen's hotplug scripts (locking.sh) stat /dev/stdin.
ln -s /proc/self/fd /dev/fd; ln -s fd/0 /dev/stdin; ln -s fd/1 /dev/stdout; ln -s fd/2 /dev/stderr
echo "plab-xenhost-init: starting"
hostname plab-xenhost
# No udev: load the drivers of the devices present (virtio net, rng, 9p; the initramfs
# loaded virtio_pci) and what Xen's guests need from dom0: the back ends of their disks
# and network (qcow2 disks are served by QEMU, qdisk), and the bridge.
# shellcheck disable=SC2046 # one word per alias
modprobe -qab $(cat /sys/bus/pci/devices/*/modalias /sys/bus/virtio/devices/*/modalias 2>/dev/null)
modprobe -qa xen-netback xen-blkback xen-gntalloc bridge loop 9p tun
# An HVM guest's emulated NIC is a tap that Xen's QEMU opens through /dev/net/tun.
mkdir -p /dev/net; [ -e /dev/net/tun ] || mknod -m 0666 /dev/net/tun c 10 200

# Network: QEMU's user-mode network (10.0.2.15/24, gateway 10.0.2.2, the host's ssh port
# forwarded to 22) on the first network interface; the guests' bridge xenbr0 (10.99.0.1/24,
# no uplink: guests reach dom0 only).
ip link set lo up
dev=
for d in /sys/class/net/*; do
  d=${d##*/}; case "$d" in lo|xenbr*|vif*|plab*) ;; *) dev=$d; break ;; esac
done
if [ -n "$dev" ]; then
  ip addr add 10.0.2.15/24 dev "$dev" && ip link set "$dev" up && ip route add default via 10.0.2.2
  echo "plab-xenhost-init: $dev is 10.0.2.15"
fi
ip link add xenbr0 type bridge && ip addr add 10.99.0.1/24 dev xenbr0 && ip link set xenbr0 up

# The launcher's 9p shares (tags listed under the virtio 9p devices).
for t in /sys/bus/virtio/drivers/9pnet_virtio/*/mount_tag; do
  [ -r "$t" ] || continue
  tag=$(tr -d '\0' < "$t")
  mkdir -p "/mnt/$tag"
  mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,cache=loose "$tag" "/mnt/$tag" \
    && echo "plab-xenhost-init: 9p share $tag at /mnt/$tag"
done

/etc/init.d/xen start
/etc/init.d/virtlogd start
/etc/init.d/libvirtd start
# Site additions (the node manager, tests): executable files in /etc/plab-xenhost.d.
for f in /etc/plab-xenhost.d/*; do [ -x "$f" ] && "$f"; done
/usr/sbin/sshd -E /var/log/sshd.log && echo "plab-xenhost-init: sshd listening"
echo "plab-xenhost-init: ready"

stop() {
  echo "plab-xenhost-init: stopping"
  /etc/init.d/libvirtd stop; xl shutdown -a -w 2>/dev/null
  kill -TERM -1 2>/dev/null; sleep 0.5; sync
  mount -o remount,ro / 2>/dev/null
  echo "plab-xenhost-init: powering off"
  /bin/busybox poweroff -f
}
trap stop TERM INT
while :; do sleep 3600 & wait $!; done
