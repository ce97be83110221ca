# recon — run `make help` for the targets. CI runs `make test` (see .ci/run).
export CARGO_TARGET_DIR ?= $(HOME)/.cache/recon-target
CARGO ?= cargo
RECON = $(CARGO_TARGET_DIR)/debug/recon
SAMPLE_DATE = 2024-06-01

.PHONY: help build run test fuzz-diff tools bench bench-diff bench-scale bench-export fmt lint sample-data clean
BENCH_SIZES ?= 1000000,5000000,20000000
BENCH_RUNS ?= 3
EXPORT_ROWS ?= 5000000
SCALE_SIZES ?= 20000000,100000000
SCALE_MEMORY ?= 4GiB
SEED ?= 0x5eed20240601
CASES ?= 20000
FROM ?= 0
# The fuzz cases' snapshot files live in memory where /dev/shm exists: a quarter faster.
FUZZ_TMPDIR ?= $(shell test -d /dev/shm && echo /dev/shm || echo $${TMPDIR:-/tmp})

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## Build the recon binary (zero warnings expected)
	$(CARGO) build --locked --all-targets

run: build ## Reconcile the sample job on local files (no services needed)
	@$(RECON) run --job jobs/identity.toml --run-date $(SAMPLE_DATE); code=$$?; \
	echo "(exit code $$code; outputs under recon-output/identity)"; exit $$code

test: tools ## Run every test: unit, SQL logic (.slt), integration (files, memory, moto, Garage, Airflow)
	$(CARGO) build --locked --all-targets
	$(CARGO) test --locked --no-fail-fast

tools: ## Install the S3 servers the tests start (moto, Garage) and Airflow into ~/.cache/recon-tools
	bash scripts/tools.sh

fuzz-diff: ## Differential fuzzing against the reference on all three plans (SEED, CASES, FROM; e.g. make fuzz-diff SEED=7 CASES=20000)
	TMPDIR=$(FUZZ_TMPDIR) RECON_FUZZ_ALL_PLANS=1 RECON_FUZZ_SEED=$(SEED) RECON_FUZZ_CASES=$(CASES) RECON_FUZZ_FROM=$(FROM) \
		$(CARGO) test --locked --test it differential -- --nocapture

bench: bench-diff bench-scale bench-export ## Every benchmark (results in bench/results)

bench-diff: tools ## Diff benchmark: recon vs DuckDB and Polars on the same pairs (BENCH_SIZES, BENCH_RUNS)
	$(CARGO) build --locked --release --bin recon
	$(HOME)/.cache/recon-tools/venv/bin/python bench/bench.py --recon $(CARGO_TARGET_DIR)/release/recon \
		--python $(HOME)/.cache/recon-tools/venv/bin/python --sizes $(BENCH_SIZES) --runs $(BENCH_RUNS)

bench-scale: tools ## Bounded memory: recon alone at SCALE_SIZES under --memory-limit SCALE_MEMORY
	$(CARGO) build --locked --release --bin recon
	$(HOME)/.cache/recon-tools/venv/bin/python bench/bench.py --recon $(CARGO_TARGET_DIR)/release/recon \
		--scale $(SCALE_SIZES) --memory-limit $(SCALE_MEMORY)

bench-export: tools ## Export benchmark: a Postgres table to Parquet, recon vs connectorx (EXPORT_ROWS)
	$(CARGO) build --locked --release --bin recon
	$(HOME)/.cache/recon-tools/venv/bin/python bench/export_bench.py --recon $(CARGO_TARGET_DIR)/release/recon \
		--python $(HOME)/.cache/recon-tools/venv/bin/python --rows $(EXPORT_ROWS) --runs $(BENCH_RUNS)

fmt: ## Format the code
	$(CARGO) fmt --all

lint: ## Check formatting and clippy
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

sample-data: build ## Regenerate sample-data/lake (deterministic)
	$(RECON) generate --out sample-data/lake

clean: ## Remove local outputs
	rm -rf recon-output
