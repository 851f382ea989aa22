# Two commands for a newcomer: `make run` (set up and serve on SQLite) and `make test` (set up and run every test).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test test-fast lint notebooks bench clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m otp_service serve

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) lint
	$(BIN)/python -m pytest tests notebooks --nbval --nbval-sanitize-with notebooks/nbval-sanitize.cfg $(PYTEST_ARGS)

# The fast lane: the pure rules and everything in process on SQLite (no PostgreSQL, Redis or server processes),
# in under a minute. `make test` runs it too, with everything else.
FAST_LANE := tests/core tests/db tests/audit tests/persistence tests/service tests/http tests/reports tests/webhooks tests/test_config.py

test-fast: $(STAMP) lint
	env -u TEST_DATABASE_URL -u REDIS_URL $(BIN)/python -m pytest $(FAST_LANE) -q -m "not slow and not faults and not fuzz" $(PYTEST_ARGS)

# Re-run every notebook in place (after changing one, so nbval compares against fresh outputs).
notebooks: $(STAMP)
	cd notebooks && for nb in *.ipynb; do ../$(BIN)/jupyter nbconvert --to notebook --execute --inplace "$$nb" || exit 1; done

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache otp_service.db* .dev-secrets
