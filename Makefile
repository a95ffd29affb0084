# Two entry points, both self-contained on a fresh machine with Python 3.11:
#   make reproduce   set up .venv, run the six notebooks with papermill, write figures/ and results/
#   make test        set up .venv, run pytest on tests/ and nbval on the committed notebooks
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
PARAMS ?= notebooks/params/default.yaml
JOBS   ?= 2
EXECUTED  := build/executed
# --durations: each pass ends with its slowest items (notebook cells, the browser and Ray tests), so a slower
# `make test` shows where its time went.
PYTEST    := $(BIN)/python -m pytest -p no:cacheprovider --nbval --nbval-current-env --durations=12 --durations-min=10
# The locked environment (docs/reproducibility.md): requirements/lock.txt pins every package for Python 3.11 on Linux,
# macOS and Windows; `make lock` regenerates it with this uv.
LOCK      := requirements/lock.txt
UV_VERSION := 0.13.9
UV        := $(VENV)/uv/bin/uv

# CPU code paths pinned for `reproduce`, `notebooks` and `test`, so that x86 hosts with AVX2 run the
# same float kernels (docs/reproducibility.md): MKL's AVX2 path, ATen's AVX2 kernels, oneDNN up to
# AVX2, one thread (this model gains nothing from more; a thread count changes reduction order).
# Elsewhere (ARM, other ISAs) only the thread count is pinned.
ifeq ($(shell uname -m),x86_64)
PINNED := MKL_CBWR=AVX2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
else
PINNED := OMP_NUM_THREADS=1
endif
# Another host, simulated on every `make test`: MKL's SSE-compatible path and oneDNN up to SSE4.1, so other
# float kernels and other low bits from the first step on. The notebooks must pass their checks there too
# (trained numbers within the seed spread). ATen keeps its AVX2 kernels: without them (ATEN_CPU_CAPABILITY=
# default) a MetaBalance epoch gave the same metrics to the last digit and took 1.6 times as long, not 1.15.
OTHER_HOST := MKL_CBWR=COMPATIBLE ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=SSE41 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
# Each trained notebook runs in one of the two passes, chosen so that both take about as long on 2 cores: the
# pinned pass takes the unit tests, 01 (no training, integer results), 02 (directions of gradient ratios), the
# study's comparison (04: its runs train to the patience rule) and the balance map (05, the longest grid); the
# other host's pass takes the relax-factor sweep (03, trained to the patience rule too), every balancer (06),
# the Ray grid tests (they compare the two executors within one process's CPU code paths) and the browser test
# (smoke scale). The regression net of training trajectories runs in both: its tolerances must hold on both paths.
OTHER_HOST_TESTS := notebooks/03_relax_factor.ipynb notebooks/06_all_methods.ipynb \
	tests/test_results.py tests/test_trajectories.py tests/test_ray_grid.py tests/test_lab.py
PINNED_ONLY_SKIPS := --ignore=tests/test_ray_grid.py --ignore=tests/test_lab.py \
	--ignore=notebooks/03_relax_factor.ipynb --ignore=notebooks/06_all_methods.ipynb

.PHONY: setup lock reproduce notebooks decision test clean

setup: $(VENV)/.installed

# Every package at the exact version of the lock (torch 2.13.0 included), then mbkit itself without
# resolving anything again; setuptools, its build backend, comes from the lock too (no build isolation).
# `pip check` fails if pyproject.toml gained a core dependency that the lock lacks (then `make lock`).
$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $@

# Re-resolve the lock with uv (metadata only; nothing is installed). Keeps the current pins that still
# satisfy pyproject.toml; `make lock LOCK_FLAGS=--upgrade` moves everything to the newest allowed.
lock: $(UV)
	$(UV) pip compile pyproject.toml requirements/pins.in --extra notebooks --extra test --extra ray \
	  --universal --python-version 3.11 --fork-strategy fewest --excludes requirements/lock-excludes.txt \
	  --custom-compile-command "make lock" $(LOCK_FLAGS) -o $(LOCK)

