#!/usr/bin/env bash
# The emulated Xen host: boots the image of images/build-xen-host.sh, Xen 4.17
# with a PV dom0, under QEMU (TCG, -cpu qemu64,+npt: /dev/kvm is not usable here, -cpu
# max/EPYC crash Xen; qemu64 brings AMD SVM, which TCG emulates, so Xen offers HVM, and
# +npt its nested paging, which PVH and HVM guests need: Debian's Xen has no shadow
# paging) inside the network namespace plab-xenhost. dom0's sshd is reached
# through QEMU's user-mode network: 127.0.0.1:PORT in the namespace is dom0's port 22.
# Nothing leaves the namespace (it has only lo).
#
# Usage: images/xen-host.sh start        boot (a fresh overlay on dom0.qcow2), wait for ssh
#        images/xen-host.sh ssh [CMD...] run CMD in dom0 as root (a shell without CMD)
#        images/xen-host.sh scp SRC... DST  copy to dom0 (remote paths as :PATH)
#        images/xen-host.sh console [N]  the last N lines of the serial console (Xen + dom0)
#        images/xen-host.sh status       running or not
#        images/xen-host.sh stop         stop QEMU, remove the namespace and the overlay
# Environment (defaults in brackets):
#   PLAB_XENHOST_DIR      the image [/var/cache/plab/images/xen-host]
#   PLAB_XENHOST_RUN      overlay, console log, pid file [/var/tmp/plab-xenhost]
#   PLAB_XENHOST_NETNS    the namespace [plab-xenhost]
#   PLAB_XENHOST_PORT     dom0's ssh port on the namespace's 127.0.0.1 [2222]
#   PLAB_XENHOST_MEM      QEMU's memory in MiB, Xen's whole machine [3072]
#   PLAB_XENHOST_DOM0_MEM dom0's memory, NNNM or NG (the rest is for guests) [768M];
#                         at least 384M, and at least 256 MiB must be left for guests
#   PLAB_XENHOST_CPUS     virtual CPUs (dom0 gets all) [2]
#   PLAB_XENHOST_CPU      QEMU's CPU model [qemu64,+npt]
#   PLAB_XENHOST_SHARES   9p shares, space-separated TAG=DIR or TAG=DIR:ro; dom0 mounts each
#                         at /mnt/TAG (e.g. "plab=/work/main/target/debug:ro")
#   PLAB_XENHOST_KEY      the key given to build-xen-host.sh (FILE.pub) [the image's id_ed25519]
#   PLAB_XENHOST_TIMEOUT  seconds to wait for ssh [600]
set -euo pipefail
img=${PLAB_XENHOST_DIR:-/var/cache/plab/images/xen-host}
run=${PLAB_XENHOST_RUN:-/var/tmp/plab-xenhost}
ns=${PLAB_XENHOST_NETNS:-plab-xenhost}
port=${PLAB_XENHOST_PORT:-2222}
mem=${PLAB_XENHOST_MEM:-3072}
dom0_mem=${PLAB_XENHOST_DOM0_MEM:-768M}
cpus=${PLAB_XENHOST_CPUS:-2}
cpu=${PLAB_XENHOST_CPU:-qemu64,+npt}
timeout=${PLAB_XENHOST_TIMEOUT:-600}
key=${PLAB_XENHOST_KEY:-$img/id_ed25519}
key=${key%.pub}
ssh_opts=(-i "$key" -o HostKeyAlias=plab-xenhost -o UserKnownHostsFile="$img/known_hosts"
  -o StrictHostKeyChecking=yes -o BatchMode=yes -o ConnectTimeout=5 -o LogLevel=ERROR)

# dom0 runs xenstored, xenconsoled, libvirtd, sshd, the node manager and one
# qemu-system-xen per guest (its disk back end); below this it swaps or kills them.
check_mem() {
  dom0_min_mb=384
  case "$dom0_mem" in
    *[0-9]M) dom0_mb=${dom0_mem%M} ;;
    *[0-9]G) dom0_mb=$(( ${dom0_mem%G} * 1024 )) ;;
    *) dom0_mb= ;;
  esac
  case "$dom0_mb" in
    ''|*[!0-9]*) echo "xen host: PLAB_XENHOST_DOM0_MEM=$dom0_mem: give dom0's memory as NNNM or NG (e.g. 768M)" >&2; exit 2 ;;
  esac
  case "$mem" in
    ''|*[!0-9]*) echo "xen host: PLAB_XENHOST_MEM=$mem: give the machine's memory in MiB (e.g. 3072)" >&2; exit 2 ;;
  esac
  if [ "$dom0_mb" -lt "$dom0_min_mb" ]; then
    echo "xen host: PLAB_XENHOST_DOM0_MEM=$dom0_mem is too little: dom0 runs xenstored, libvirtd, sshd, the node manager and a qemu-system-xen per guest; give it at least ${dom0_min_mb}M" >&2
    exit 2
  fi
  if [ $(( mem - dom0_mb )) -lt 256 ]; then
    echo "xen host: PLAB_XENHOST_DOM0_MEM=$dom0_mem leaves $(( mem - dom0_mb )) MiB of PLAB_XENHOST_MEM=$mem for Xen and its guests; leave at least 256 (raise PLAB_XENHOST_MEM)" >&2
    exit 2
  fi
}

