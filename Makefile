# plab: the two commands in the README, plus helpers.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: demo test lint setup image cloud-image build bench clean-demo xen-host xen-host-stop xen-hvm

## make demo: a whole small testbed on this machine (an authority and three nodes, each with
## its node manager, owner pools and slice creation service); `make demo ARGS="--keep"`
## keeps it up to try, `ARGS="--nodes 5 --vm-type linux-kvm-x86"` changes it.
demo: setup
	$(CARGO) build --release --bins
	target/release/plab-demo $(ARGS)

## make test: the lint gates, then unit, property and root integration tests (real runc,
## libvirt/QEMU, OpenSSH; the stock cloud image test boots images/build-cloud.sh's image).
test: setup lint
	bash images/build-cloud.sh
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --no-fail-fast

## make lint: formatting, clippy with warnings as errors, shellcheck on every shell script.
SHELL_SCRIPTS := $(wildcard images/*.sh ci/*.sh) .ci/run
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	shellcheck $(SHELL_SCRIPTS)

## make bench: NM vs raw runc lifecycle, socket throughput, memory; KVM guests through NM
## vs virsh vs raw qemu; authority polling
## and ticket rates, SQLite against PostgreSQL.
bench: setup
	$(CARGO) build --release --bins
	target/release/plab-bench
	target/release/plab-bench-kvm
	target/release/plab-bench-authority
	target/release/plab-bench-testbed
	target/release/plab-bench-net
	target/release/plab-bench-xen

setup:
	bash ci/setup.sh

image:
	bash images/build-rootfs.sh
	bash images/build-guest.sh

## make xen-host: an emulated Xen host to try linux-xen-x86 by hand (Xen 4.17 and a PV dom0
## under QEMU TCG, in network namespace plab-xenhost; docs/hypervisors.md): the build and
## the guest image shared into dom0 at /mnt/plab and /mnt/images. Then
## `bash images/xen-host.sh ssh` for a root shell in dom0; `make xen-host-stop` ends it.
xen-host: setup
	$(CARGO) build --bins
	bash images/build-guest.sh
	bash images/build-xen-host.sh
	PLAB_XENHOST_SHARES="plab=$(CURDIR)/target/debug:ro images=/var/cache/plab/images/guest-bookworm:ro" \
	  bash images/xen-host.sh start

xen-host-stop:
	bash images/xen-host.sh stop

## make xen-hvm: the stock cloud image as an HVM guest through the node manager on the
## emulated Xen host (about 10 minutes; not in `make test`: Xen under TCG's SVM emulation
## is not stable with HVM guests, see tests/src/bin/plab-xen-hvm.rs).
xen-hvm: setup
	$(CARGO) build --bins
	bash images/build-cloud.sh
	target/debug/plab-xen-hvm

## make cloud-image: a stock-style Debian cloud image (GRUB, cloud-init) for guest_image.
cloud-image:
	bash images/build-cloud.sh

build:
	$(CARGO) build --workspace --bins
