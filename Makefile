# The commands a newcomer needs. `make serve` and `make test` work on a fresh
# machine with Rust installed: they add the wasm32-wasip2 target if it is missing.

WASM_DIR := target/wasm32-wasip2/release
GUESTS   := -p guest-model -p slow-model -p fault-model -p echo-model -p big-model -p stuck-model -p badname-model
INSTANCES ?= 8
BIND     ?= 127.0.0.1:8000

.PHONY: serve test tools guests model host onnx-runner setup lint bench clean

## Build the example model and the host, then serve the model with 8 instances.
serve: guests host
	target/release/wasm-host --instances $(INSTANCES) --bind $(BIND) $(WASM_DIR)/guest_model.wasm

## Build everything and run every test (what CI runs): the Rust suites, then
## the official Triton client against the real server (tests/python).
test: guests onnx-runner tools
	rm -rf target/test-scratch
	cargo test --release -p wasm-host -p guest-model -p wasm-host-guest
	cargo build --release -p wasm-host -p native-ceiling
	bash tests/python/run.sh

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
	cargo build --release --target wasm32-wasip2 $(GUESTS)

model: setup
	cargo build --release --target wasm32-wasip2 -p guest-model

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

## Formatting and lints, as reviewers expect them.
lint: setup
	cargo fmt --all -- --check
	cargo clippy --release -p wasm-host -p guest-model -p wasm-host-guest --all-targets -- -D warnings
	cargo clippy --release --target wasm32-wasip2 $(GUESTS) -p onnx-runner -p wasm-host-guest -- -D warnings

clean:
	cargo clean
