# Two commands: `make demo` (set up + quick study on generated data + report) and `make test` (set up + tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DATA ?= data/sample
DEMO_STUDY ?= runs/demo
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM := false
export MPLBACKEND := Agg
export GRADIO_ANALYTICS_ENABLED := False

.PHONY: setup demo test clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt setup.cfg
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

demo: setup
	$(PY) scripts/make_sample_data.py $(DEMO_DATA) --classes 10 --per-class 80 --size 96 --seed 0
	$(PY) scripts/prepare_data.py --data-dir $(DEMO_DATA) --output-dir $(DEMO_STUDY) --train 50 --val 15 --test 15
	$(PY) scripts/study.py --data-dir $(DEMO_DATA) --splits $(DEMO_STUDY)/splits.csv --output-dir $(DEMO_STUDY) --quick
	$(PY) scripts/report.py --study $(DEMO_STUDY)

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) data runs .pytest_cache
