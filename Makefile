# `make run` and `make test` work on a fresh machine: they build .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-exits test-processes lint bench venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# No GPU and no model server answering: the CPU demo model is prepared first (once).
run: $(STAMP)
	@url=$$($(PY) -c 'from bot.config import load_settings; print(load_settings().openai_base_url)' 2>/dev/null); \
	command -v nvidia-smi >/dev/null 2>&1 || curl -sf -m 3 "$$url/models" >/dev/null \
	  || $(MAKE) --no-print-directory demo-deps
	$(VENV)/bin/ponder run

lint: $(STAMP)
	$(VENV)/bin/ruff check bot adapters tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: lint
	$(VENV)/bin/pytest -q

# Real processes signalled, killed and restarted: SIGTERM while the platform goes away (several
# rounds a case), kill -9 mid-chain and the restart that resumes it, `ponder model serve` and its
# child. Minutes of CPU, so kept out of `make test`; CI runs both.
EXIT_ROUNDS ?= 5
test-exits: $(STAMP)
	PONDER_EXIT_ROUNDS=$(EXIT_ROUNDS) $(VENV)/bin/pytest -q -m exits

# The `ponder` command end to end as a real process (exit codes, what it prints, start-up
# refusals): each one starts a Python with the whole stack, so they have their own target;
# `make test` keeps one of them as a smoke test. CI runs both.
test-processes: $(STAMP)
	$(VENV)/bin/pytest -q -m process

bench: $(STAMP)
	$(PY) -m bench.engine
	$(PY) -m bench.discord
	$(PY) -m bench.slack
	$(PY) -m bench.faults

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

-include mk/vllm.mk
-include mk/router.mk
-include mk/postgres.mk
