# hvams: `make demo` and `make test` are all a fresh Debian machine needs.
VENV    ?= .venv
PY      := $(VENV)/bin/python
HVAMS   := $(VENV)/bin/hvams
DEMO    ?= data/demo
export OMP_NUM_THREADS ?= 1

.PHONY: setup test demo clean

setup:
	bash scripts/setup.sh

# pytest exits 5 when it collected no test: make fails on it like on any error.
test: setup
	$(PY) -m pytest -q tests

demo: setup
	bash scripts/demo.sh

clean:
	rm -rf runs build *.egg-info
