# The two commands of the README:
#   make demo   create .venv, install, index the bundled sample (data/sample) and query it, offline
#   make test   create .venv, install, run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
MODEL  ?= builtin
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test lint bench clean

install: $(VENV)/.installed

# torch and torchvision come pinned from requirements.txt in the same pip command as everything else
$(VENV)/.installed: pyproject.toml requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt -e '.[dev,serve,ray]'
	touch $@

demo: install
	$(BIN)/mmsearch index data/sample --out .demo.mms --model $(MODEL)
	$(BIN)/mmsearch query "a cat" --collection .demo.mms -k 3
	$(BIN)/mmsearch query "a red car" --collection .demo.mms -k 3
	$(BIN)/mmsearch query --image data/sample/lighthouse.jpg --modality text --collection .demo.mms -k 3

test: install
	$(BIN)/python -m pytest -q tests

lint: install
	$(BIN)/ruff check mmsearch tests benchmarks tools

bench: install
	$(BIN)/python benchmarks/index_query.py

clean:
	rm -rf .demo.mms $(VENV)
