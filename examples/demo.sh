#!/usr/bin/env bash
# make demo: one node of a testbed on this machine. The node's networking lives in a
# network namespace this script creates, so no demo traffic leaves the machine.
#   1. start plab-nm (owner: root; slice plc.demo: the unprivileged uid 65534)
#   2. the owner script creates a pool for plc.demo
#   3. the slice, as uid 65534, finds its rcap, reads the RSpec, splits a VServerSlice
#      off it (with a freshly generated ssh key and a bootscript) and binds it
#   4. log in with OpenSSH, show the bootscript's output and the limits in force
#   5. an authority (SA + MA): register an org, a site and this node; plab-boot boots the
#      node (install, then boot with an MA-signed node certificate); the NM certifies the
#      slice's service key with it and the authority accepts that chain; a slice ticket
#   6. tear everything down
set -euo pipefail
bin=${1:-target/release}
bin=$(cd "$bin" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
ns=plab-demo
run=/run/plab-demo
state=$(mktemp -d /var/tmp/plab-demo.XXXXXX)
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
ms() { date +%s%3N; }
nm_pid=
auth_pid=
cleanup() {
  step "teardown"
  if [ -S "$run/nm.sock" ]; then "$bin/plab" nm --socket "$run/nm.sock" destroy plc_demo 2>/dev/null || true; fi
  for pid in $nm_pid $auth_pid; do
    if kill "$pid" 2>/dev/null; then wait "$pid" 2>/dev/null || true; fi
  done
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$state" "$run"
  echo "removed the VM, the node manager, namespace $ns and $state"
}
trap cleanup EXIT

step "node: network namespace $ns, node manager state in $state"
ip netns del "$ns" 2>/dev/null || true
ip netns add "$ns"
ip -n "$ns" link set lo up
mkdir -p "$run" && chmod 755 "$run"
cat > "$state/nm.toml" <<CONF
state_dir = "$state/nm"
socket = "$run/nm.sock"
node_netns = "$ns"
vm_prefix = "10.213.0.0/24"
node_cert = "$state/node/node-cert.pem"
node_key = "$state/node/node.key"
[slice_uids]
65534 = "plc.demo"
CONF
"$bin/plab-nm" serve --config "$state/nm.toml" 2> "$state/nm.log" &
nm_pid=$!
for _ in $(seq 100); do [ -S "$run/nm.sock" ] && break; sleep 0.05; done
[ -S "$run/nm.sock" ] || { cat "$state/nm.log"; exit 1; }
export PLAB_NM_SOCKET=$run/nm.sock
"$bin/plab" nm info

step "owner (root) runs the owner script: a pool for slice plc.demo"
python3 "$here/owner-script.py" "$run/nm.sock" plc.demo "$here/rspec/pool.xml"

step "slice plc.demo (uid 65534) retrieves its rcap and the pool's RSpec"
as_slice() { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }
# A copy of plab the slice's uid may run (the checkout may be where it cannot enter).
install -m 755 "$bin/plab" "$state/plab"
chmod 711 "$state"
rcap=$(as_slice "$state/plab" nm get-rcap | head -n1)
echo "rcap: $rcap"
as_slice "$state/plab" nm get-rspec "$rcap"

step "slice splits a VServerSlice off the pool and binds it"
ssh-keygen -q -t ed25519 -N '' -C demo@plab -f "$state/id_ed25519"
cat > "$state/vm.xml" <<XML
<VServerSlice xmlns="urn:plab:rspec:1" name="plc.demo">
  <resources cpu_share="2" disk_quota="0.5" mem_limit="256"/>
  <key>$(cat "$state/id_ed25519.pub")</key>
  <bootscript>echo "bootscript: hello from \$(hostname), started \$(date -u +%T)"</bootscript>
</VServerSlice>
XML
chmod 644 "$state/vm.xml"; chmod 711 "$state"
sub=$(as_slice "$state/plab" nm split-pool "$rcap" "$state/vm.xml")
t0=$(ms)
as_slice "$state/plab" nm bind "$sub" plc.demo
t1=$(ms)
addr=$("$bin/plab" --json nm status plc_demo | python3 -c 'import json,sys; print(json.load(sys.stdin)["address"])')

step "ssh into the VM with OpenSSH (from inside the node's namespace)"
sshc=(ip netns exec "$ns" ssh -i "$state/id_ed25519" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
      -o BatchMode=yes -o ConnectTimeout=3 -o LogLevel=ERROR "plc_demo@$addr")
until "${sshc[@]}" true 2>/dev/null; do sleep 0.05; [ $(( $(ms) - t1 )) -lt 20000 ] || { echo "no ssh"; exit 1; }; done
t2=$(ms)
# shellcheck disable=SC2016 # expanded by the VM's shell, not this one.
"${sshc[@]}" 'echo "logged in as $(id -un) on $(hostname)"; df -h / | tail -1; grep MemTotal /proc/meminfo'

step "the bootscript's output, kept by the node manager"
"$bin/plab" nm log plc_demo

step "limits in force (read back from the cgroup and the disk)"
"$bin/plab" nm status plc_demo | grep -E 'state|details|resources\.(cpu|mem|disk)'
echo "writing past the 0.5 GB disk quota:"
# shellcheck disable=SC2016 # expanded by the VM's shell, not this one.
"${sshc[@]}" 'dd if=/dev/zero of=$HOME/fill bs=1M count=1024 2>&1 | grep -i "no space" ; rm -f $HOME/fill' || true

step "VMs on this node"
"$bin/plab" nm ls

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
step "authority: SA + MA on https://127.0.0.1:$port (state in $state/authority)"
"$bin/plab-authority" --state-dir "$state/authority" init --url "https://127.0.0.1:$port" >/dev/null
PLAB_LOG=warn "$bin/plab-authority" --state-dir "$state/authority" serve --listen "127.0.0.1:$port" &
auth_pid=$!
export PLAB_AUTHORITY_CONFIG=$state/authority/operator/plab.toml
for _ in $(seq 100); do "$bin/plab" sa get-orgs >/dev/null 2>&1 && break; sleep 0.05; done
"$bin/plab" sa add-org '{"name": "demo", "authority": "plc.demo", "address": "this machine"}' >/dev/null
"$bin/plab" ma add-site '{"org": "demo", "name": "demo-site", "subnets": "127.0.0.0/8"}' >/dev/null
node_id=$("$bin/plab" --json ma add-node '{"site": "demo-site", "hostname": "node1.demo.test", "ip": "127.0.0.1"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["node_id"])')
"$bin/plab" --json ma get-node-config "$node_id" | python3 -c 'import json,sys; d=json.load(sys.stdin); open(sys.argv[1],"w").write(d["plnode"]); open(sys.argv[2],"w").write(d["root"])' "$state/plnode.txt" "$state/root.pem"
echo "registered node $node_id; its plnode.txt:"; sed 's/NODE_KEY = .*/NODE_KEY = "(secret)"/' "$state/plnode.txt"

step "the node boots with plab-boot (HMAC with the node key, from its registered address)"
"$bin/plab-boot" --plnode "$state/plnode.txt" --server "https://127.0.0.1:$port" --root "$state/root.pem" --state-dir "$state/node" run
"$bin/plab" ma get-nodes

step "the NM certifies the slice's service key with the node certificate (section 5.5)"
"$bin/plab" keygen "$state/svc" >/dev/null
python3 - "$state/nm/sockets/plc_demo/nm.sock" "$state/svc/public.pem" "$state/svc/chain.pem" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile("rw")
f.write(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "SignCertificate", "params": [open(sys.argv[2]).read()]}) + "\n"); f.flush()
r = json.loads(f.readline())["result"]; open(sys.argv[3], "w").write(r["certificate"])
print("the VM's own NM socket issued a certificate for", r["identity"])
PY
echo "the authority accepts it and seals a session key to it:"
"$bin/plab" sa authenticate-certificate "@$state/svc/chain.pem" | grep -E 'identity|expires'

step "a slice at the authority, and a ticket anyone with the SA certificate can verify"
"$bin/plab" sa create-slice plc.demo.web >/dev/null
"$bin/plab" sa add-slice-node plc.demo.web "[$node_id]" >/dev/null
"$bin/plab" sa set-slice-attr plc.demo.web bootscript 'echo web' >/dev/null
"$bin/plab" sa start-slice plc.demo.web
"$bin/plab" --json sa get-slice-ticket plc.demo.web > "$state/ticket.json"
"$bin/plab" verify-ticket "$state/ticket.json" --sa-cert "$state/authority/ca/sa.pem"

step "timings"
echo "Bind (create + start the container VM): $((t1 - t0)) ms"
echo "Bind to first successful ssh login:      $((t2 - t0)) ms"
