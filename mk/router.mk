# The vLLM router (`vllm-router` on PyPI: a Rust binary in a wheel) in front of fake model
# replicas: `make test-router`. Included by the main Makefile; kept out of `make test` (the
# router is not a Ponder dependency, and its failover test waits out a circuit breaker).
#
# The router gets a venv of its own (a few MB, seconds to build, a stamp per version) so
# nothing it pins mixes with Ponder's. To keep it across fresh clones (CI), point it outside the
# clone: make test-router ROUTER_VENV=$HOME/.cache/ponder/venv-router

VLLM_ROUTER_VERSION ?= 0.1.17
ROUTER_BASE_PYTHON ?= $(shell command -v python3.11 || command -v python3)
ROUTER_VENV ?= .venv-router
# The main dev venv and its install stamp (the main Makefile's PY and STAMP): the tests and
# Ponder run there; only the router binary comes from ROUTER_VENV.
ROUTER_PONDER_PYTHON ?= $(if $(PY),$(PY),.venv/bin/python)

ROUTER_BIN := $(ROUTER_VENV)/bin/vllm-router
ROUTER_STAMP := $(ROUTER_VENV)/.ponder-vllm-router-$(VLLM_ROUTER_VERSION)

.PHONY: router-deps test-router bench-router

router-deps: $(ROUTER_STAMP)

$(ROUTER_STAMP):
	@echo "== vllm-router $(VLLM_ROUTER_VERSION) into $(ROUTER_VENV) (once)"
	rm -rf $(ROUTER_VENV)
	$(ROUTER_BASE_PYTHON) -m venv $(ROUTER_VENV)
	$(ROUTER_VENV)/bin/python -m pip install --quiet "vllm-router==$(VLLM_ROUTER_VERSION)"
	$(ROUTER_BIN) --help >/dev/null
	touch $@

# -o addopts="": pyproject's addopts deselects the router marker for `make test`.
# PONDER_REQUIRE_ROUTER=1: a test that cannot start the router fails instead of skipping.
ROUTER_PYTEST_ARGS ?=
test-router: router-deps $(STAMP)
	PONDER_ROUTER_BIN=$(abspath $(ROUTER_BIN)) PONDER_REQUIRE_ROUTER=1 \
	  $(ROUTER_PONDER_PYTHON) -m pytest -o addopts="" -p no:cacheprovider -m router \
	  tests/test_router.py -q $(ROUTER_PYTEST_ARGS)

bench-router: router-deps $(STAMP)
	PONDER_ROUTER_BIN=$(abspath $(ROUTER_BIN)) $(ROUTER_PONDER_PYTHON) -m bench.scale router
