# The two commands of the quick start: `make demo` and `make test`. Both make a virtual environment
# in .venv/ (once) and install into it; `. .venv/bin/activate` puts `minimind-spec` on your PATH.
# PY=python3 (or any interpreter) installs into that one instead.
VENV ?= .venv
PY ?= $(VENV)/bin/python
PIP = $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt

.PHONY: venv install install-test demo test check schema ablate-quick ablate

venv:
	@command -v $(PY) >/dev/null 2>&1 || python3 -m venv $(VENV)

install: venv
	$(PIP) -e ".[demo]"

install-test: venv
	$(PIP) -e ".[test,check]"

demo: install
	$(PY) -m minimind_spec build spec/minimind.json
	PY=$(PY) bash examples/train_tiny.sh out/demo

test: install-test
	@# npm packages for the Mermaid parser tests (they skip, saying why, without Node)
	@if command -v npm >/dev/null 2>&1; then [ node_modules/.package-lock.json -nt package-lock.json ] || npm ci --silent --no-audit --no-fund; \
	else echo "npm not found: Mermaid parser tests will be skipped"; fi
	$(PY) -m pytest -q
	$(MAKE) --no-print-directory check PY=$(PY)

check:  # types (mypy, strict: every function typed) and lint (unused imports and variables, undefined names)
	$(PY) -m mypy
	$(PY) -m ruff check minimind_spec builders tests examples benchmarks

schema: install
	$(PY) -m minimind_spec schema

ablate-quick:  # the card's six ablations, one seed (about 10 min on 2 CPU cores): out/ablations/report.md
	$(PIP) -e ".[plots]"
	$(PY) -m minimind_spec ablate spec/minimind.json spec/ablations/*.json --quick --out out/ablations

ablate:  # the full study, three seeds (about 40 min): out/ablations_full/report.md
	$(PIP) -e ".[plots]"
	$(PY) -m minimind_spec ablate spec/minimind.json spec/ablations/*.json --out out/ablations_full
