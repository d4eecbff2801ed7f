# Two commands do all set-up on a fresh machine:
#   make run    the main job: the four notebooks in order (ARGS="--quick" for a smoke test)
#   make test   the test suite
VENV ?= .venv
PYTHON = $(VENV)/bin/python
STAMP = $(VENV)/.installed

.PHONY: run test

$(STAMP): requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -r requirements.txt
	touch $(STAMP)

run: $(STAMP)
	$(PYTHON) -m cifar100cnn run $(ARGS)

test: $(STAMP)
	$(PYTHON) -m pytest -q $(PYTEST_ARGS)
