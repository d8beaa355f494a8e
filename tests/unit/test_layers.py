"""The layers are folders: what each may import, and netleak-exec's warm
path, checked from the source (every import, also those inside functions)
and by importing."""
from __future__ import annotations

import ast
import json
import pathlib
import subprocess
import sys

import pytest

import netleak_hook

PKG = pathlib.Path(netleak_hook.__file__).parent
HEAVY = ("bcc", "pyroute2", "click")
WARM_PATH_FORBIDDEN = HEAVY + ("argparse", "dataclasses")

# a layer and the project layers it may import (the top level: commands)
BELOW = {
    "core": {"core"},
    "rundir": {"core", "rundir"},
    "kernel": {"core", "rundir", "kernel"},
    "proxymode": {"core", "rundir", "kernel", "proxymode"},
    "daemon": {"core", "rundir", "kernel", "proxymode", "daemon"},
}
# libraries a layer may not import at all
FORBIDDEN = {"core": HEAVY, "rundir": HEAVY, "proxymode": HEAVY}
# pure modules outside core that import nothing heavy either
PURE_ELSEWHERE = ("proxymode.handshake", "proxymode.fakedns")

# what netleak-exec loads of the project before COMMAND runs
WARM_PATH = ["netleak_hook.execcmd", "netleak_hook.execsetup",
             "netleak_hook.kernel.confine", "netleak_hook.client"]
WARM_PATH_MODULES = {
    "netleak_hook", "netleak_hook.client", "netleak_hook.core", "netleak_hook.core.config",
    "netleak_hook.core.errors", "netleak_hook.core.lifecycle", "netleak_hook.core.mounts",
    "netleak_hook.core.validate", "netleak_hook.execcmd", "netleak_hook.execsetup",
    "netleak_hook.kernel", "netleak_hook.kernel.cgroupfs", "netleak_hook.kernel.confine",
    "netleak_hook.rundir",
    "netleak_hook.rundir.safedir", "netleak_hook.rundir.store",
}


def modules_of(layer: str) -> list[pathlib.Path]:
    return sorted((PKG / layer).glob("*.py"))


def imports_of(path: pathlib.Path) -> set[str]:
    """Every module PATH imports, as absolute names, wherever the import is."""
    rel = path.relative_to(PKG.parent).with_suffix("")
    package = list(rel.parts[:-1])
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)  # from pkg import module
    return out


def project_layers(names: set[str]) -> set[str]:
    layers = set()
    for n in names:
        parts = n.split(".")
        if parts[0] == "netleak_hook" and len(parts) > 1:
            sub = parts[1]
            layers.add(sub if (PKG / sub).is_dir() else "top")
    return layers


