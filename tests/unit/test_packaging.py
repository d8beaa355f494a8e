"""The Debian package's sources agree with the tree's: its version, and a
Depends for each Python dependency pyproject.toml names."""
from __future__ import annotations

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _read(*path: str) -> str:
    with open(os.path.join(ROOT, *path)) as f:
        return f.read()


def test_the_packages_version_is_pyprojects():
    version = re.search(r'^version = "([^"]+)"', _read("pyproject.toml"), re.M).group(1)
    top = _read("debian", "changelog").splitlines()[0]
    assert re.match(rf"netleak-hook \({re.escape(version)}\) ", top), top
    from netleak_hook import __version__
    assert __version__ == version


def test_each_python_dependency_is_a_debian_one_with_its_version():
    deps = re.search(r"^dependencies = \[(.*?)\]", _read("pyproject.toml"), re.M | re.S).group(1)
    control = _read("debian", "control")
    for name, op, version in re.findall(r'"([a-z0-9-]+)(>=)([0-9.]+)"', deps):
        assert f"python3-{name} ({op} {version})" in control, name


def test_maintainer_scripts_call_the_packages_own_netleak():
    for name in ("netleak.postinst", "netleak.prerm"):
        text = _read("debian", name)
        assert "#DEBHELPER#" in text and text.startswith("#!/bin/sh\nset -e\n")
        calls = re.findall(r"(\S*netleak) (?:prepare|cleanup)", text)
        assert calls and all(c.endswith("/usr/bin/netleak") for c in calls), calls
    assert os.access(os.path.join(ROOT, "debian", "rules"), os.X_OK)
