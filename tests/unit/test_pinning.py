"""The pin set's name: a hash of the programs' source and compile flags.
Sessions record the name of the pin set their programs came from, so for the
same source and flags it must never change from one version to the next."""
from __future__ import annotations

import pytest

from netleak_hook.kernel import pinning

SOURCE = "/* netleak.h */\n#define NL_X 1\n\n/* netleak.c */\nint nl_egress(void *ctx) { return 1; }\n"


@pytest.fixture
def fixed_source(monkeypatch):
    monkeypatch.setattr(pinning, "BPF_SRC_DIR", "/usr/share/netleak/bpf")
    monkeypatch.setattr(pinning, "source_text", lambda: SOURCE)


def test_default_flags(fixed_source):
    assert pinning.cflags() == [
        "-I/usr/share/netleak/bpf", "-DNL_MAX_ENTRIES=4096", "-DNL_MAX_DEPTH=16",
        "-DNL_RING_PAGES=16", "-Wno-macro-redefined"]


def test_pinset_name_of_a_fixed_source_and_flags(fixed_source):
    # values computed once; a change here orphans every installed pin set
    assert pinning.pinset_name() == "v1-252ecd1db236"
    assert pinning.pinset_name(("-DNL_NO_STATS",)) == "v1-f79525c08008"


def test_pinset_name_follows_source_and_flags(fixed_source, monkeypatch):
    base = pinning.pinset_name()
    monkeypatch.setattr(pinning, "source_text", lambda: SOURCE + " ")
    assert pinning.pinset_name() != base
    monkeypatch.setattr(pinning, "source_text", lambda: SOURCE)
    monkeypatch.setattr(pinning, "BPF_SRC_DIR", "/opt/netleak/bpf")
    assert pinning.pinset_name() != base


def test_source_text_is_the_header_then_the_program(tmp_path, monkeypatch):
    (tmp_path / "netleak.h").write_text("H\n")
    (tmp_path / "netleak.c").write_text("C\n")
    monkeypatch.setattr(pinning, "BPF_SRC_DIR", str(tmp_path))
    assert pinning.source_text() == "H\n\nC\n"
    assert pinning.render_source() == (
        f"/* cflags: -I{tmp_path} -DNL_MAX_ENTRIES=4096 -DNL_MAX_DEPTH=16 "
        f"-DNL_RING_PAGES=16 -Wno-macro-redefined */\nH\n\nC\n")


def test_names_of_pinning_still_importable_from_programs():
    from netleak_hook.kernel import programs
    moved = [n for n in programs.__all__ if hasattr(pinning, n)]
    assert {"Pinset", "pinset_name", "ensure_pinned", "ensure_bpffs", "remove_pins",
            "render_source", "cflags", "LEVELS", "BPF_SRC_DIR", "PINS", "BASE_PINS",
            "RING_PAGES"} <= set(moved)
    assert all(getattr(programs, n) is getattr(pinning, n) for n in moved)
    assert programs._compile_main is pinning._compile_main


def test_the_compile_child_and_its_last_line(monkeypatch, tmp_path):
    import subprocess
    import sys
    from netleak_hook.core.errors import NetleakError
    ran = []

    def run(argv, **kw):
        ran.append(argv)
        return subprocess.CompletedProcess(argv, 125, "", "compiling\nBPF compile failed: x\n")
    monkeypatch.setattr(subprocess, "run", run)
    pins = pinning.Pinset(str(tmp_path / "v1-x"))
    with pytest.raises(NetleakError, match="^BPF compile failed: x$"):
        pinning._compile_in_child(pins, ("-DNL_NO_STATS",))
    assert ran == [[sys.executable, "-m", "netleak_hook.kernel.pinning", pins.path,
                    "-DNL_NO_STATS"]]
