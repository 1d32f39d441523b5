PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# This machine caps pip at these releases; elsewhere pip resolves torch from pyproject's range.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install test test-slow lint format demo splits benchmark-speed benchmark-data clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

install: $(PY)
	$(PY) -m pip install $(TORCH_PIN)
	$(PY) -m pip install -e ".[dev]"

test: $(PY)
	$(PY) -m pytest -q

test-slow: $(PY)
	$(PY) -m pytest -q -m slow

lint: $(PY)
	$(PY) -m ruff check tcclip tests benchmarks
	$(PY) -m ruff format --check tcclip tests benchmarks

format: $(PY)
	$(PY) -m ruff format tcclip tests benchmarks
	$(PY) -m ruff check --fix tcclip tests benchmarks

clean:
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info

# Protocol benchmarks (spec section 7) through `tcclip sweep`: one run directory per grid cell under runs/, tables,
# CSV and plots beside the paper's numbers under results/. Finished cells are skipped, dead runs resume. Variables:
# SMOKE=1 (synthetic data, tiny model, a few CPU steps), DATASETS=hmdb51,ucf101  SHOTS=2,8  SEEDS=1  VARIANTS=plain,llm
# ONLY='hmdb51_k8_*'  CKPT_DIR=folder (evaluate those checkpoints instead of training)  GPUS=0,1,2,3 (one cell per GPU)
# SWEEP_ARGS='--slurm --partition gpu --gpus-per-node 4' (any other `tcclip sweep --help` option).
BENCH_ARGS = $(if $(filter 1 yes true,$(SMOKE)),--smoke) $(if $(DATASETS),--datasets $(DATASETS)) \
	$(if $(SHOTS),--shots $(SHOTS)) $(if $(SEEDS),--seeds $(SEEDS)) $(if $(VARIANTS),--variants $(VARIANTS)) \
	$(if $(ONLY),--only '$(ONLY)') $(if $(CKPT_DIR),--ckpt-dir $(CKPT_DIR)) $(if $(GPUS),--gpus $(GPUS)) $(SWEEP_ARGS)

.PHONY: benchmarks benchmark-zero-shot benchmark-few-shot benchmark-base2novel benchmark-fully-supervised

benchmark-zero-shot: $(PY)
	$(PY) benchmarks/protocols.py zero_shot $(BENCH_ARGS)

benchmark-few-shot: $(PY)
	$(PY) benchmarks/protocols.py few_shot $(BENCH_ARGS)

benchmark-base2novel: $(PY)
	$(PY) benchmarks/protocols.py base2novel $(BENCH_ARGS)

benchmark-fully-supervised: $(PY)
	$(PY) benchmarks/protocols.py fully_supervised $(BENCH_ARGS)

benchmarks: $(PY)
	$(PY) benchmarks/protocols.py all $(BENCH_ARGS)

# Speed of the fast execution path against the reference path (ViT-B/16, T=16, random weights; one table).
# SPEED_ARGS='--quick' (tiny settings), '--device cuda --dtype bf16', '--checkpointing', '--compile', '--json out.json'.
benchmark-speed: $(PY)
	$(PY) benchmarks/throughput.py $(SPEED_ARGS)
