"""The OCI state and annotations netleak-hook reads: untrusted input."""
from __future__ import annotations

import json

import pytest

from netleak_hook import hook
from netleak_hook.core import oci
from netleak_hook.core.errors import NetleakError

CID = "3f2a" * 16


def state(**over) -> bytes:
    doc = {"ociVersion": "1.0.2", "id": CID, "status": "creating", "pid": 4242,
           "bundle": "/run/containers/x/userdata",
           "annotations": {"io.netleak.interface": "wg0", "io.podman.x": "y"}}
    doc.update(over)
    return json.dumps(doc).encode()


def test_parse_state():
    st = oci.parse_state(state())
    assert (st.id, st.pid, st.status, st.short_id) == (CID, 4242, "creating", CID[:12])
    assert st.interface() == "wg0"


def test_no_annotation_is_no_interface():
    assert oci.parse_state(state(annotations={})).interface() is None
    assert oci.parse_state(state(annotations=None)).interface() is None


@pytest.mark.parametrize("value", ["", "wg0 ", "a/b", "x" * 16, "..", "wg0\n", "-rf",
                                   "w\u00e9g0", "$(id)"])
def test_bad_annotation_values_are_refused(value):
    st = oci.parse_state(state(annotations={"io.netleak.interface": value}))
    with pytest.raises(NetleakError) as e:
        st.interface()
    assert "io.netleak.interface" in e.value.message
    assert "\n" not in e.value.message


@pytest.mark.parametrize("raw,words", [
    (b"", "not OCI state"), (b"\xff\xfe", "not OCI state"), (b"[1]", "not a JSON object"),
    (b"null", "not a JSON object"), (state(id=""), "container id"),
    (state(id="../../x"), "container id"), (state(id=7), "container id"),
    (state(id="a" * 129), "container id"),
    (state(pid=-1), "invalid pid"), (state(pid="12"), "invalid pid"),
    (state(pid=True), "invalid pid"), (state(pid=1 << 40), "invalid pid"),
    (state(pid=1.5), "invalid pid"), (state(bundle=3), "invalid bundle"),
    (state(annotations=[]), "invalid annotations"),
    (state(annotations={"io.netleak.interface": 5}), "invalid annotations"),
    (state(status=1), "invalid status"),
    (b" " * (oci.MAX_STATE_BYTES + 1), "larger than"),
])
def test_bad_state_refused(raw, words):
    with pytest.raises(NetleakError) as e:
        oci.parse_state(raw)
    assert words in e.value.message


@pytest.mark.parametrize("argv,status,expected", [
    ([], "creating", "createRuntime"), ([], "created", "createRuntime"),
    ([], "stopped", "poststop"), (["prestart"], "creating", "prestart"),
    (["poststop"], "running", "poststop"), (["createRuntime"], "creating", "createRuntime"),
])
def test_stage(argv, status, expected):
    assert oci.stage(argv, oci.parse_state(state(status=status))) == expected


@pytest.mark.parametrize("argv", [["start"], ["prestart", "x"], ["--help"]])
def test_stage_usage(argv):
    with pytest.raises(NetleakError) as e:
        oci.stage(argv, oci.parse_state(state()))
    assert "usage" in e.value.message


def test_setup_stage_needs_a_pid():
    st = oci.parse_state(state(pid=0))
    with pytest.raises(NetleakError):
        oci.stage([], st)
    assert oci.stage([], oci.parse_state(state(pid=0, status="stopped"))) == "poststop"


def test_hook_without_annotation_does_nothing(tmp_path):
    env = {"NETLEAK_RUN_DIR": str(tmp_path / "run")}
    code, line = hook.run([], state(annotations={}), env)
    assert code == 0 and "nothing to do" in line
    assert not (tmp_path / "run").exists()


def test_hook_poststop_without_daemon_is_fine(tmp_path):
    env = {"NETLEAK_RUN_DIR": str(tmp_path / "run")}
    code, line = hook.run([], state(status="stopped", pid=0), env)
    assert code == 0 and "poststop" in line


def test_hook_refuses_bad_annotation_before_anything(tmp_path):
    env = {"NETLEAK_RUN_DIR": str(tmp_path / "run")}
    with pytest.raises(NetleakError):
        hook.run([], state(annotations={"io.netleak.interface": "a b"}), env)
    assert not (tmp_path / "run").exists()
