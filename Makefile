# difftop: two-command set-up. `make run` and `make test` create .venv and install what is
# missing; every step is skipped when already done, so a ready venv costs ~1 s.
#
#   make venv   create .venv (python3 -m venv) and install: torch==2.13.0 (CPU), then
#               `pip install -e '.[dev,theseus,rl,il,sims,cluster,tracking]'`, then theseus-ai itself (it has to be built
#               without build isolation against the installed torch; torch 2.13 brings the
#               setuptools>=77 that builds it), then Mesa 25's CPU Vulkan driver for ManiSkill
#               (tools/fetch_mesa.sh: unpacked into .venv/vulkan, the system is not touched)
#   make test   run the test suite           (PYTEST_ARGS="-k foo -x" to pass options)
#   make run    run the main job: `difftop rl preset=quick` (ARGS="key=value ..." for Hydra overrides)
#   make lint   ruff check

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
PIP := $(VPY) -m pip
TORCH_VERSION := 2.13.0
THESEUS_VERSION := 0.2.3
# The editable install is redone only when pyproject.toml changes (or the stamp is missing).
STAMP := $(VENV)/.stamp-$(shell cksum pyproject.toml | cut -d' ' -f1)

PYTEST_ARGS ?=
ARGS ?=

# Tests render MuJoCo off-screen; no OMP_NUM_THREADS is forced (torch picks its own default).
export MUJOCO_GL ?= egl

# `installed DIST VERSION` exits 0 when that exact distribution version is installed (no import).
installed = $(VPY) -c "import importlib.metadata as m, sys; \
sys.exit(m.version('$(1)').split('+')[0] != '$(2)')" 2>/dev/null

.PHONY: venv test run lint

venv:
	@test -x $(VPY) || { echo "creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@$(call installed,torch,$(TORCH_VERSION)) || $(PIP) install torch==$(TORCH_VERSION)
	@test -f $(STAMP) || { \
	  $(PIP) install -e '.[dev,theseus,rl,il,sims,cluster,tracking]' && rm -f $(VENV)/.stamp-* && touch $(STAMP); }
	@$(call installed,theseus-ai,$(THESEUS_VERSION)) || \
	  $(PIP) install --no-build-isolation --no-deps theseus-ai==$(THESEUS_VERSION)
	@test -f $(VENV)/vulkan/.stamp || tools/fetch_mesa.sh $(VENV)/vulkan || \
	  echo "make: warning: no Vulkan driver unpacked, ManiSkill tasks unavailable (rerun tools/fetch_mesa.sh)" >&2

# pytest's exit code 5 (no tests collected) is a failure too, with its own message.
test: venv
	@echo "$(VPY) -m pytest -q $(PYTEST_ARGS)"; rc=0; $(VPY) -m pytest -q $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: FAILED: pytest collected no tests (exit code 5)" >&2; fi; \
	exit $$rc

# The main job: DiffTOP on cartpole-swingup for 10k env steps (preset=quick, ~10 min on 2 CPU
# cores), then its learning curve. resume=true makes a second `make run` continue, not clash.
run: venv
	$(VENV)/bin/difftop rl preset=quick resume=true $(ARGS)
	$(VENV)/bin/difftop plot runs/quickstart out=runs/quickstart/curves.png reference=tdmpc-state

lint: venv
	$(VENV)/bin/ruff check .