$(UV):
	$(PYTHON) -m venv $(VENV)/uv
	$(VENV)/uv/bin/python -m pip install --quiet uv==$(UV_VERSION)

# Two notebooks at a time, each in its own one-thread process (one per core of a 2-core machine; the numbers do
# not depend on it): `make reproduce JOBS=1` runs them one after another.
reproduce: setup
	env $(PINNED) $(BIN)/python -m mbkit reproduce --params $(PARAMS) --out $(EXECUTED) --jobs $(JOBS)

# Maintainers: re-run the notebooks and store the executed copies (with outputs) in notebooks/.
notebooks: setup
	env $(PINNED) $(BIN)/python -m mbkit reproduce --params $(PARAMS) --out $(EXECUTED) --jobs $(JOBS) --update-notebooks

# The decision (docs/decision.md): notebooks 03 and 04 at the seeds their headline comparisons need, every run
# a Ray task on this machine's cores, into results/decision/ and figures/decision/. Not part of `reproduce`: it
# does not fit its 25 minutes. A killed run trains only the missing runs when started again (build/runs/decision).
DECISION := notebooks/params/decision.yaml
decision: setup
	env $(PINNED) $(BIN)/python -m mbkit reproduce --params $(DECISION) --only 03_ --out build/decision --keep-readme
	env $(PINNED) $(BIN)/python -m mbkit reproduce --params $(DECISION) --only 04_ --out build/decision

# Two passes at once (one thread each, so 2 cores run both): unit tests + notebooks 01, 02, 04 and 05 on the
# pinned paths, and 03 and 06 on another host's paths, whose log is printed when both have finished.
test: setup
	@mkdir -p build
	@env $(OTHER_HOST) $(PYTEST) $(OTHER_HOST_TESTS) > build/test-other-host.log 2>&1 & other=$$!; \
	env $(PINNED) $(PYTEST) tests notebooks $(PINNED_ONLY_SKIPS); pinned=$$?; \
	wait $$other; rc=$$?; \
	echo "== the notebooks again under another host's CPU code paths ($(OTHER_HOST))"; \
	cat build/test-other-host.log; \
	test $$pinned -eq 0 -a $$rc -eq 0

clean:
	rm -rf $(VENV) $(EXECUTED)

# JupyterLab on the notebooks, from .venv: listens on 127.0.0.1 only, with the fresh random token Jupyter
# generates and prints in the URL (unless your own Jupyter config sets a token or password). The notebooks
# name the kernel `python3`; it must start .venv's interpreter, so one is installed into .venv
# (ipykernel install --sys-prefix) when `jupyter kernelspec list` finds none there. Kernels inherit the
# CPU code paths that `reproduce` pins, so a notebook run here checks out against the committed results.
define LAB_KERNEL_CHECK
import json, os, subprocess, sys
specs = json.loads(subprocess.run([sys.executable, "-m", "jupyter", "kernelspec", "list", "--json"],
                                  capture_output=True, text=True, check=True).stdout)["kernelspecs"]
k = specs.get("python3")
exe = k["spec"]["argv"][0] if k else None
ok = (k is not None and os.path.realpath(k["resource_dir"]).startswith(os.path.realpath(sys.prefix) + os.sep)
      and (exe in ("python", "python3", "python%d.%d" % sys.version_info[:2])
           or os.path.abspath(exe) == os.path.abspath(sys.executable)))
print("kernel python3:", k["resource_dir"] if k else "none", "->", sys.executable if ok else exe)
sys.exit(0 if ok else 1)
endef
export LAB_KERNEL_CHECK

.PHONY: lab
lab: setup
	@JUPYTER_PREFER_ENV_PATH=1 $(BIN)/python -c "$$LAB_KERNEL_CHECK" || \
	  $(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (ipykernel)"
	env $(PINNED) JUPYTER_PREFER_ENV_PATH=1 $(BIN)/python -m jupyter lab --ServerApp.ip=127.0.0.1 \
	  --ServerApp.root_dir="$(CURDIR)" --ServerApp.default_url=/lab/tree/notebooks \
	  $(if $(filter 0,$(shell id -u)),--allow-root)
