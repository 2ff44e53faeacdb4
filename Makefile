# make demo: set up .venv, generate the shapes dataset, convert, train, evaluate, score against the
# generator's ground truth (tfrecords_tools/shapes_report.py), caption.
# make test: the test suite on every CPU (what .ci/run runs).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO ?= demo_out

.PHONY: setup java gxx chromium demo test bench bench-parts bench-export bench-bombs clean

$(VENV)/.installed: requirements.txt requirements-test.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

# METEOR and the PTB tokenizer of pycocoevalcap run on java; without it they are skipped with a note.
java:
	@command -v java >/dev/null 2>&1 || \
	  { (apt-get update -qq && apt-get install -y -qq default-jre-headless >/dev/null) || \
	    echo "java could not be installed: METEOR will be skipped"; }

# The C++ loader test (tests/cpp/) compiles against the TensorFlow wheel's headers; without g++ it is skipped.
gxx:
	@command -v g++ >/dev/null 2>&1 || \
	  { (apt-get update -qq && apt-get install -y -qq g++ >/dev/null) || \
	    echo "g++ could not be installed: the C++ loader test will be skipped"; }

# The browser test of the HTML reports (tests/test_html_report.py) runs headless Chromium; without it it is skipped.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || \
	    echo "chromium could not be installed: the browser test of the HTML reports will be skipped"; }

setup: $(VENV)/.installed java gxx chromium

demo: setup
	rm -rf $(DEMO)
	$(PY) -m tfrecords_tools shapes --out $(DEMO)/data
	$(PY) -m caption_app train --config shapes --data $(DEMO)/data --run-dir $(DEMO)/run
	$(PY) -m caption_app evaluate --run-dir $(DEMO)/run --split test
	$(PY) -m tfrecords_tools.shapes_report $(DEMO)/run --objects $(DEMO)/data/raw/objects.json
	$(PY) -m caption_app caption --run-dir $(DEMO)/run \
	  $$(head -n 4 $(DEMO)/data/raw/Flickr_8k.testImages.txt | sed 's|^|$(DEMO)/data/raw/images/|')
	@echo "data: $(DEMO)/data  run dir: $(DEMO)/run  metrics: $(DEMO)/run/metrics.json  TensorBoard: $(DEMO)/run/logs"

# One worker per CPU, each taking whole test files (their module fixtures are built once).
test: setup
	$(PY) -m pytest -q -n auto --dist loadfile

# The benchmark suite (bench/suite.py: ratios side by side, one process); bench-parts: bench/run.py.
bench: setup
	$(PY) bench/suite.py

bench-parts: setup
	$(PY) bench/run.py

# The exported InceptionV3 captioner vs its backbone on CPU (a few minutes).
bench-export: setup
	$(PY) bench/export_bench.py

# Decompression bombs sent to serving_default: peak memory and time per call (a minute or two).
bench-bombs: setup
	$(PY) bench/image_bombs.py

clean:
	rm -rf $(DEMO) .pytest_cache
