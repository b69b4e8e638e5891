# Two commands for everyone (students, instructors and CI):
#   make lab   - create .venv if missing, install course_utils with its dev extras, start JupyterLab
#   make test  - the same set-up, then unit tests, every notebook executed with nbmake, and every
#                notebook's student version executed to prove its checks fail without the solutions
PYTHON ?= python3
ifeq ($(OS),Windows_NT)
$(error This Makefile needs a POSIX shell and .venv/bin; on Windows run its steps by hand, see README.md, Troubleshooting, "Windows")
endif
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
	$(BIN)/python -m pytest tests -m "not student_notebooks"

notebooks: $(STAMP)
	$(BIN)/python -m pytest notebooks --nbmake --nbmake-timeout=600 --durations=0

benchmark: $(STAMP)
	$(BIN)/python benchmarks/time_to_accuracy.py --repeats 3
	$(BIN)/python benchmarks/inference_throughput.py

student: $(STAMP)
	$(BIN)/python -m course_utils.assignments validate
	$(BIN)/python -m course_utils.assignments release --source notebooks --dest student

clean:
	rm -rf $(VENV) .pytest_cache
