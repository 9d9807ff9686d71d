# Each target is a one-liner over invoke (tasks.py); the virtualenv bootstraps on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
READY := $(VENV)/.ready

PRODUCTS ?= trades,tbbo
truthy = $(filter 1 yes true,$(1))
universe = $(if $(SYMBOL),--symbol "$(SYMBOL)") $(if $(YEAR),--year "$(YEAR)") \
	$(if $(SYMBOLS),--symbols "$(SYMBOLS)") $(if $(SYMBOLS_FILE),--symbols-file "$(SYMBOLS_FILE)") \
	$(if $(YEARS),--years "$(YEARS)")
flags = $(if $(call truthy,$(FORCE)),--force) $(if $(call truthy,$(DRY_RUN)),--dry-run) \
	$(if $(DATASET),--dataset "$(DATASET)") $(if $(ENGINE),--engine "$(ENGINE)")

.PHONY: data demo demo-s3 demo-cluster test lint status verify bench clean-venv

$(READY): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[sandbox,cluster]' --group dev
	touch $(READY)

data: $(READY)
	@test -n "$(SYMBOL)$(SYMBOLS)$(SYMBOLS_FILE)" -a -n "$(YEAR)$(YEARS)" || { echo "usage: make data SYMBOL=AAPL YEAR=2023 | SYMBOLS=AAPL,MSFT YEARS=2021-2023 | SYMBOLS_FILE=list.txt YEARS=... [FORCE=1] [DRY_RUN=1] [PRODUCTS=trades,tbbo] [DATASET=XNAS.ITCH] [ENGINE=auto|stream|batch]" >&2; exit 2; }
	$(BIN)/invoke data $(universe) --products "$(PRODUCTS)" $(flags)

demo: $(READY)
	$(BIN)/invoke demo

demo-s3: $(READY)
	$(BIN)/invoke demo --s3

demo-cluster: $(READY)
	$(BIN)/invoke demo-cluster

test: $(READY)
	$(BIN)/invoke test

lint: $(READY)
	$(BIN)/invoke lint

status: $(READY)
	$(BIN)/invoke status $(if $(SYMBOL),--symbol "$(SYMBOL)") $(if $(YEAR),--year "$(YEAR)")

verify: $(READY)
	$(BIN)/invoke verify $(if $(SYMBOL),--symbol "$(SYMBOL)") $(if $(YEAR),--year "$(YEAR)")

bench: $(READY)
	$(BIN)/invoke bench

clean-venv:
	rm -rf $(VENV) .nox
