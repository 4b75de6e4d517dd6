# Two commands for a new user: `make demo` and `make test`. Both create .venv and install
# requirements.txt and requirements-ray.txt (Ray, for python -m fitting.batch and its tests)
# on first use, and again when either changes.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test install bench clean-venv

$(STAMP): requirements.txt requirements-ray.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python >= 3.10 is needed (found %s); set PYTHON=python3.11" % sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt -r requirements-ray.txt
	-$(PY) -m fitting.render.native   # C++ CPU kernels (~40 s once, in parallel); on failure rendering uses PyTorch
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) run_fitting.py --config configs/demo.txt

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m bench.render

clean-venv:
	rm -rf $(VENV)
