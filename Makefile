# taskbroker: the two set-up commands are `make run` and `make test` (see README.md).
SHELL := /bin/bash
# A build cache outside the clone keeps repeated runs fast; any fresh directory works too.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/taskbroker/target
CARGO ?= cargo
NODES ?= 3

.PHONY: help build run test verify fmt clippy doc nextest sim bench-compile clean-target

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-16s %s\n", $$1, $$2}'

build: ## Build the release binary (target/release/taskbroker under CARGO_TARGET_DIR)
	$(CARGO) build --release -p taskbroker-node --bin taskbroker

run: build ## Build and start a local cluster of NODES nodes (default 3) on loopback; Ctrl-C stops it
	$(CARGO_TARGET_DIR)/release/taskbroker local --nodes $(NODES)

test: ## Everything CI checks: fmt, clippy, docs, all tests (incl. doctests), benches compiled
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps
	$(CARGO) nextest run --workspace --no-fail-fast
	$(CARGO) test --workspace --doc
	$(CARGO) bench --workspace --no-run

clean-target: ## Remove the build cache
	rm -rf $(CARGO_TARGET_DIR)
