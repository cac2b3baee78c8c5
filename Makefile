# Every target bootstraps its own virtual environment (.venv) on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export CLIPPER_HOME ?= $(CURDIR)/.clipper-home

.PHONY: run test test-fast lint format clean help system-deps

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python 3.11 or newer is needed (found $$($(PYTHON) --version))"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Programs the tests need that pip cannot install: redis-server (the Redis
# config store's tests start their own) and chromium (the dashboard's browser
# test drives /usr/bin/chromium through Playwright). Installed from Debian's
# packages; apt-get update only runs when the install fails, as it is slow and
# usually unneeded.
system-deps:  ## install redis-server, chromium and openssl if missing (apt-get; sudo unless root)
	@MISSING=; \
	command -v redis-server >/dev/null 2>&1 || MISSING="$$MISSING redis-server"; \
	[ -x /usr/bin/chromium ] || MISSING="$$MISSING chromium"; \
	command -v openssl >/dev/null 2>&1 || MISSING="$$MISSING openssl"; \
	if [ -z "$$MISSING" ]; then \
		echo "redis-server found: $$(command -v redis-server); chromium found: /usr/bin/chromium"; \
	else \
		SUDO=; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
		echo "missing:$$MISSING; running: $$SUDO apt-get install -y$$MISSING"; \
		$$SUDO apt-get install -y $$MISSING || { \
			echo "install failed; running: $$SUDO apt-get update, then installing again"; \
			$$SUDO apt-get update && $$SUDO apt-get install -y $$MISSING; \
		}; \
	fi

run: $(STAMP)  ## start Clipper with the demo app 'digits' in the foreground
	$(BIN)/clipper start --demo

test: $(STAMP) system-deps  ## the whole test suite (what CI runs)
	$(BIN)/python -m pytest -q

.PHONY: docs
docs: $(STAMP)  ## build the documentation site into site/ (offline; fails on a broken link)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

test-fast: $(STAMP) system-deps  ## unit tests only, for the edit loop
	$(BIN)/python -m pytest -q -m 'not slow'

lint: $(STAMP)  ## ruff and mypy
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: $(STAMP)  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

.PHONY: bench
bench: $(STAMP)  ## batching, then the cache (~20 min; BENCH_ARGS=--quick: ~3 min, CACHE_ARGS for the cache part) -> docs/benchmarks.md
	$(BIN)/python -m bench.batching $(BENCH_ARGS)
	$(BIN)/python -m bench.cache $(if $(CACHE_ARGS),$(CACHE_ARGS),$(filter --quick --docs --no-pin,$(BENCH_ARGS)))

.PHONY: bench-cache
bench-cache: $(STAMP)  ## the prediction cache: hit path, feedback speedup (~2 min; BENCH_ARGS=--quick) -> docs/benchmarks.md
	$(BIN)/python -m bench.cache $(BENCH_ARGS)

.PHONY: bench-scaling
bench-scaling: $(STAMP)  ## throughput with 1, 2, 4 replicas, local and Ray managers (~3 min; BENCH_ARGS=--quick)
	$(BIN)/python -m bench.scaling $(BENCH_ARGS)

.PHONY: bench-selection
bench-selection: $(STAMP)  ## every policy vs the best single model: complementary models, degradation, calibration, stragglers, rollouts (~16 min; BENCH_ARGS=--quick: ~4 min) -> docs/benchmarks.md
	$(BIN)/python -m bench.selection $(BENCH_ARGS)

.PHONY: bench-peers
bench-peers: $(STAMP)  ## Clipper vs naive FastAPI, MLServer, LitServe, Ray Serve, Triton (PyTriton, CPU) and a bare ASGI echo, light/heavy MLP (~45 min; BENCH_ARGS=--quick: ~14; --peers none: ~10; --peers triton --baselines none: Triton alone, ~3) -> docs/benchmarks.md
	$(BIN)/python -m bench.peers $(BENCH_ARGS)

.PHONY: bench-overload
bench-overload: $(STAMP)  ## every answer by the SLO? light/heavy MLP at 0.5x-5x capacity, shared core and split, vs the first wave (~30 min; BENCH_ARGS=--quick: ~8) -> docs/benchmarks.md
	$(BIN)/python -m bench.overload $(BENCH_ARGS)

.PHONY: bench-grpc
bench-grpc: $(STAMP)  ## the OIP over gRPC beside HTTP /v2 and /predict: goodput at the 20 ms SLO, no-op model (~10 min; BENCH_ARGS=--repeats 1) -> docs/benchmarks.md
	$(BIN)/python -m bench.grpc_oip $(BENCH_ARGS)

.PHONY: bench-gpu
bench-gpu:  ## ResNet-50 on a GPU beside the CPU: goodput at a 100 ms SLO, batch sizes, GPU use (~6 min, needs a GPU; BENCH_ARGS=--dry-run: any machine, ~2 min) -> docs/benchmarks.md
	$(if $(wildcard $(BIN)/python),$(BIN)/python -m bench.gpu,bench/gpu_run.sh) $(BENCH_ARGS)

.PHONY: gpu-wheels
gpu-wheels:  ## the wheels a lent GPU machine (Python 3.12, torch, no network) lacks, into .whl/ (see docs/howto/gpu.md)
	@grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
		pyzmq==27.3.0 orjson==3.13.0 pysimdjson==7.0.2 httptools==0.9.0

.PHONY: proto
proto: $(STAMP)  ## regenerate the committed gRPC stubs (src/clipper/frontend/proto) from their .proto
	$(BIN)/python -m clipper.frontend.proto.generate

.PHONY: bench-wrk
bench-wrk: $(STAMP)  ## the frontend's ceiling with wrk: Clipper (no-op model) vs a bare ASGI echo (~2 min) -> docs/benchmarks.md
	@command -v wrk >/dev/null 2>&1 || { SUDO=; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; $$SUDO apt-get install -y wrk || { $$SUDO apt-get update && $$SUDO apt-get install -y wrk; }; }
	$(BIN)/python -m bench.wrk $(BENCH_ARGS)

.PHONY: bench-lowload
bench-lowload: $(STAMP)  ## latency at 50 queries/s: Clipper's local socket vs ZeroMQ over TCP vs naive FastAPI, light and heavy MLP (~6 min; BENCH_ARGS=--quick: ~2) -> docs/benchmarks.md
	$(BIN)/python -m bench.lowload $(BENCH_ARGS)

.PHONY: bench-workers
bench-workers: $(STAMP)  ## throughput with 1, 2, 4, 8 worker processes (--workers), no-op and light MLP, with wrk (~4 min on 2 CPUs, more with more counts; BENCH_ARGS=--quick: ~1) -> docs/benchmarks.md
	@command -v wrk >/dev/null 2>&1 || { SUDO=; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; $$SUDO apt-get install -y wrk || { $$SUDO apt-get update && $$SUDO apt-get install -y wrk; }; }
	$(BIN)/python -m bench.workers $(BENCH_ARGS)

.PHONY: bench-ops
bench-ops: $(STAMP) system-deps  ## change propagation across two frontends, and a 40-min memory soak (~45 min; BENCH_ARGS=--minutes 15: shorter) -> docs/benchmarks.md
	$(BIN)/python -m bench.ops all $(BENCH_ARGS)

clean:  ## remove the virtual environment and local state
	rm -rf $(VENV) .clipper-home .pytest_cache .mypy_cache .ruff_cache
