# Two entry points, both usable on a fresh Debian/Ubuntu machine as root:
#   make demo   install everything, build the Django example with pybuild, run it on :8000
#   make test   install everything, run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
APT_PACKAGES := runc crun skopeo umoci docker-registry busybox-static mmdebstrap \
	buildah podman docker.io containerd iproute2 curl ca-certificates apache2-utils \
	openssl python3-pip netavark aardvark-dns iptables util-linux tcpdump conntrack git openssh-client openssh-server \
	qemu-user-static uidmap fuse-overlayfs slirp4netns
STAMP := .make-stamps
# Most tests wait on runc, registries and engines, not the CPU: three workers on two cores.
TEST_WORKERS ?= 3

.PHONY: demo test lint deps apt pip bytecode clean

deps: apt pip bytecode

apt: $(STAMP)/apt
$(STAMP)/apt: Makefile
	@mkdir -p $(STAMP)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@touch $@

pip: $(STAMP)/pip
$(STAMP)/pip: pyproject.toml
	@mkdir -p $(STAMP)
	PIP_BREAK_SYSTEM_PACKAGES=1 $(PYTHON) -m pip install -q --disable-pip-version-check \
		--root-user-action=ignore -e '.[test]'
	@touch $@

# Start-up time is part of every build: precompile, so runs read .pyc files even where
# PYTHONDONTWRITEBYTECODE is set (it stops Python writing them, not reading them).
bytecode:
	@$(PYTHON) -m compileall -q pybuild

# Lint and types first: they take seconds and fail fast.
test: deps
	$(PYTHON) -m ruff check pybuild tests bench
	$(PYTHON) -m mypy
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup tests

lint: deps
	$(PYTHON) -m ruff check pybuild tests bench
	$(PYTHON) -m mypy

demo: deps
	bash examples/django-app/demo.sh

clean:
	rm -rf $(STAMP)
