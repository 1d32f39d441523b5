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

# On a fresh clone the first `make test` installs (the venv then lacks pytest or the installed tcclip and its
# dependencies; `import tcclip` alone would find the checkout's folder).
test: $(PY)
	@$(PY) -c "import pytest, importlib.metadata as m; m.version('tcclip')" 2>/dev/null || $(MAKE) install
	$(PY) -m pytest -q

test-slow: $(PY)
	@$(PY) -c "import pytest, importlib.metadata as m; m.version('tcclip')" 2>/dev/null || $(MAKE) install
	$(PY) -m pytest -q -m slow

lint: $(PY)
	$(PY) -m ruff check tcclip tests benchmarks
	$(PY) -m ruff format --check tcclip tests benchmarks

format: $(PY)
	$(PY) -m ruff format tcclip tests benchmarks
	$(PY) -m ruff check --fix tcclip tests benchmarks

# Demo on this CPU: synthetic videos, a tiny TC-CLIP trained from random weights (configs/demo.yaml), its test
# accuracy and one video's prediction. Everything goes under runs/; DEMO_DATA is kept and reused while it was made
# with the same DEMO_SYNTH_ARGS (recorded in it). The classes carry a colour each (--class-colours): a model trained
# from random weights for two minutes does not learn motion alone (docs/datasets.md, "Synthetic data and `make demo`").
DEMO_DATA ?= runs/demo_data
DEMO_RUN ?= runs/demo
DEMO_SYNTH_ARGS ?= --classes MoveLeft,MoveRight,MoveUp,MoveDown --class-colours --videos-per-class 200 --size 32 --num-frames 16-24

demo:
	@$(PY) -c "import tcclip.training.module" 2>/dev/null || $(MAKE) install
	@if [ "$$(cat $(DEMO_DATA)/synth_args.txt 2>/dev/null)" != "$(DEMO_SYNTH_ARGS)" ]; then \
		$(VENV)/bin/tcclip data synth --out $(DEMO_DATA) $(DEMO_SYNTH_ARGS) && \
		echo "$(DEMO_SYNTH_ARGS)" > $(DEMO_DATA)/synth_args.txt; \
	fi
	rm -rf $(DEMO_RUN)
	$(VENV)/bin/tcclip fit --config configs/demo.yaml --data.init_args.root $(DEMO_DATA) --trainer.default_root_dir $(DEMO_RUN)
	$(VENV)/bin/tcclip test --config configs/demo.yaml --data.init_args.root $(DEMO_DATA) --trainer.default_root_dir $(DEMO_RUN) --ckpt_path last
	@ckpt=$$(ls -t $(DEMO_RUN)/lightning_logs/*/checkpoints/last.ckpt | head -n 1); \
	video=$(DEMO_DATA)/$$(head -n 1 $(DEMO_DATA)/test.txt | cut -d' ' -f1); \
	$(VENV)/bin/tcclip predict "$$video" --checkpoint "$$ckpt" --top-k 3 --workers 0
	@$(PY) -c 'import json, pathlib; runs = pathlib.Path("$(DEMO_RUN)").rglob("results.json"); \
	s = json.loads(max(runs, key=lambda p: p.stat().st_mtime).read_text())["sets"]["split1"]; \
	print("demo: test top-1 %.1f%% over %d videos (chance %.0f%%)" % (s["top1"], s["num_videos"], 100 / len(s["per_class_top1"])))'

clean:
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info

# Protocol benchmarks (the paper's tables) through `tcclip sweep`: one run directory per grid cell under runs/, tables,
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

# Speed and memory of the fast and the plain path, and of the official code with --official DIR (ViT-B/16, T=16, the
# same weights; docs/benchmarks.md). SPEED_ARGS='--quick', '--device cuda --dtype bf16', '--checkpointing', '--official DIR', '--baseline DIR', '--json out.json'.
benchmark-speed: $(PY)
	$(PY) benchmarks/throughput.py $(SPEED_ARGS)

# Data-loading throughput: clips/s per worker, per video backend, original files vs `tcclip data prepare` copies, on
# clips encoded like each dataset (docs/decoding.md, docs/benchmarks.md). DATA_ARGS='--data DIR --list val.txt --clips 32'.
benchmark-data: $(PY)
	$(PY) benchmarks/dataloader.py $(DATA_ARGS)
