# netleak: `make demo` and `make test` on a fresh Debian/Ubuntu machine, as root.
SHELL := /bin/sh
VENV := .venv
PY := $(VENV)/bin/python
SYSPY := /usr/bin/python3
PREFIX ?= /usr/local
OPT ?= /opt/netleak
HOOKS_DIR ?= /usr/share/containers/oci/hooks.d
UNIT_DIR ?= /etc/systemd/system

.PHONY: deps venv demo test test-unit test-privileged bench soak deb install uninstall clean

deps: .stamp-deps
.stamp-deps: scripts/install-deps.sh
	sh scripts/install-deps.sh
	touch $@

# what the tests add: podman, runc, debootstrap, busybox
.stamp-test-deps: .stamp-deps scripts/install-deps.sh
	sh scripts/install-deps.sh test
	touch $@

# A venv from the system interpreter with --system-site-packages, so the
# distribution's BCC module is importable. Installed editable ("compat": a
# plain .pth entry, no import hook on netleak-exec's hot path).
venv: $(VENV)/.stamp
$(VENV)/.stamp: .stamp-deps pyproject.toml
	[ -x $(PY) ] || $(SYSPY) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]' \
		--config-settings editable_mode=compat
	touch $@

demo: venv
	$(VENV)/bin/netleak demo

test: venv .stamp-test-deps
	$(PY) -m pytest -ra tests

test-unit: venv
	$(PY) -m pytest -q tests/unit

# what the benchmark adds: iperf3, microsocks, proxychains4
.stamp-bench-deps: .stamp-deps scripts/install-deps.sh
	sh scripts/install-deps.sh bench
	touch $@

$(VENV)/.stamp-bench: $(VENV)/.stamp
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,bench]' \
		--config-settings editable_mode=compat
	touch $@

bench: venv .stamp-bench-deps $(VENV)/.stamp-bench
	$(PY) bench/run.py $(BENCH_ARGS)

# the leak matrix in full (a short version runs in `make test`)
soak: venv
	$(PY) tests/soak.py

# what building the Debian package takes: debhelper, dh-python, lintian
.stamp-deb-deps: .stamp-deps scripts/install-deps.sh
	sh scripts/install-deps.sh deb
	touch $@

# The Debian package, built from a copy of the tree under build/deb (the
# tree itself stays clean), into dist/; lintian checks it.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
DEB := dist/netleak_$(VERSION)_all.deb
deb: $(DEB)
$(DEB): .stamp-deb-deps pyproject.toml debian/* bpf/* hooks/* examples/* bin/* \
		$(shell find netleak_hook -name '*.py')
	rm -rf build/deb && mkdir -p build/deb/src dist
	tar -cf - --exclude=./.venv --exclude=./.git --exclude=./build --exclude=./dist \
		--exclude='*.egg-info' --exclude=__pycache__ --exclude='./.stamp-*' . \
		| tar -xf - -C build/deb/src
	# the distribution's python3 and tools, not an interpreter earlier on PATH
	cd build/deb/src && env PATH=/usr/sbin:/usr/bin:/sbin:/bin \
		dpkg-buildpackage -b -us -uc >../build.log 2>&1 \
		|| { tail -30 ../build.log; exit 1; }
	cp build/deb/netleak_$(VERSION)_all.deb $@
	env PATH=/usr/sbin:/usr/bin:/sbin:/bin lintian --fail-on error $@
	@echo "built: $@"

# System-wide: a venv under $(OPT), its commands linked into $(PREFIX)/bin.
install: deps
	[ -x $(OPT)/venv/bin/python ] || $(SYSPY) -m venv --system-site-packages $(OPT)/venv
	$(OPT)/venv/bin/pip install -q --disable-pip-version-check .
	mkdir -p $(PREFIX)/bin
	for c in netleak netleak-exec netleak-hook; do \
		ln -sfn $(OPT)/venv/bin/$$c $(PREFIX)/bin/$$c; done
	$(OPT)/venv/bin/netleak install-hook --hooks-dir $(HOOKS_DIR)
	@echo "installed: $(PREFIX)/bin/netleak, netleak-exec, netleak-hook; $(HOOKS_DIR)/netleak.json"
# on a systemd host, the daemon's service (not enabled: that is the admin's call)
	if [ -d /run/systemd/system ]; then \
		sed 's|/usr/local/bin/netleak|$(PREFIX)/bin/netleak|' examples/netleak-daemon.service \
			> $(UNIT_DIR)/netleak-daemon.service && systemctl daemon-reload && \
		echo "installed: $(UNIT_DIR)/netleak-daemon.service; start it: systemctl enable --now netleak-daemon"; \
	fi

uninstall:
	if [ -f $(UNIT_DIR)/netleak-daemon.service ]; then \
		systemctl disable --now netleak-daemon.service || true; \
		rm -f $(UNIT_DIR)/netleak-daemon.service; systemctl daemon-reload || true; fi
	rm -f $(PREFIX)/bin/netleak $(PREFIX)/bin/netleak-exec $(PREFIX)/bin/netleak-hook
	rm -f $(HOOKS_DIR)/netleak.json
	# drop-ins of services pinned by name would call a netleak that is gone
	for f in /run/systemd/system/*.d/netleak.conf; do \
		[ -f "$$f" ] && head -1 "$$f" | grep -q '^# netleak: this service is pinned' && \
		rm -f "$$f" && rmdir "$$(dirname "$$f")" 2>/dev/null; done; \
		[ -d /run/systemd/system ] && systemctl daemon-reload || true
	rm -rf $(OPT)

clean:
	rm -rf $(VENV) .stamp-deps .stamp-test-deps .stamp-bench-deps .stamp-deb-deps .pytest_cache build dist *.egg-info
