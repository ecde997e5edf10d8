"""The kernel ELF inside a Debian bzImage: kernel-elf.py BZIMAGE OUT.

The bzImage carries the kernel as an xz stream; its payload is an ELF that Xen loads as a
PV or PVH kernel (dom0 or guest), and QEMU boots directly, without decompressing it at
every boot (seconds under TCG). Used by build-guest.sh and build-xen-host.sh.
"""
import lzma
import sys

data = open(sys.argv[1], "rb").read()
start = data.find(b"\xfd7zXZ\x00")
elf = lzma.LZMADecompressor().decompress(data[start:]) if start >= 0 else b""
if not elf.startswith(b"\x7fELF"):
    sys.exit(f"{sys.argv[1]}: could not extract the kernel ELF from the bzImage")
open(sys.argv[2], "wb").write(elf)
