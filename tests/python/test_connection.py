"""Connection files the way Jupyter may write them: ipc transport, other signature
schemes, no key at all. The proxy binds and signs exactly as the file says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import TIMEOUT, iopub_for, reply_for, run_ok


def check_works(kc) -> None:
    assert run_ok(kc, "print(sum(range(10)))") == "45\n"
    msg_id = kc.execute("print('x' * 100)")
    iopub_for(kc, msg_id)
    assert reply_for(kc.get_shell_msg, msg_id)["content"]["status"] == "ok"
    msg_id = kc.kernel_info()
    assert reply_for(kc.get_shell_msg, msg_id, TIMEOUT)["msg_type"] == "kernel_info_reply"


def test_ipc_transport(kernels, kernel_name):
    km, kc = kernels.start(kernel_name, transport="ipc")
    info = json.loads(Path(km.connection_file).read_text())
    assert info["transport"] == "ipc"
    check_works(kc)
    assert kc.hb_channel.is_beating()


@pytest.mark.parametrize("scheme", ["hmac-sha512", "hmac-sha1", "hmac-md5"])
def test_signature_scheme(kernels, kernel_name, scheme):
    def configure(km):
        km.session.signature_scheme = scheme

    km, kc = kernels.start(kernel_name, configure=configure)
    info = json.loads(Path(km.connection_file).read_text())
    assert info["signature_scheme"] == scheme
    check_works(kc)


def test_empty_key_means_unsigned(kernels, kernel_name):
    def configure(km):
        km.session.key = b""

    km, kc = kernels.start(kernel_name, configure=configure)
    info = json.loads(Path(km.connection_file).read_text())
    assert info["key"] == ""
    check_works(kc)
