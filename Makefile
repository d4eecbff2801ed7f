# Two commands do all set-up on a fresh machine:
#   make run    the main job: the four notebooks in order, written under runs/cifar100/ from the
#               committed models (ARGS="--quick" for a smoke test, "--retrain" to train again)
#   make test   the test suite
# Both install the exact versions of requirements.lock. After changing requirements.txt:
#   make lock   refresh requirements.lock and requirements-floor.txt (needs uv: pip install uv);
#               LOCK_ARGS=--upgrade also moves every pin to the newest version the ranges allow;
#               the floor file is made afresh each time (earlier pins would hold floors up)
VENV ?= .venv
PYTHON = $(VENV)/bin/python
STAMP = $(VENV)/.installed
UV ?= uv
LOCK = $(UV) pip compile --quiet --prerelease disallow --custom-compile-command "make lock" $(LOCK_ARGS)

.PHONY: run test lock

$(STAMP): requirements.lock pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	@# PYTHONWARNINGS: setuptools warns about every editable install in a box of asterisks
	PYTHONWARNINGS=ignore $(PYTHON) -m pip install -q -r requirements.lock
	touch $(STAMP)

run: $(STAMP)
	$(PYTHON) -m cifar100cnn run $(ARGS)

test: $(STAMP)
	$(PYTHON) -m pytest -q $(PYTEST_ARGS)

lock:
	@command -v $(UV) >/dev/null || { echo "make lock needs uv: pip install uv"; exit 1; }
	$(LOCK) --universal --python-version 3.11 requirements.txt -o requirements.lock
	$(LOCK) --resolution lowest-direct --upgrade --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 requirements.txt -o requirements-floor.txt
