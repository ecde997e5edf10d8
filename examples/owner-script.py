#!/usr/bin/env python3
"""Example owner script (section 4.9): the node owner's wishes, expressed to the node
manager over its local socket with nothing but the Python standard library.

Usage: owner-script.py SOCKET SLICE RSPEC_FILE [SLICE RSPEC_FILE ...]

For each (slice, RSpec) pair it creates a root pool unless the slice already has one,
and prints "slice rcap". Run it as root (or a uid in the node manager's owner_uids):
the node manager identifies the owner by the kernel's peer credentials.
"""
import json
import socket
import sys


class NodeManager:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
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


def main(argv):
    if len(argv) < 4 or len(argv) % 2:
        sys.exit(__doc__)
    nm = NodeManager(argv[1])
    for slice_name, rspec_file in zip(argv[2::2], argv[3::2]):
        existing = nm.call("GetRcap", slice_name=slice_name)["rcaps"]
        if existing:
            print(slice_name, existing[0])
            continue
        with open(rspec_file, encoding="utf-8") as f:
            rcap = nm.call("CreatePool", rspec=f.read(), slice_name=slice_name)["rcap"]
        print(slice_name, rcap)


if __name__ == "__main__":
    main(sys.argv)
