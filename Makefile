# The two commands of the quick start: `make demo` and `make test`.
PY ?= python3
PIP = $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt

.PHONY: install install-test demo test schema ablate-quick ablate

install:
	$(PIP) -e .

install-test:
	$(PIP) -e ".[test]"

demo: install
	$(PY) -m minimind_spec build spec/minimind.json
	PY=$(PY) bash examples/train_tiny.sh out/demo

test: install-test
	@# npm packages for the Mermaid parser tests (they skip, saying why, without Node)
	@if command -v npm >/dev/null 2>&1; then [ node_modules/.package-lock.json -nt package-lock.json ] || npm ci --silent --no-audit --no-fund; \
	else echo "npm not found: Mermaid parser tests will be skipped"; fi
	$(PY) -m pytest -q

schema: install
	$(PY) -m minimind_spec schema

ablate-quick:  # the card's six ablations, one seed (8.3 min on 2 CPU cores): out/ablations/report.md
	$(PIP) -e ".[plots]"
	$(PY) -m minimind_spec ablate spec/minimind.json spec/ablations/*.json --quick --out out/ablations

ablate:  # the full study, three seeds: out/ablations_full/report.md
	$(PIP) -e ".[plots]"
	$(PY) -m minimind_spec ablate spec/minimind.json spec/ablations/*.json --out out/ablations_full
