# The README's two commands do all set-up on a fresh machine: `make demo`, `make test`.
SHELL := /bin/bash
PY    := .venv/bin/python
PIP   := .venv/bin/pip
STAMP := .venv/.installed
CONFIG ?= configs/default.yaml

.PHONY: setup system-packages weights test unit integration demo lint clean

# Every Ray worker, CLI run and HL7 parse worker imports the project's modules afresh. With
# PYTHONDONTWRITEBYTECODE set (it is on some machines' default environment) each of them
# compiled every source file again: ~0.1 s of CPU per process, hundreds of processes per test
# run. Bytecode goes to the (git-ignored) __pycache__ directories instead.
unexport PYTHONDONTWRITEBYTECODE

setup: system-packages $(STAMP)

# Debian packages: the PACS (Orthanc), the reference DICOM clients (dcmtk), the IOD checker
# (dicom3tools' dciodvfy) and PostgreSQL (the shared ledger backend; its tests start a private
# server with initdb/pg_ctl, so the package's own cluster is never used) and Prometheus (the
# metrics tests scrape the pipeline with a private one) and rsyslog with its OpenSSL driver (the
# audit export test runs a private TLS syslog collector) and Chromium (the review page test drives
# Debian's browser with Playwright: `executable_path`, so `playwright install` never downloads one).
# Installed only when missing, and only as root.
system-packages:
	@missing=""; \
	command -v Orthanc >/dev/null || missing="$$missing orthanc"; \
	test -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so || missing="$$missing orthanc-dicomweb"; \
	command -v storescu >/dev/null || missing="$$missing dcmtk"; \
	command -v dciodvfy >/dev/null || missing="$$missing dicom3tools"; \
	ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v rsyslogd >/dev/null || missing="$$missing rsyslog"; \
	ls /usr/lib/*/rsyslog/lmnsd_ossl.so >/dev/null 2>&1 || missing="$$missing rsyslog-openssl"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing Debian packages:$$missing (run as root, or: sudo apt-get install$$missing)"; exit 1; \
	  fi; \
	fi

# torch first, from the CPU wheel on this machine's disk, so nothing pulls a CUDA build.
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || python3.11 -m venv .venv || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c requirements.lock -e '.[test]'
	touch $(STAMP)

# Demo weights, trained on synthetic phantoms (never committed; cached under var/models).
# training/ and demo/ run from the repository root; they are not installed with the product.
weights: setup
	$(PY) -m training --config $(CONFIG)

# Unit tests share nothing (no Ray, no ports, no peers): both cores at once (pytest-xdist). The
# integration and cluster tests run on two workers in groups (tests/conftest.py): one worker runs
# everything on the session's local Ray in turn, the other the multi-node cluster tests (their own
# Ray nodes), then the files that start no Ray.
test: setup weights lint
	$(PY) -m pytest -q -n 2 --timeout=600 --durations=10 tests/unit
	$(PY) -m pytest -q -n 2 --dist loadgroup --timeout=600 --durations=30 tests/integration tests/cluster

unit: setup
	$(PY) -m pytest -q tests/unit

integration: setup weights
	$(PY) -m pytest -q tests/integration --timeout=600

demo: setup weights
	$(PY) -m demo --config configs/demo.yaml

# Import-layer contracts, then ruff (lint rules and formatting, both checked, never rewritten).
lint: setup
	.venv/bin/lint-imports
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

clean:
	rm -rf var/demo .pytest_cache
