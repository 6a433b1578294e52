# Everything a fresh Debian machine needs, installed by the targets themselves; safe to repeat.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PKGS := etcd-server etcd-client containernetworking-plugins iproute2 iputils-ping \
            iperf3 nftables iptables tcpdump openssl python3-venv docker.io busybox-static \
            podman runc jq prometheus
# what `make image` needs (and so `make test`, whose tests/e2e/test_image.py builds the image)
IMAGE_PKGS := mmdebstrap debian-archive-keyring podman runc
PYTEST_ARGS ?=

.PHONY: test demo setup apt image-apt image venv lint bench clean install uninstall chaos

test: setup image-apt
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The chaos test over several seeds and longer fault sequences (make test runs one seed).
SEED ?= 1 2 3 4 5
FAULTS ?= 30
chaos: setup
	for s in $(SEED); do CHAOS_SEED=$$s CHAOS_FAULTS=$(FAULTS) $(PY) -m pytest -q -s \
	    -p no:cacheprovider --timeout 1800 tests/e2e/test_chaos.py || exit 1; done

demo: setup
	$(VENV)/bin/vxnet demo

setup: apt venv

# dpkg is asked every time (cheap), so a machine that lost a package gets it back.
define apt_install
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
	    | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing:" $$missing; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
endef

apt:
	$(call apt_install,$(APT_PKGS))

image-apt:
	$(call apt_install,$(IMAGE_PKGS))

# The agent image, vxnet:<version> and vxnet:<version>-g<commit>, on a base made from Debian
# packages (mmdebstrap, podman import; rebuilt only when missing or its recipe changed), with
# deploy/Containerfile. A second run with unchanged sources only checks. See docs/install.md.
image: image-apt
	deploy/build-image.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# A self-contained install on a node: a virtual environment under PREFIX holding vxnet and
# vxnet-cni, the systemd unit, the docs. Safe to repeat; `make uninstall` takes it away again.
PREFIX ?= /opt/vxnet
UNITDIR ?= /etc/systemd/system

install:
	test -x $(PREFIX)/bin/python || python3 -m venv $(PREFIX)
	$(PREFIX)/bin/pip install -q --upgrade pip
	$(PREFIX)/bin/pip install -q --force-reinstall --no-deps . && $(PREFIX)/bin/pip install -q .
	install -D -m 644 deploy/systemd/vxnet.service $(UNITDIR)/vxnet.service
	install -d $(PREFIX)/share/doc
	install -m 644 docs/*.md $(PREFIX)/share/doc/
	$(PREFIX)/bin/vxnet --version

uninstall:
	rm -f $(UNITDIR)/vxnet.service
	rm -rf $(PREFIX)

lint: venv
	$(VENV)/bin/ruff check .

# The benchmarks with their figures for docs/benchmarks.md (matplotlib from the bench extra).
bench: setup
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) bench/kernel_bench.py --sizes 1000,2000,5000,10000,20000 --reps 3 \
	    --plot docs/img/kernel-convergence.png
	$(PY) bench/agent_bench.py --sizes 1000,5000,20000 --reps 3 --plot-dir docs/img
	$(PY) bench/peer_memory.py --peers 20000
	$(PY) bench/etcd_client_bench.py --peers 20000 --reps 3
	$(PY) bench/controlplane_bench.py --nodes 100,250,500,1000 --plot docs/img/controlplane.png

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
