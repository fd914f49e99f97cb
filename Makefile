# Two commands set everything up on a fresh machine: `make run` and `make test`.
#
# One venv per interpreter: `.venv` for the default `python3`, `.venv-X.Y` for any other, so
# `make test PYTHON=~/.pyenv/versions/3.13.0/bin/python3` creates and uses .venv-3.13 and
# leaves .venv alone. `make check-all` runs lint, types and the tests on every Python >= 3.11
# this machine has (what CI runs: .ci/run).
PYTHON ?= python3
ifeq ($(PYTHON),python3)
VENV ?= .venv
else
PYTHON_VERSION := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
ifeq ($(PYTHON_VERSION),)
$(error PYTHON=$(PYTHON) does not run)
endif
VENV ?= .venv-$(PYTHON_VERSION)
endif
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install venv run test test-coverage test-fast test-compiled test-pure wheel fuzz lint types check check-all bench bench-one bench-quick bench-tools bench-resources clean

# The modules mypyc compiles (fastgate/build.py COMPILED, the one list): an editable install
# holds their extension modules beside the sources, so editing one rebuilds on the next make.
# (fastgate also notices an edit made without make and runs the pure build, saying why.)
COMPILED_SOURCES := $(shell sed -n 's/^ *"fastgate\.\([a-z0-9_.]*\)",$$/fastgate\/\1.py/p' fastgate/build.py | tr . / | sed 's,/py$$,.py,')

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml setup.py fastgate/build.py $(COMPILED_SOURCES) | $(PY)
	$(PIP) install --quiet -e .
	touch $@

# The test venv builds fastgate in itself (--no-build-isolation), with the build requirements
# (pyproject's [build-system] requires: setuptools, and mypy and the typed modules mypyc checks)
# installed first: they are dependencies of the venv anyway, and an isolated build installs
# all of them (mypy above all) a second time into a throwaway environment, a fifth of the
# build's CPU. The compile itself is the same.
BUILD_REQUIRES = $(shell $(PY) -c 'import tomllib; print(" ".join(repr(r) for r in tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))')

$(VENV)/.installed-test: pyproject.toml setup.py fastgate/build.py $(COMPILED_SOURCES) | $(PY)
	$(PIP) install --quiet $(BUILD_REQUIRES)
	$(PIP) install --quiet --no-build-isolation -e '.[test,dev]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

# The venv with the test and dev tools (the first step of every target below).
venv: $(VENV)/.installed-test

run: $(VENV)/.installed
	$(VENV)/bin/fastgate examples.hello:app --host $(HOST) --port $(PORT)

# pytest-xdist processes for `make test` (JOBS=0 runs the tests in one process). The e2e tests
# spend most of their time waiting (timeouts, drains, reloads, worker boots), so 4 processes
# keep a 2-core machine busy; worksteal hands a long test's neighbours to idle processes.
# PYTEST_ARGS adds pytest options, e.g. PYTEST_ARGS="--durations=30".
JOBS ?= 4
PYTEST_ARGS ?=
# Branch coverage of fastgate/ in every process the tests start (pyproject's [tool.coverage]),
# gathered per venv, combined and held at fail_under. The data file's path is absolute: the
# subprocesses run in other directories.
COVERAGE := COVERAGE_FILE=$(abspath $(VENV))/.coverage $(PY) -m coverage

PYTEST_OPTS = -q -n $(JOBS) --dist worksteal $(PYTEST_ARGS)
PYTEST = $(PY) -m pytest $(PYTEST_OPTS)

# The e2e tests start a few hundred `python -m fastgate` processes (and re-exec some): with
# PYTHONDONTWRITEBYTECODE set (as in CI) each would compile fastgate from source again,
# 0.2 s of CPU apiece. compileall writes the .pyc files once; Python still recompiles any
# source edited after them.
# pytest imports each test module through its assertion rewriter, whose output it caches in
# .pyc files of its own (which compileall does not write): with PYTHONDONTWRITEBYTECODE set,
# every pytest-xdist process rewrote every test module again, about 4 s of CPU apiece. One
# collection with writing allowed leaves them there for the run's processes to read (pytest
# checks each against its source). Its output and status are dropped: the run itself reports
# a module that fails to import.
PRECOMPILE = $(PY) -m compileall -q fastgate tests benchmarks examples && \
	{ PYTHONDONTWRITEBYTECODE= $(PY) -m pytest -qq --collect-only -p no:cacheprovider >/dev/null 2>&1 || true; }

# `make test`: the whole suite against both builds: the pure build under branch coverage
# (test-coverage: coverage.py cannot trace compiled code), then the compiled build
# (test-compiled), the second run whatever the first's outcome. The coverage figure is
# reported after a failed test too; test-coverage's exit status is pytest's, else the
# report's (below fail_under: 2).
test: $(VENV)/.installed-test
	@$(MAKE) --no-print-directory test-coverage; first=$$?; \
	$(MAKE) --no-print-directory test-compiled; exit $$(( first ? first : $$? ))

test-coverage: $(VENV)/.installed-test
	@$(PRECOMPILE)
	@$(COVERAGE) erase
	FASTGATE_PURE=1 TEST_BUILD=pure $(COVERAGE) run -m pytest $(PYTEST_OPTS); status=$$?; \
	$(COVERAGE) combine --quiet && $(COVERAGE) report; report=$$?; \
	exit $$(( status ? status : report ))

test-fast: $(VENV)/.installed-test
	$(PY) -m pytest -q -m "not e2e"

