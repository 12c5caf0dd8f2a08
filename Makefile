# Two commands do all the set-up on a fresh machine with Python 3.11 and make:
#   make demo   - create .venv, install, run the notebooks in order on the embedded demo data
#   make test   - create .venv, install, run the test suite
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench strip params clean-venv

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m heartbeit_lib.pipeline.runs kernelspec >/dev/null
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m heartbeit_lib.pipeline.demo

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider --timeout=900

test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow"

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

# write every notebook's parameters cell from its stage Config (the one declaration)
params: $(STAMP)
	$(PY) -m heartbeit_lib.pipeline.runs params

strip: $(STAMP)
	$(VENV)/bin/nbstripout --keep-id notebooks/*.ipynb

clean-venv:
	rm -rf $(VENV)
