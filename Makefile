# Two commands for a newcomer: `make run` (install, migrate, demo data, web + worker + beat) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8000

.PHONY: run test install migrate demo lint benchmark benchmark-exits clean

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python manage.py run --port $(PORT)

# anvil (a local EVM node) for the Synthetix connector tests, pinned in the fake's package-lock.json
SYNTHETIX_FAKE := tests/fakes/synthetix
ANVIL := $(SYNTHETIX_FAKE)/node_modules/.package-lock.json

$(ANVIL): $(SYNTHETIX_FAKE)/package-lock.json
	npm ci --prefix $(SYNTHETIX_FAKE) --no-audit --no-fund --ignore-scripts

# Debian's Chromium for the dashboard's browser tests (Playwright drives it; Playwright's own download is not used).
CHROMIUM := /usr/bin/chromium

$(CHROMIUM):
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

# The redis-server binary: the canary test starts a private password-protected Redis of its own.
REDIS_SERVER := /usr/bin/redis-server

$(REDIS_SERVER):
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null)

# lint first: a finding fails the run before any test starts
test: lint $(STAMP) $(ANVIL) $(CHROMIUM) $(REDIS_SERVER)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# ruff (ruff.toml), mypy (mypy.ini: the app packages, strict on the pure core) and the import contracts (.importlinter)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

benchmark: $(STAMP)
	$(BIN)/python benchmarks/signal_to_fill.py --rate 100 --seconds 60

# A stop crossed -> its exit order at the venue, with price_arrived and with the 5 s monitor tick only (docs/benchmarks.md)
benchmark-exits: $(STAMP)
	$(BIN)/python benchmarks/stop_to_exit.py

clean:
	rm -rf $(VENV) var

# The market-data role against the loopback Hyperliquid websocket: tick -> price visible, candle close -> signal
# stored, the role's memory over 3 minutes (docs/benchmarks.md, "marketdata"; about 15 minutes)
.PHONY: benchmark-marketdata
benchmark-marketdata: $(STAMP)
	$(BIN)/python benchmarks/marketdata.py all
