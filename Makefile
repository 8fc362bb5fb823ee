# The two commands a newcomer needs: `make demo` and `make test`. Each does its own set-up
# (apt packages, venv, patched QEMU, guest images) and is quick once that is done.
VENV := .venv
DQEMU := $(VENV)/bin/dqemu

.PHONY: demo test test-rdma test-dsm setup unit lint

setup:
	@scripts/bootstrap
	@$(DQEMU) build-qemu
	@$(DQEMU) build-guest

demo: setup
	$(DQEMU) loopback --spec examples/demo.toml

test: setup lint
	$(VENV)/bin/python -m pytest tests -m "not testhost and not dsmlinux" --durations=25

# the Linux checks over memory_mode "dsm" (minutes each)
test-dsm: setup
	$(VENV)/bin/python -m pytest tests -m dsmlinux

# the RDMA transport's tests, inside a nested TCG guest with soft-RoCE (5-10 min)
test-rdma: setup
	$(VENV)/bin/python -m pytest tests -m testhost

unit:
	@scripts/bootstrap
	$(VENV)/bin/python -m pytest tests -m "not integration"

lint:
	$(VENV)/bin/ruff check .
