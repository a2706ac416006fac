# The two commands of the quick start: `make demo` and `make test`.
PY ?= python3
PIP = $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt

.PHONY: install install-test demo test schema

install:
	$(PIP) -e .

install-test:
	$(PIP) -e ".[test]"

demo: install
	$(PY) -m minimind_spec build spec/minimind.json

test: install-test
	$(PY) -m pytest -q

schema: install
	$(PY) -m minimind_spec schema