def test_every_module_is_in_a_known_place():
    folders = {p.name for p in PKG.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == set(BELOW)
    for layer in BELOW:
        for path in modules_of(layer):
            first = ast.get_docstring(ast.parse(path.read_text()))
            assert first, f"{path.name} has no opening line that says its role"


@pytest.mark.parametrize("layer", sorted(BELOW))
def test_layer_imports_only_layers_below(layer):
    for path in modules_of(layer):
        names = imports_of(path)
        wrong = project_layers(names) - BELOW[layer]
        assert not wrong, f"{layer}/{path.name} imports {sorted(wrong)}"
        heavy = {n.split(".")[0] for n in names} & set(FORBIDDEN.get(layer, ()))
        assert not heavy, f"{layer}/{path.name} imports {sorted(heavy)}"


def test_the_check_sees_a_wrong_import(tmp_path, monkeypatch):
    # positive control: a core module that imports the kernel layer, lazily
    fake = PKG / "core" / "x.py"
    src = "def f():\n    from ..kernel import bpfsys\n    from .. import cli\n"
    monkeypatch.setattr(pathlib.Path, "read_text", lambda self: src)
    tree_names = imports_of(fake)
    assert project_layers(tree_names) == {"kernel", "top"}


def loaded_after(imports: list[str], watch) -> list[str]:
    code = (
        "import importlib, json, sys\n"
        # the tree under test, wherever the interpreter's own copy is
        f"sys.path.insert(0, {str(PKG.parent)!r})\n"
        f"for m in {imports!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    # -I: no user site, no PYTHON* variables, no cwd on sys.path
    r = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    loaded = json.loads(r.stdout)
    return sorted(n for n in loaded if watch(n))


def heavy(name: str) -> bool:
    return name.split(".")[0] in WARM_PATH_FORBIDDEN


def test_watch_detects_a_loaded_module():
    # the probe itself works: json is loaded by the probe, so it must be seen
    assert loaded_after([], lambda n: n == "json") == ["json"]
    assert loaded_after(["argparse"], heavy) == ["argparse"]


@pytest.mark.parametrize("mod,lib", [("netleak_hook.cli", "click"),
                                     ("netleak_hook.kernel.netlink", "pyroute2")])
def test_watch_detects_heavy_imports_of_edge_modules(mod, lib):
    # positive control: the edges do load the heavy libraries
    pytest.importorskip(lib)
    assert lib in loaded_after([mod], lambda n: n in HEAVY)


@pytest.mark.parametrize("mod", [f"core.{p.stem}" for p in modules_of("core")]
                         + [f"rundir.{p.stem}" for p in modules_of("rundir")]
                         + list(PURE_ELSEWHERE))
def test_pure_module_imports_nothing_heavy(mod):
    assert loaded_after([f"netleak_hook.{mod}"], lambda n: n in HEAVY) == []


def test_exec_warm_path_is_light():
    assert loaded_after(WARM_PATH, heavy) == []


def test_exec_warm_path_loads_only_what_it_did():
    got = set(loaded_after(WARM_PATH, lambda n: n.startswith("netleak_hook")))
    assert got == WARM_PATH_MODULES


def test_every_package_is_packaged():
    # pyproject lists packages one by one: a new folder must be added there
    text = (PKG.parent / "pyproject.toml").read_text()
    listed = set(text.split("packages = [", 1)[1].split("]", 1)[0].replace('"', "")
                 .replace("\n", " ").replace(",", " ").split())
    found = {"netleak_hook"} | {f"netleak_hook.{p.parent.name}"
                                for p in PKG.glob("*/__init__.py")}
    assert listed == found


# standard modules netleak-exec does without: each costs its start (re through
# json's decoder and getopt's gettext; functools and collections through
# enum and contextlib; socket.py's enums and selectors)
WARM_PATH_AVOIDED = ("getopt", "gettext", "re", "json", "socket", "selectors", "enum",
                     "functools", "collections", "contextlib", "dataclasses", "typing",
                     "ipaddress")


def warm_path_loads(extra: str = "") -> list[str]:
    """The modules of WARM_PATH_AVOIDED loaded once netleak-exec's warm path
    ran its pure steps (parse and checks of a plain command line, the
    client's JSON both ways), and EXTRA."""
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(PKG.parent)!r})\n"
        "from netleak_hook import execcmd, execsetup, client\n"
        "from netleak_hook.kernel import confine, systemd\n"
        "execcmd.checked(execcmd.parse(['-u', 'nobody', 'wg0', 'true']), None)\n"
        "client.loads(client.dumps({'op': 'open', 'dns': ['10.0.0.1'], 'x': None}))\n"
        f"{extra}\n"
        f"print(' '.join(m for m in {WARM_PATH_AVOIDED!r} if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_exec_warm_path_does_without_costly_standard_modules():
    assert warm_path_loads() == []
    # positive controls: the probe sees one that is loaded, and --via's check
    assert {"re", "json"} <= set(warm_path_loads("import json"))
    assert "ipaddress" in warm_path_loads(
        "execcmd.checked(execcmd.parse(['--via', '192.0.2.1', 'wg0', 'true']), None)")