# The whole suite against one build, without coverage; tests/test_build.py fails when
# another build runs (TEST_BUILD). PYTEST_ARGS passes pytest options, e.g.
# PYTEST_ARGS="tests/test_e2e_load.py".
test-compiled: $(VENV)/.installed-test
	@$(PRECOMPILE)
	TEST_BUILD=compiled $(PYTEST)

test-pure: $(VENV)/.installed-test
	@$(PRECOMPILE)
	FASTGATE_PURE=1 TEST_BUILD=pure $(PYTEST)

# A platform wheel (compiled where a C compiler works) and an sdist (which compiles when
# installed, or installs the pure build without a compiler) in dist/.
wheel: $(VENV)/.installed
	rm -rf dist build/lib* build/bdist*
	$(PIP) wheel --quiet --no-deps --wheel-dir dist .
	$(PY) -m build --version >/dev/null 2>&1 || $(PIP) install --quiet build
	$(PY) -m build --sdist --outdir dist .
	@ls -l dist

# The hypothesis tests with the long budget (tests/conftest.py, profile "fuzz"); no per-test
# timeout, statistics (disagreement categories, rejections) printed at the end.
FUZZ_ARGS ?=
fuzz: $(VENV)/.installed-test
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q -m fuzz --timeout 0 --hypothesis-show-statistics $(FUZZ_ARGS)

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check fastgate tests benchmarks

types: $(VENV)/.installed-test
	$(VENV)/bin/mypy

# The suite's runs on each Python, one make target per build (`make check`, check-all): the
# pure build under coverage, and the compiled build. check-all runs TEST_RUNS on the first
# Python (the default python3) and TEST_RUNS_MORE on the others: both builds everywhere, but
# coverage, which doubles a run's CPU (565 s against ~300 s), once: the figure is a property of
# the source, and three coverage runs do not fit CI's time budget on a 2-core machine.
TEST_RUNS ?= test-coverage test-compiled
TEST_RUNS_MORE ?= test-pure test-compiled

check: lint types $(TEST_RUNS)

# Every Python >= 3.11 on this machine, each in its own venv (.ci/pythons lists them and names
# the ones it looked for and did not find): the venvs built at once, ruff once, mypy on each
# Python, then the TEST_RUNS and TEST_RUNS_MORE, CI_PARALLEL (default 2) at a time
# (.ci/check-all says why). Each step prints its wall time; a failing step does not stop the
# others, and the last line names every one that failed.
check-all:
	@TEST_RUNS='$(TEST_RUNS)' TEST_RUNS_MORE='$(TEST_RUNS_MORE)' MAKE='$(MAKE)' .ci/check-all

# Benchmarks: the peers live in their own venv so they never leak into fastgate's, one per
# Python like fastgate's (.venv-peers, .venv-peers-3.13).
# BENCH_ARGS passes options to benchmarks/run.py (see its --help), e.g. BENCH_ARGS="--repeats 5".
PEERS_VENV ?= benchmarks/.venv-peers$(if $(PYTHON_VERSION),-$(PYTHON_VERSION))
PEERS_PY := $(PEERS_VENV)/bin/python
# Each bench-one run writes its own report: RESULTS.md for the default python3,
# RESULTS-py3.13.md for PYTHON=.../3.13.
BENCH_OUT ?= benchmarks/RESULTS$(if $(PYTHON_VERSION),-py$(PYTHON_VERSION)).md
# `make bench`: the default python3 and the newest Python .ci/pythons finds (3.13 here): on
# each, fastgate's compiled and pure builds beside the peers.
BENCH_PYTHONS ?= python3 $(filter-out python3,$(shell .ci/pythons 2>/dev/null | tail -n 1))

$(PEERS_VENV)/.installed: benchmarks/requirements-peers.txt
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_PY) -m pip install --quiet --upgrade pip
	$(PEERS_PY) -m pip install --quiet -r benchmarks/requirements-peers.txt
	touch $@

bench-tools:
	@command -v wrk >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq wrk >/dev/null; \
	  else echo "make bench: wrk is not installed and installing it needs root: skipping the install;" \
	            "run 'sudo apt-get install wrk' and re-run"; fi; }

bench:
	@for py in $(BENCH_PYTHONS); do $(MAKE) --no-print-directory bench-one PYTHON=$$py || exit $$?; done

# tls_files.py: Starlette FileResponse (pathsend) and TLS, vs uvicorn and granian (needs starlette:
# the test extras), into TLS_FILES.md: on the default python3 only.
bench-one: $(VENV)/.installed-test $(PEERS_VENV)/.installed bench-tools
	$(PEERS_PY) benchmarks/run.py --fastgate-python $(PY) --peers-python $(PEERS_PY) --out $(BENCH_OUT) $(BENCH_ARGS)
	$(if $(PYTHON_VERSION),,$(PEERS_PY) benchmarks/tls_files.py --fastgate-python $(PY) --peers-python $(PEERS_PY))

bench-quick: $(VENV)/.installed $(PEERS_VENV)/.installed bench-tools
	$(PEERS_PY) benchmarks/run.py --quick --fastgate-python $(PY) --peers-python $(PEERS_PY) $(BENCH_ARGS)

# Load and resource figures (benchmarks/RESOURCES.md): 10k idle connections, slowloris, a 1M-request
# soak, idle WebSockets; one worker, uvicorn beside it. RESOURCES_ARGS="--quick" for a short run.
bench-resources: $(VENV)/.installed $(PEERS_VENV)/.installed bench-tools
	$(PY) benchmarks/resources.py --peers-python $(PEERS_PY) $(RESOURCES_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache build dist *.egg-info .coverage .coverage.* fastgate__mypyc*.so fastgate/_build_info.json
	find fastgate -name '*.so' -delete
