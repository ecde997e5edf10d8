# plab: the two commands in the README, plus helpers.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: demo test lint setup image cloud-image build bench clean-demo

## make demo: a node manager, an owner, a slice and a container VM on this machine.
demo: setup
	$(CARGO) build --release --bins
	bash examples/demo.sh target/release

## make test: the lint gates, then unit, property and root integration tests (real runc,
## libvirt/QEMU, OpenSSH; the stock cloud image test boots images/build-cloud.sh's image).
test: setup lint
	bash images/build-cloud.sh
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --no-fail-fast

## make lint: formatting, clippy with warnings as errors, shellcheck on every shell script.
SHELL_SCRIPTS := $(wildcard images/*.sh ci/*.sh examples/*.sh) .ci/run
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

setup:
	bash ci/setup.sh

image:
	bash images/build-rootfs.sh
	bash images/build-guest.sh

## make cloud-image: a stock-style Debian cloud image (GRUB, cloud-init) for guest_image.
cloud-image:
	bash images/build-cloud.sh

build:
	$(CARGO) build --workspace --bins
