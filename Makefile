# MercuryStream. `make demo` and `make test` are all a fresh machine needs: both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
COMPOSE ?= docker compose

.PHONY: demo demo-cluster test lint benchmark benchmark-smoke install run-exchange run-p1 run-p2 report up down logs clean help

help:
	@echo "make demo       offline demo: exchange → P1 → P2, inject anomalies, capture incidents, reports"
	@echo "make demo-cluster  offline: nats-server → exchange → P1 → JetStream → 2 P2 shards, replay an incident from the stream"
	@echo "make test       lint + the whole test suite"
	@echo "make benchmark  throughput / latency / memory benchmark (benchmarks/results.json + PNG)"
	@echo "make up|down|logs  docker compose (needs a Docker engine)"

$(STAMP): pyproject.toml setup.py services/shared/_rowscan.c
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m mercurystream.demo $(if $(DOCKER),--docker,)

demo-cluster: $(STAMP)
	$(BIN)/python -m mercurystream.cluster_demo

test: $(STAMP)
	$(BIN)/ruff check services tests replay.py benchmarks
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check services tests replay.py benchmarks
	$(BIN)/ruff format --check services tests replay.py benchmarks

benchmark: $(STAMP)
	$(BIN)/python -m benchmarks.run

benchmark-smoke: $(STAMP)
	$(BIN)/python -m benchmarks.run --smoke --out /tmp/mercury-bench-smoke

run-exchange: $(STAMP)
	$(BIN)/mercury-exchange

run-p1: $(STAMP)
	$(BIN)/mercury-p1

run-p2: $(STAMP)
	$(BIN)/mercury-p2

report: $(STAMP)
	$(BIN)/mercury-report data/incidents

# P2 writes ./data as your user, so bind-mounted recordings and incidents stay yours.
up:
	MERCURY_UID=$$(id -u) MERCURY_GID=$$(id -g) $(COMPOSE) up --build -d

down:
	$(COMPOSE) --profile replay down

logs:
	$(COMPOSE) logs -f --tail=200

clean:
	rm -rf data/run data/incidents data/*.jsonl .pytest_cache .ruff_cache
