# Two commands matter: `make demo` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel that lies on this machine's disk. GPU users: `make install TORCH_SPEC=torch`
# or install the torch build you want into the venv before `make install`.
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python

.PHONY: install test demo clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q

demo: install
	$(VENV)/bin/remax demo

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
