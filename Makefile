# Two commands:
#   make lab   - students: create .venv if missing, install course_utils with the `lab` extras (JupyterLab,
#                no grader tools), start JupyterLab (also when run as root, e.g. in Docker)
#   make test  - CI and contributors: install the `dev` extras (test tools, nbgrader, otter-grader, ruff), then
#                the linter (ruff check); the tests under tests/ two at a time (pytest-xdist; TEST_WORKERS=0
#                runs them one by one): unit tests, every notebook's student version executed to prove its
#                checks fail without the solutions, notebook 01 through the real graders; then every notebook
#                executed with nbmake, one at a time, so that each one's time is its own
PYTHON ?= python3
ifeq ($(OS),Windows_NT)
$(error This Makefile needs a POSIX shell and .venv/bin; on Windows run its steps by hand, see README.md, Troubleshooting, "Windows")
endif
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LAB_STAMP := $(VENV)/.installed-lab
# Jupyter refuses to start as root unless told so (Docker images, many cloud notebooks run as root).
# Test processes for tests/ (not the notebooks, which run alone): 2 halves `make test` on a 2-core machine.
TEST_WORKERS ?= 2
ALLOW_ROOT := $(if $(filter 0,$(shell id -u 2>/dev/null)),--allow-root)

.PHONY: lab test unit notebooks benchmark student clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

$(LAB_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[lab]"
	touch $(LAB_STAMP)

lab: $(LAB_STAMP)
	$(BIN)/jupyter lab $(ALLOW_ROOT) notebooks/

test: $(STAMP)
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest tests -n $(TEST_WORKERS) --durations=0
	$(BIN)/python -m pytest notebooks --nbmake --nbmake-timeout=600 --durations=0

unit: $(STAMP)
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest tests -m "not student_notebooks"

notebooks: $(STAMP)
	$(BIN)/python -m pytest notebooks --nbmake --nbmake-timeout=600 --durations=0

benchmark: $(STAMP)
	$(BIN)/python benchmarks/time_to_accuracy.py --repeats 3
	$(BIN)/python benchmarks/feature_extraction.py

student: $(STAMP)
	$(BIN)/python -m course_admin validate
	$(BIN)/python -m course_admin release --source notebooks --dest student

clean:
	rm -rf $(VENV) .pytest_cache
