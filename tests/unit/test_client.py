"""netleak_hook.client's JSON, by json's C encoder and scanner (the json
package would import re on netleak-exec's warm path): the same text and
values as json's, the same refusals."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

from netleak_hook import client

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) |
    st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) |
    st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(values)
def test_as_json_writes_and_reads(value):
    text = client.dumps(value)
    assert text == json.dumps(value)
    assert client.loads(text) == json.loads(text)
    assert client.loads((text + "\n").encode()) == json.loads(text)


def test_a_request_and_a_reply_as_the_daemon_sees_them():
    msg = {"op": "open", "id": "ab12", "iface": "wg0", "via4": None, "join": True,
           "dns": ["10.64.0.1"], "proxy": "socks5h://u:p\u00e9@h:1"}
    assert json.loads(client.dumps(msg)) == msg
    reply = json.dumps({"ok": True, "mark": 0x6E6C0001, "table": 28200, "killed": False,
                        "waiting": None, "ratio": 0.5}) + "\n"
    assert client.loads(reply.encode()) == json.loads(reply)
    assert math.isinf(client.loads("Infinity"))


@pytest.mark.parametrize("bad", [b"", b"\n", b"{", b'{"ok": true} x', b"nope", b"\xff",
                                 b'{"a": 1,}'])
def test_what_is_not_one_json_value_is_refused(bad):
    with pytest.raises(ValueError):
        json.loads(bad)
    with pytest.raises(ValueError):
        client.loads(bad)


def test_what_json_cannot_write_is_refused():
    with pytest.raises(TypeError, match="set is not JSON serializable"):
        client.dumps({"x": {1}})
    with pytest.raises(ValueError):
        d: dict = {}
        d["d"] = d
        client.dumps(d)


def test_a_round_trip_loads_neither_json_nor_re():
    code = ("import sys; from netleak_hook import client; "
            "client.loads(client.dumps({'op': 'ping', 'x': [1, 2.5, None]}) + '\\n'); "
            "print(' '.join(m for m in ('json', 're', 'socket') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout + r.stderr
