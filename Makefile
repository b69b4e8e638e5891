# Two commands for everyone (students, instructors and CI):
#   make lab   - create .venv if missing, install course_utils with its dev extras, start JupyterLab
#   make test  - the same set-up, then unit tests and every notebook executed with nbmake
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: lab test unit notebooks benchmark student clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

test: $(STAMP)
	$(BIN)/python -m pytest tests notebooks --nbmake --nbmake-timeout=600 --durations=0

unit: $(STAMP)
	$(BIN)/python -m pytest tests

notebooks: $(STAMP)
	$(BIN)/python -m pytest notebooks --nbmake --nbmake-timeout=600 --durations=0

benchmark: $(STAMP)
	$(BIN)/python benchmarks/time_to_accuracy.py

clean:
	rm -rf $(VENV) .pytest_cache
