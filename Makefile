# The two commands a newcomer needs: `make demo` and `make test`. Each does its own set-up
# (apt packages, venv, patched QEMU, guest images) and is quick once that is done.
VENV := .venv
DQEMU := $(VENV)/bin/dqemu

.PHONY: demo test setup unit lint

setup:
	@scripts/bootstrap
	@$(DQEMU) build-qemu
	@$(DQEMU) build-guest

demo: setup
	$(DQEMU) loopback --spec examples/demo.toml

test: setup lint
	$(VENV)/bin/python -m pytest tests --durations=25

unit:
	@scripts/bootstrap
	$(VENV)/bin/python -m pytest tests -m "not integration"

lint:
	$(VENV)/bin/ruff check .
