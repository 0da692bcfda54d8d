# The commands a newcomer needs. `make serve` and `make test` work on a fresh
# machine with Rust installed: they add the wasm32-wasip2 target if it is missing.

WASM_DIR := target/wasm32-wasip2/release
GUESTS   := -p guest-model -p slow-model -p fault-model -p echo-model -p batch-model -p big-model -p stuck-model -p badname-model \
            -p contract-0-1-model
TESTED   := -p wasm-host -p guest-model -p wasm-host-guest
# Guests are built with fat LTO and one codegen unit, so the SDK's allocator
# and bindings are inlined into the model: the echo model's call took 13 %
# fewer instructions (8,735 to 7,594). Set here rather than in
# [profile.release], which the host shares and would take minutes longer to link.
GUEST_BUILD := CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
               cargo build --release --target wasm32-wasip2
INSTANCES ?= 8
BIND     ?= 127.0.0.1:8000

.PHONY: serve test tools guests model host onnx-runner setup lint bench conformance networks clean \
        arm-test \
        arm-tools

## Build the example model and the host, then serve the model with 8 instances.
serve: guests host
	target/release/wasm-host --instances $(INSTANCES) --bind $(BIND) $(WASM_DIR)/guest_model.wasm

## Build everything and run every test (what CI runs): the Rust suites, then
## the official Triton client against the real server (tests/python).
## `cargo test` also builds target/release/wasm-host (the integration tests run
## it), and the Python tests use that binary: a `cargo build` here would compile
## the host a second time, with features unified differently (3 minutes in CI).
test: guests onnx-runner tools
	rm -rf target/test-scratch
	cargo test --release $(TESTED)
	bash tests/python/run.sh
	$(MAKE) arm-test

## The host on 64-bit ARM Linux: cross-built for aarch64, then the portable
## tests (the 200 digits rows bit for bit against the x86 host, trap, deadline,
## memory cap, reload, artifacts from `compile --target`) run against it under
## qemu-aarch64, with the guests built above: the same .wasm files.
ARM_TARGET := aarch64-unknown-linux-gnu
ARM_RUNNER ?= $(or $(CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER),qemu-aarch64 -L /usr/aarch64-linux-gnu)

arm-test: guests arm-tools
	cargo build --release -p wasm-host --target $(ARM_TARGET)
	WASM_HOST_BIN=$(CURDIR)/target/$(ARM_TARGET)/release/wasm-host WASM_HOST_ARCH=aarch64 \
	WASM_HOST_RUNNER="$(ARM_RUNNER)" cargo test --release $(TESTED) --test portable

## The cross toolchain and qemu (binfmt_misc is not needed: tests call qemu).
arm-tools:
	@rustup target list --installed | grep -qx $(ARM_TARGET) || rustup target add $(ARM_TARGET)
	@command -v aarch64-linux-gnu-gcc >/dev/null && command -v qemu-aarch64 >/dev/null || { \
	  echo "installing the aarch64 cross linker and qemu-user (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user >/dev/null; }

## Test tools a fresh machine lacks, from Debian: promtool (prometheus), nginx (the
## fleet test's balancer), chromium (the status page test's browser) and curl
## (deploy/rolling-upgrade.sh).
TOOL_PACKAGES = promtool:prometheus nginx:nginx chromium:chromium curl:curl
tools:
	@missing=""; for tool in $(TOOL_PACKAGES); do \
	  command -v $${tool%%:*} >/dev/null || [ -x /usr/sbin/$${tool%%:*} ] || missing="$$missing $${tool#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing (apt-get install)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

## The model components: the digits classifier and the test fixtures.
guests: setup
	$(GUEST_BUILD) $(GUESTS)

model: setup
	$(GUEST_BUILD) -p guest-model

host:
	cargo build --release -p wasm-host

## The ONNX runner (tract for wasm32-wasip2) that `wasm-host pack` pre-initialises,
## copied beside the host binary, where wasm-host finds it.
onnx-runner: setup
	cargo build --release --target wasm32-wasip2 -p onnx-runner
	mkdir -p target/release
	cp $(WASM_DIR)/onnx_runner.wasm target/release/onnx-runner.wasm

setup:
	@rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

## The benchmarks: wasm-host against a native server and gunicorn, density,
## start-up and micro-benchmarks; prints the table, writes docs/benchmarks.md.
## Knobs (BENCH_SECONDS=1 for a smoke run, ...): see bench/run.sh.
bench: guests onnx-runner host
	bench/run.sh

## The ONNX backend operator tests (every case onnxruntime passes) packed, served
## and asked through the real host; writes the table to docs/onnx-conformance.md.
## Takes 20 minutes or more: one compile per opset group. Uses tests/python/.venv.
conformance: onnx-runner host
	tests/python/.venv/bin/python tests/python/onnx_conformance.py --all \
	  --write docs/onnx-conformance.md

## The whole networks of examples/onnx/make_networks.py (ResNet-50, Inception v1,
## a BERT-style encoder) at their real size, served and checked against
## onnxruntime: what CI checks at a small size. Takes 5-10 minutes.
networks: onnx-runner host
	WASM_HOST_NETWORK_SIZE=real bash tests/python/run.sh -k "test_networks"

## Formatting and lints, as reviewers expect them.
lint: setup
	cargo fmt --all -- --check
	cargo clippy --release -p wasm-host -p guest-model -p wasm-host-guest --all-targets -- -D warnings
	cargo clippy --release --target wasm32-wasip2 $(GUESTS) -p onnx-runner -p wasm-host-guest -- -D warnings

clean:
	cargo clean
