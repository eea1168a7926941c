# Set-up and everyday commands. Every target builds .venv itself, so a fresh machine needs only python3.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
# torch first, pinned: this resolves to the local CPU wheel; an unpinned torch pulls the CUDA build (GBs).
TORCH   := torch==2.13.0

.PHONY: demo test bench mutate clean sshd

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed-base: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[hf,export]'
	touch $@

$(VENV)/.installed-all: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[hf,export,test]'
	touch $@ $(VENV)/.installed-base

demo: $(VENV)/.installed-base
	$(BIN)/edgeprune demo

test: $(VENV)/.installed-all sshd
	$(BIN)/python -m pytest -q

# The remote runner's tests start real OpenSSH and dropbear servers on loopback (dropbear: what OpenWrt and
# Yocto/Buildroot boards run; its SFTP uses openssh-server's sftp-server). Installed when missing and we are
# root (CI is); otherwise those tests skip with the reason (and fail when CI=true).
sshd:
	@if command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing openssh-server (for the remote runner's tests)"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssh-server >/dev/null \
		|| { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssh-server >/dev/null; }; \
	else echo "note: sshd not installed and not root: the SSH tests will skip"; fi
	@if command -v dropbear >/dev/null 2>&1 || [ -x /usr/sbin/dropbear ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing dropbear-bin (for the remote runner's tests against dropbear)"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q dropbear-bin >/dev/null \
		|| { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dropbear-bin >/dev/null; }; \
	else echo "note: dropbear not installed and not root: the dropbear tests will skip"; fi

bench: $(VENV)/.installed-all
	$(BIN)/python bench/plan_prune.py --out bench/out/plan_prune.md
	$(BIN)/python bench/export_speed.py --out bench/out/export_speed.md
	$(BIN)/python bench/export_time.py --out bench/out/export_time.md
	$(BIN)/python bench/runner_overhead.py --out bench/out/runner_overhead.md
	$(BIN)/python bench/quality.py --out bench/out/quality.md --json bench/out/quality.json

# Mutation testing of the core modules (bench/mutate.toml): how many planted bugs the tests catch, per module.
# Not part of `make test`: it runs the suite once per mutant (see BENCHMARKS.md for how long it takes).
$(VENV)/.installed-mutate: $(VENV)/.installed-all
	$(BIN)/pip install -q -e '.[hf,export,test,mutate]'
	touch $@

mutate: $(VENV)/.installed-mutate sshd
	$(BIN)/python bench/mutate.py --out bench/out/mutate.md --json bench/out/mutate.json

clean:
	rm -rf $(VENV) build dist .pytest_cache
