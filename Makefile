# Two commands set up everything on a fresh machine:
#   make demo   make .venv, install synk, run examples/quickstart.py on every device
#   make test   make .venv, install synk, run lint (ruff; pyrefly over synk/), the
#               suite (one process, with the device check's smoke run in
#               tests/test_bench.py and a clean virtualenv that follows
#               docs/getting_started.md; then mpiexec -n 2), every example end to
#               end and every notebook, the docs build; then the one-process suite
#               again on the newest jax (.venv-newest)
#   make docs   the docs site (docs/ -> docs/_build/html), warnings as errors
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST := $(BIN)/python -m pytest -p no:cacheprovider
# The newest jax release, on a Python >= 3.12 (.ci/newest-python finds or builds one).
NEWEST := .venv-newest
NEWEST_STAMP := $(NEWEST)/.installed-stamp
# Test processes that run side by side where tests are independent processes
# (one process's suite, examples, notebooks): one per core is right on 2 cores.
JOBS   ?= 2

.PHONY: demo test lint test-single test-mpi test-examples test-notebooks test-runs \
	test-newest device-check-smoke docs notebook-outputs \
	bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test,mpi,docs]"
	touch $(STAMP)

# No constraints: pip takes the newest jax that pyproject.toml's range admits.
$(NEWEST_STAMP): pyproject.toml
	rm -rf $(NEWEST)
	"$$(.ci/newest-python)" -m venv $(NEWEST)
	$(NEWEST)/bin/python -m pip install --quiet -e ".[test,mpi]"
	touch $(NEWEST_STAMP)

demo: $(STAMP)
	$(BIN)/python examples/quickstart.py

test: lint test-single test-mpi test-runs docs test-newest

lint: $(STAMP)
	$(BIN)/ruff check synk tests examples benchmarks notebooks docs
	$(BIN)/ruff format --check synk tests examples benchmarks notebooks docs
	$(BIN)/pyrefly check

# One process, 8 simulated CPU devices (set in tests/conftest.py); JOBS such
# processes share out the test files. Tests marked `alone` run afterwards by
# themselves: a loop of fused steps that never waits, thousands of calls
# deep, must not compete for the cores with another test process.
test-single: $(STAMP)
	$(PYTEST) -n $(JOBS) --dist loadfile -m "not alone" tests
	$(PYTEST) -q -m alone tests

# Two processes under MPI, 2 simulated CPU devices each: the same suite, with
# fewer cases of its slowest parametrised tests (tests/helpers.py, fewer_under_mpi).
test-mpi: $(STAMP)
	SYNK_CPU_DEVICES=2 SYNK_TIMEOUT=30 $(BIN)/mpiexec -n 2 $(PYTEST) -q --timeout=300 tests

test-examples: $(STAMP)
	$(PYTEST) -q -n $(JOBS) examples/test_examples.py

# benchmarks/device_check.sh (the GPU check), its steps small on 8 simulated CPU
# devices. tests/test_bench.py runs it too, so that it cannot rot between runs
# on a GPU machine.
device-check-smoke: $(STAMP)
	SMOKE=1 PYTHON=$(BIN)/python bash benchmarks/device_check.sh

# Every example and every notebook in one pool of JOBS processes (make test).
test-runs: $(STAMP)
	$(PYTEST) -q -n $(JOBS) examples/test_examples.py notebooks/test_notebooks.py

# Every notebook in a real kernel (the quickstart twice in one kernel).
test-notebooks: $(STAMP)
	$(PYTEST) -q -n $(JOBS) notebooks/test_notebooks.py

# The one-process suite on the newest jax release (pyproject.toml's range says
# which releases CI tests: the pinned one and the newest). The clean-virtualenv
# test (slow) ran in test-single; pip's choice of jax there is its own.
test-newest: $(NEWEST_STAMP)
	$(NEWEST)/bin/python -c "import jax, sys; print('newest: jax', jax.__version__, 'on python', sys.version.split()[0])"
	$(NEWEST)/bin/python -m pytest -p no:cacheprovider -n $(JOBS) --dist loadfile -m "not alone and not slow" tests

# The docs site: MyST pages, the notebooks with their stored outputs (nothing
# executes here), the API from the docstrings. -E: every page is read again, so
# that every warning shows (and fails the build) on every run.
docs: $(STAMP)
	$(BIN)/python -m sphinx -b html -E -W --keep-going -q docs docs/_build/html

# docs/notebooks/*.ipynb afresh from a run of each notebook, after changing a
# notebook or what it prints (notebooks/test_notebooks.py checks them each run).
notebook-outputs: $(STAMP)
	SYNK_STORE_NOTEBOOKS=1 $(PYTEST) -q -n $(JOBS) notebooks/test_notebooks.py -k test_notebook_runs

bench: $(STAMP)
	SYNK_CPU_DEVICES=8 $(BIN)/python -m synk bench overhead
	SYNK_CPU_DEVICES=8 $(BIN)/python -m synk bench dispatch
	SYNK_CPU_DEVICES=8 $(BIN)/python -m synk bench indexing
	SYNK_CPU_DEVICES=8 $(BIN)/python -m synk bench memory

clean:
	rm -rf $(VENV) $(NEWEST) .pytest_cache .ruff_cache .hypothesis docs/_build
