# Two entry points: `make demo` (the main job on an embedded default) and `make test`.
VENV ?= .venv
STAMP := $(VENV)/.bootstrapped

.PHONY: demo test bench image clean

demo: $(STAMP)
	$(VENV)/bin/gateway demo

test: $(STAMP)
	VENV=$(VENV) scripts/check

bench: $(STAMP)
	$(VENV)/bin/python bench/detect_overhead.py
	$(VENV)/bin/python bench/failover.py
	$(VENV)/bin/python bench/election.py

image:
	scripts/build-image

$(STAMP): pyproject.toml scripts/bootstrap
	VENV=$(VENV) scripts/bootstrap
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info
