# Two entry points for a newcomer: `make demo` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test bench system-deps clean

install: $(STAMP)

# Every pip call here passes constraints.txt (torch 2.13.0, PyQt6 6.11.0, ...): the published
# requirements carry lower bounds only, our own set-up pins them in that one file.
CONSTRAINTS := constraints.txt

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip -c $(CONSTRAINTS)
	# torch first, so nothing else can pull a newer (CUDA) build while resolving.
	$(PY) -m pip install -q torch -c $(CONSTRAINTS)
	$(PY) -m pip install -q -e ".[dev]" -c $(CONSTRAINTS)
	touch $(STAMP)

# napari's tests need an X server (Xvfb) with xcb; install it when we can (root or sudo).
system-deps:
	@command -v Xvfb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-xinerama0 \
	    libxcb-xkb1 libxkbcommon-x11-0 libxcb-cursor0 libgl1 libegl1 libfontconfig1 libdbus-1-3 >/dev/null; }

demo: install
	$(PY) -m napari_unet demo --out demo-output

# PIP_CONSTRAINT: pip calls made by the tests (tests/packaging/test_wheel.py) honour the same pins.
test: install system-deps
	PIP_CONSTRAINT=$(CURDIR)/$(CONSTRAINTS) QT_QPA_PLATFORM=xcb $(PY) -m pytest -q

bench: install
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache
