# taskbroker: the two set-up commands are `make run` and `make test` (see README.md).
SHELL := /bin/bash
# A build cache outside the clone keeps repeated runs fast; any fresh directory works too.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/taskbroker/target
CARGO ?= cargo
NODES ?= 3

.PHONY: help build run test verify fmt clippy doc nextest sim bench-compile clean-target \
	image run-dev run-cluster stop clean logs bench bench-micro rolling-restart rolling-restart-test chaos chaos-if-docker compose-check

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-16s %s\n", $$1, $$2}'

build: ## Build the release binary (target/release/taskbroker under CARGO_TARGET_DIR)
	$(CARGO) build --release -p taskbroker-node --bin taskbroker

run: build ## Build and start a local cluster of NODES nodes (default 3) on loopback; Ctrl-C stops it
	$(CARGO_TARGET_DIR)/release/taskbroker local --nodes $(NODES)

test: ## Everything CI checks: fmt, clippy, docs, all tests (incl. doctests and the headless-Chromium UI test), 200 simulation seeds, benches compiled, compose files, Docker chaos test
	@$(CARGO) nextest --version >/dev/null 2>&1 || $(CARGO) install cargo-nextest --locked
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps
	scripts/ensure-chromium.sh
	$(CARGO) nextest run --workspace --no-fail-fast
	$(CARGO) test --workspace --doc
	$(CARGO) test --release -p taskbroker-sim-tests --test cluster_sim
	$(CARGO) bench --workspace --no-run
	deploy/scripts/compose-check.sh
	$(MAKE) --no-print-directory chaos-if-docker

chaos-if-docker: # The Docker chaos test when a Docker engine answers; otherwise it says it skipped
	@if source deploy/scripts/lib.sh && docker_ok && compose_cmd >/dev/null; then \
	  $(MAKE) --no-print-directory chaos; \
	else echo "chaos: SKIP (no Docker engine or compose answers)"; fi

clean-target: ## Remove the build cache
	rm -rf $(CARGO_TARGET_DIR)

# ---- Deployment (deploy/; see deploy/README.md) ------------------------------------------------
DOCKER_COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
IMAGE ?= taskbroker:dev
# Which deployment `stop`, `clean`, `logs` and `rolling-restart` act on: dev, test or prod.
DEPLOY ?= dev
COMPOSE_FILE_dev := deploy/docker-compose.dev.yml
COMPOSE_FILE_test := deploy/docker-compose.test.yml
COMPOSE_FILE_prod := deploy/docker-compose.yml
COMPOSE = TASKBROKER_IMAGE=$(IMAGE) $(DOCKER_COMPOSE) -f $(COMPOSE_FILE_$(DEPLOY)) -p taskbroker-$(DEPLOY)

image: build ## Build the release binary and the FROM-scratch image IMAGE (default taskbroker:dev)
	IMAGE=$(IMAGE) deploy/scripts/build-image.sh $(IMAGE)

run-dev: image ## Run one node in Docker (deploy/docker-compose.dev.yml; client 7070, HTTP 8080)
	$(MAKE) --no-print-directory DEPLOY=dev compose-up

run-cluster: image ## Run the 3-node test cluster in Docker (deploy/docker-compose.test.yml)
	$(MAKE) --no-print-directory DEPLOY=test compose-up

compose-up:
	$(COMPOSE) up -d
	@echo "started deployment '$(DEPLOY)'; 'make logs DEPLOY=$(DEPLOY)', 'make stop DEPLOY=$(DEPLOY)'"

stop: ## Stop the Docker deployment DEPLOY (dev|test|prod, default dev); data volumes are kept
	$(COMPOSE) down

clean: ## Stop DEPLOY and DELETE ALL ITS DATA (every task in its volumes); asks first unless FORCE=1
	@if [ "$(FORCE)" != 1 ]; then \
	  echo "WARNING: this deletes all data of deployment '$(DEPLOY)' (docker volumes: every topic and task)."; \
	  read -r -p "Type 'yes' to continue: " ans && [ "$$ans" = yes ] || { echo aborted; exit 1; }; \
	fi
	$(COMPOSE) down -v --remove-orphans

logs: ## Follow the logs of the Docker deployment DEPLOY
	$(COMPOSE) logs -f --tail=200

bench: ## The benchmark suite: 3-node taskbroker vs NATS JetStream on loopback; writes BENCHMARKS.md
	bench/run.sh

bench-micro: ## Run the criterion micro-benchmarks (storage/BENCHMARKS.md)
	$(CARGO) bench --workspace

rolling-restart: ## Restart DEPLOY's nodes one at a time (each ready and caught up before the next)
	DOCKER_COMPOSE="$(COMPOSE)" deploy/scripts/rolling-restart.sh

rolling-restart-test: image ## Rolling restart of the test cluster under a producer: no produce may fail
	IMAGE=$(IMAGE) deploy/scripts/rolling-restart-test.sh

chaos: image ## Chaos test on Docker (kill leader, partition, restarts); SKIPs without a Docker engine
	IMAGE=$(IMAGE) deploy/chaos/run.sh

compose-check: ## Validate every compose file with `docker compose config` (SKIPs without Docker)
	deploy/scripts/compose-check.sh
