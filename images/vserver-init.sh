#!/bin/sh
# plab-init: the first program of every linux-vserver-x86 VM (tini is PID 1 and reaps).
# Everything it prints goes to the VM console log that the node manager keeps and shows
# (`plab nm log VM`). The node manager mounts /etc/plab read-only with:
#   login       the slice's Unix login (derived from the slice name, see docs/naming.md)
#   keys/LOGIN  the slice users' ssh public keys
#   bootscript  the slice's bootscript (optional), run at every VM start
#   ssh_host_ed25519_key  the VM's ssh host key (0600), made by the node manager, which
#               shows its public half in the VM's status
set -u
read -r login < /etc/plab/login
echo "plab-init: VM for login $login starting"

# The slice's account lives in the VM's own /etc: create it on first boot only, so a
# slice may change its shell or home afterwards.
known=; while IFS=: read -r user _; do [ "$user" = "$login" ] && known=1; done < /etc/passwd
if [ -z "$known" ]; then
  echo "$login:x:1000:1000:plab slice:/home/$login:/bin/bash" >> /etc/passwd
  echo "$login:x:1000:" >> /etc/group
  echo "$login:*:19000:0:99999:7:::" >> /etc/shadow
  mkdir -p "/home/$login" && chown 1000:1000 "/home/$login"
  # Root in its VM is the slice's (section 4.2): passwordless sudo. A container VM's root
  # is an unprivileged host uid (its own user namespace), a hypervisor guest's is the
  # guest's.
  (umask 0337; echo "$login ALL=(ALL:ALL) NOPASSWD: ALL" > /etc/sudoers.d/plab-slice)
  read -r host < /proc/sys/kernel/hostname && echo "127.0.1.1 $host" >> /etc/hosts
fi

mkdir -p /run/sshd
if [ -s /etc/plab/ssh_host_ed25519_key ]; then
  # Copied with shell built-ins only (each program costs time in a TCG guest).
  (umask 077; while IFS= read -r l; do printf '%s\n' "$l"; done < /etc/plab/ssh_host_ed25519_key > /etc/ssh/ssh_host_ed25519_key)
elif [ ! -s /etc/ssh/ssh_host_ed25519_key ]; then
  ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key
fi
/usr/sbin/sshd -E /var/log/sshd.log || echo "plab-init: sshd failed to start (see /var/log/sshd.log)"
echo "plab-init: sshd listening"

if [ -f /etc/plab/bootscript ]; then
  echo "plab-init: bootscript starting"
  ( sh /etc/plab/bootscript; echo "plab-init: bootscript exited with status $?" ) &
fi

# Stopping: every other process gets TERM. A container then simply ends; a hypervisor
# guest (PLAB_GUEST, set by plab-guest-init) also writes everything out, remounts its
# root read-only and powers off, so that libvirt's shutdown loses no data.
stop() {
  echo "plab-init: stopping"
  kill -TERM -1 2>/dev/null
  if [ -n "${PLAB_GUEST:-}" ]; then
    sleep 0.5; kill -KILL -1 2>/dev/null
    sync; mount -o remount,ro / 2>/dev/null
    echo "plab-init: powering off"
    /bin/busybox poweroff -f
  fi
  exit 0
}
trap stop TERM INT
echo $$ > /run/plab-init.pid
while :; do sleep 3600 & wait $!; done