running() { [ -f "$run/qemu.pid" ] && kill -0 "$(cat "$run/qemu.pid")" 2>/dev/null; }
in_ns() { ip netns exec "$ns" "$@"; }
dom0_ssh() { in_ns ssh "${ssh_opts[@]}" -p "$port" root@127.0.0.1 "$@"; }

start() {
  check_mem
  if running; then echo "xen host: already running (pid $(cat "$run/qemu.pid"))" >&2; return 0; fi
  for f in xen.bin vmlinuz initrd.img dom0.qcow2 known_hosts; do
    [ -f "$img/$f" ] || { echo "xen host: $img/$f missing: run images/build-xen-host.sh" >&2; exit 1; }
  done
  mkdir -p "$run"
  rm -f "$run/console.log" "$run/qemu.pid"
  qemu-img create -q -f qcow2 -b "$img/dom0.qcow2" -F qcow2 "$run/dom0.qcow2"
  ip netns list | grep -qx "$ns" || ip netns add "$ns"
  ip -n "$ns" link set lo up
  local shares=() s tag dir ro
  for s in ${PLAB_XENHOST_SHARES:-}; do
    tag=${s%%=*}; dir=${s#*=}; ro=
    case "$dir" in *:ro) dir=${dir%:ro}; ro=,readonly=on ;; esac
    [ -d "$dir" ] || { echo "xen host: share $tag: no directory $dir" >&2; exit 1; }
    shares+=(-virtfs "local,path=$dir,mount_tag=$tag,security_model=none$ro")
  done
  # Xen: its console on the serial port (the log), dom0's memory fixed (no ballooning).
  # The multiboot modules (-initrd, comma-separated, no commas inside): dom0's kernel with
  # its command line, then its initramfs.
  echo "xen host: booting Xen + dom0 (QEMU TCG, -cpu $cpu, -m $mem, dom0_mem=$dom0_mem)" >&2
  local t0; t0=$(date +%s)
  in_ns nice -n 15 qemu-system-x86_64 -name plab-xenhost -accel tcg -cpu "$cpu" -m "$mem" -smp "$cpus" \
    -nodefaults -display none -no-reboot -daemonize -pidfile "$run/qemu.pid" \
    -serial "file:$run/console.log" -monitor "unix:$run/monitor.sock,server=on,wait=off" \
    -kernel "$img/xen.bin" \
    -append "console=com1 com1=115200,8n1 dom0_mem=$dom0_mem,max:$dom0_mem dom0_max_vcpus=$cpus loglvl=all guest_loglvl=all" \
    -initrd "$img/vmlinuz console=hvc0,$img/initrd.img" \
    -drive "file=$run/dom0.qcow2,if=virtio,format=qcow2,cache=unsafe,discard=unmap" \
    -netdev "user,id=net0,hostfwd=tcp:127.0.0.1:$port-:22" -device virtio-net-pci,netdev=net0 \
    -device virtio-rng-pci "${shares[@]}"
  local last=0 now
  while :; do
    now=$(( $(date +%s) - t0 ))
    if ! running; then
      echo "xen host: QEMU exited; the console's end:" >&2; tail -n 30 "$run/console.log" >&2; exit 1
    fi
    if grep -q 'plab-xenhost-init: sshd listening' "$run/console.log" 2>/dev/null \
       && dom0_ssh true 2>/dev/null; then
      echo "xen host: dom0 up after $now s; images/xen-host.sh ssh CMD..." >&2; return 0
    fi
    if [ "$now" -ge "$timeout" ]; then
      echo "xen host: no ssh after $timeout s; the console's end:" >&2; tail -n 30 "$run/console.log" >&2; exit 1
    fi
    if [ $(( now - last )) -ge 10 ]; then
      last=$now
      echo "xen host: $now s: $(tail -c 2000 "$run/console.log" 2>/dev/null | tr -d '\r' | grep -v '^\s*$' | tail -n1 | cut -c1-100)" >&2
    fi
    sleep 1
  done
}

stop() {
  if running; then
    local pid; pid=$(cat "$run/qemu.pid")
    dom0_ssh -o ConnectTimeout=3 sync 2>/dev/null || true
    kill -TERM "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    echo "xen host: stopped" >&2
  fi
  ! ip netns list | grep -qx "$ns" || ip netns del "$ns"
  rm -f "$run/qemu.pid" "$run/dom0.qcow2" "$run/monitor.sock"
}

cmd=${1:-}; [ $# -gt 0 ] && shift
case "$cmd" in
  start) start ;;
  stop) stop ;;
  ssh) running || { echo "xen host: not running" >&2; exit 1; }; dom0_ssh "$@" ;;
  scp) running || { echo "xen host: not running" >&2; exit 1; }
       args=(); for a in "$@"; do case "$a" in :*) args+=("root@127.0.0.1$a") ;; *) args+=("$a") ;; esac; done
       in_ns scp "${ssh_opts[@]}" -P "$port" "${args[@]}" ;;
  console) tail -n "${1:-50}" "$run/console.log" ;;
  status) if running; then echo "running (pid $(cat "$run/qemu.pid"))"; else echo "stopped"; exit 1; fi ;;
  *) sed -n '/^# Usage:/,/^#.*stop  /p' "$0" >&2; exit 2 ;;
esac
