#!/usr/bin/env python3
"""plab site-admin: the node owner's script (sections 3 and 4.9 of the PlanetLab
architecture overview). It tells the node manager, over its local socket and with nothing
but the Python standard library, what the owner wants on this node:

- pools for slice authorities (for example `plc` and `plc.japan`), each given to the slice
  creation service the owner entrusts with it, and carrying the authority's URL and
  certificate, so that the service creates that authority's slices here;
- pools for chosen slices or services directly;
- a blacklist of slices and whole authorities that may not run here, whatever any
  authority says: their VMs are removed and no service can make them again.

Usage:
  site-admin.py [--socket PATH] apply CONFIG.toml   make the node match the file (idempotent)
  site-admin.py [--socket PATH] blacklist NAME      bar a slice or an authority now
  site-admin.py [--socket PATH] unblacklist NAME    lift a bar
  site-admin.py [--socket PATH] status              pools, blacklist and VMs

Run it as root (or a uid in the node manager's owner_uids): the node manager knows the
owner by the kernel's peer credentials, not by anything the script says. The file format
is in docs/owner.md; `apply` prints what it changed.
"""
import argparse
import json
import socket
import sys
import tomllib
import xml.etree.ElementTree as ET

NS = "urn:plab:rspec:1"
RESOURCES = ("cpu_share", "disk_quota", "mem_limit", "base_rate", "burst_rate", "sustained_rate")


class NodeManager:
    """The node manager's local API: JSON-RPC 2.0, one JSON object per line."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect(path)
        except OSError as e:
            sys.exit(f"cannot reach the node manager at {path}: {e}")
        self.file = self.sock.makefile("rw", encoding="utf-8")
        self.next_id = 1

    def call(self, method, **params):
        request = {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params}
        self.next_id += 1
        self.file.write(json.dumps(request) + "\n")
        self.file.flush()
        answer = json.loads(self.file.readline())
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']['message']}")
        return answer["result"]


def resources_element(parent, resources, where):
    unknown = set(resources) - set(RESOURCES)
    if unknown:
        sys.exit(f"{where}: unknown resource attribute(s) {', '.join(sorted(unknown))} (known: {', '.join(RESOURCES)})")
    ET.SubElement(parent, "resources", {k: str(v) for k, v in resources.items()})


def authority_pool_xml(a, where):
    """The PoolRSpec for an authority's pool (section 4.9): resources, the authority's name,
    and its SSL certificate."""
    for field in ("name", "url", "certificate", "service", "resources"):
        if field not in a:
            sys.exit(f"{where}: missing {field}")
    try:
        with open(a["certificate"], encoding="utf-8") as f:
            pem = f.read()
    except OSError as e:
        sys.exit(f"{where}: certificate: {e}")
    if "BEGIN CERTIFICATE" not in pem:
        sys.exit(f"{where}: certificate: {a['certificate']} holds no PEM certificate")
    attrs = {"xmlns": NS}
    if "vm_type" in a:
        attrs["vm_type"] = a["vm_type"]
    pool = ET.Element("PoolRSpec", attrs)
    resources_element(pool, a["resources"], where)
    sa = ET.SubElement(pool, "slice_authority", {"name": a["name"], "url": a["url"]})
    ET.SubElement(sa, "certificate").text = pem.strip()
    return ET.tostring(pool, encoding="unicode")


def slice_pool_xml(s, where):
    for field in ("name", "resources"):
        if field not in s:
            sys.exit(f"{where}: missing {field}")
    attrs = {"xmlns": NS}
    if "vm_type" in s:
        attrs["vm_type"] = s["vm_type"]
    pool = ET.Element("PoolRSpec", attrs)
    resources_element(pool, s["resources"], where)
    return ET.tostring(pool, encoding="unicode")


def authorities_of(xml):
    """(name, url) of each slice_authority a pool's RSpec names."""
    root = ET.fromstring(xml)
    return {(e.get("name"), e.get("url")) for e in root.iter(f"{{{NS}}}slice_authority")}


def apply(nm, path):
    try:
        with open(path, "rb") as f:
            cfg = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        sys.exit(f"{path}: {e}")
    unknown = set(cfg) - {"authority", "slice", "blacklist"}
    if unknown:
        sys.exit(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
    changed = 0
    for i, a in enumerate(cfg.get("authority", [])):
        where = f"{path}: authority[{i}]"
        xml = authority_pool_xml(a, where)
        held = nm.call("GetRcap", slice_name=a["service"])["rcaps"]
        have = any((a["name"], a["url"]) in authorities_of(nm.call("GetRSpec", rcap=r)["rspec"]) for r in held)
        if have:
            print(f"authority {a['name']}: {a['service']} already holds its pool")
            continue
        rcap = nm.call("CreatePool", rspec=xml, slice_name=a["service"])["rcap"]
        print(f"authority {a['name']}: pool {rcap[:8]}... given to {a['service']}")
        changed += 1
    for i, s in enumerate(cfg.get("slice", [])):
        where = f"{path}: slice[{i}]"
        xml = slice_pool_xml(s, where)
        if nm.call("GetRcap", slice_name=s["name"])["rcaps"]:
            print(f"slice {s['name']}: already has a pool")
            continue
        rcap = nm.call("CreatePool", rspec=xml, slice_name=s["name"])["rcap"]
        print(f"slice {s['name']}: pool {rcap[:8]}...")
        changed += 1
    wanted = set(cfg.get("blacklist", []))
    now = set(nm.call("GetBlacklist")["blacklist"])
    for name in sorted(wanted - now):
        r = nm.call("Blacklist", name=name)
        print(f"blacklisted {name}" + (f"; removed {', '.join(r['destroyed'])}" if r["destroyed"] else ""))
        changed += 1
    for name in sorted(now - wanted):
        nm.call("Unblacklist", name=name)
        print(f"no longer blacklisted: {name}")
        changed += 1
    print(f"{changed} change(s)")


def status(nm):
    pools = nm.call("ListPools")["pools"]
    print("pools:")
    for p in pools:
        parent = f" from {p['parent']}" if p["parent"] else ""
        bound = f" bound to {p['vm']}" if p["vm"] else ""
        print(f"  {p['id']:>4} {p['slice']:<32} {p['class']}{parent}{bound}")
    print("blacklist:", ", ".join(nm.call("GetBlacklist")["blacklist"]) or "(none)")
    print("VMs:")
    for v in nm.call("ListVMs")["vms"]:
        print(f"  {v['vm']:<32} {v.get('state', '?'):<8} {v['ssh_command']}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--socket", default="/run/plab/nm.sock", help="the node manager's socket")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("apply").add_argument("config")
    sub.add_parser("blacklist").add_argument("name")
    sub.add_parser("unblacklist").add_argument("name")
    sub.add_parser("status")
    args = p.parse_args()
    nm = NodeManager(args.socket)
    try:
        if args.cmd == "apply":
            apply(nm, args.config)
        elif args.cmd == "blacklist":
            r = nm.call("Blacklist", name=args.name)
            print(f"blacklisted {args.name}" + (f"; removed {', '.join(r['destroyed'])}" if r["destroyed"] else ""))
        elif args.cmd == "unblacklist":
            nm.call("Unblacklist", name=args.name)
            print(f"no longer blacklisted: {args.name}")
        else:
            status(nm)
    except RuntimeError as e:
        sys.exit(str(e))


if __name__ == "__main__":
    main()
