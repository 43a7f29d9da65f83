"""input() and getpass() through the stdin channel (nbclient cannot do this)."""

from __future__ import annotations

from queue import Empty

import pytest

from helpers import TIMEOUT, iopub_for, reply_for, stdout_of


def answer_prompt(kc, msg_id: str, answer: str) -> dict:
    """Wait for the kernel's input_request for msg_id, answer it, return the request."""
    request = kc.get_stdin_msg(timeout=TIMEOUT)
    assert request["msg_type"] == "input_request"
    assert request["parent_header"]["msg_id"] == msg_id
    kc.input(answer)
    return request


def test_input(kernels, kernel_name):
    _, kc = kernels.start(kernel_name)
    msg_id = kc.execute("print('got:', input('prompt> '))", allow_stdin=True)
    request = answer_prompt(kc, msg_id, "some answer")
    assert request["content"]["prompt"] == "prompt> "
    assert request["content"]["password"] is False

    outputs = iopub_for(kc, msg_id)
    reply = reply_for(kc.get_shell_msg, msg_id)
    assert reply["content"]["status"] == "ok"
    assert "got: some answer\n" in stdout_of(outputs)


def test_several_prompts_in_one_cell(kernels, kernel_name):
    _, kc = kernels.start(kernel_name)
    msg_id = kc.execute(
        "a = input('first? ')\nb = input('second? ')\nprint(a + '+' + b)", allow_stdin=True
    )
    assert answer_prompt(kc, msg_id, "one")["content"]["prompt"] == "first? "
    assert answer_prompt(kc, msg_id, "two")["content"]["prompt"] == "second? "
    outputs = iopub_for(kc, msg_id)
    assert reply_for(kc.get_shell_msg, msg_id)["content"]["status"] == "ok"
    assert "one+two\n" in stdout_of(outputs)


def test_getpass(kernels, kernel_name):
    _, kc = kernels.start(kernel_name)
    code = "import getpass\nsecret = getpass.getpass('Password: ')\nprint('length', len(secret))"
    msg_id = kc.execute(code, allow_stdin=True)
    request = answer_prompt(kc, msg_id, "hunter2-secret")
    assert request["content"]["password"] is True
    assert request["content"]["prompt"] == "Password: "

    outputs = iopub_for(kc, msg_id)
    reply = reply_for(kc.get_shell_msg, msg_id)
    assert reply["content"]["status"] == "ok"
    assert "length 14\n" in stdout_of(outputs)
    # The password itself is never echoed on iopub.
    assert all("hunter2-secret" not in str(m["content"]) for m in outputs)


def test_input_without_stdin_is_an_error(kernels, kernel_name):
    _, kc = kernels.start(kernel_name)
    msg_id = kc.execute("input('never asked')", allow_stdin=False)
    iopub_for(kc, msg_id)
    reply = reply_for(kc.get_shell_msg, msg_id)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "StdinNotImplementedError"
    with pytest.raises(Empty):
        kc.get_stdin_msg(timeout=0.5)
