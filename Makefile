# Two entry points, both self-contained on a fresh machine with Python 3.11:
#   make reproduce   set up .venv, run the four notebooks with papermill, write figures/ and results/
#   make test        set up .venv, run pytest on tests/ and nbval on the committed notebooks
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
PARAMS ?= notebooks/params/default.yaml
EXECUTED  := build/executed

.PHONY: setup reproduce notebooks test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[notebooks,test]"
	touch $@

reproduce: setup
	$(BIN)/python -m mbkit reproduce --params $(PARAMS) --out $(EXECUTED)

# Maintainers: re-run the notebooks and store the executed copies (with outputs) in notebooks/.
notebooks: setup
	$(BIN)/python -m mbkit reproduce --params $(PARAMS) --out $(EXECUTED) --update-notebooks

test: setup
	$(BIN)/python -m pytest -p no:cacheprovider --nbval --nbval-current-env tests notebooks

clean:
	rm -rf $(VENV) $(EXECUTED)
