"""Nothing runs off the record: every byte the kernel acts on is on the record first.

A hostile notebook user, with the connection file's key, sends requests whose code sits
where a record that keeps a selection of fields, caps texts or drops buffers would not
show it: `user_expressions`, comm data past the text cap, comm buffers, fields no version
knows. The record of a request holds the message whole, or the request is refused; a
request too large for one record is refused, never stored as a stub. Outputs too large
for a record still leave, per MIME type, their size, SHA-256, head and tail; and the
answer to a prompt that is not a password prompt is kept, whatever prompt it names.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import uuid
from pathlib import Path

import pytest

from helpers import BIN, TIMEOUT, iopub_for, reply_for, run_ok, unique_marker, wait_until
from test_audit import (
    LoggedKernel,
    action,
    audited_kernelspec,
    collectors,  # noqa: F401 (a fixture)
    describe,
    field,
    logs,
    own_collector,
    read_store,
    wait_for_records,
)
from test_hostile import RawFrontend

MIB = 1 << 20


class Audited:
    """An audited kernel recording to a collector and store of the test's own."""

    def __init__(self, kernels, collectors, root: Path) -> None:
        self.collector = own_collector(collectors, root)
        self.store = self.collector.store
        self.kernel = LoggedKernel(kernels, audited_kernelspec(self.collector.socket), root)
        self.km, self.kc = self.kernel.km, self.kernel.kc
        start = self.wait(lambda rs: any(action(r) == "session_start" for r in rs), "session_start")
        self.session = field(next(r for r in start if action(r) == "session_start"),
                             "jupyter.session_id")

    def wait(self, predicate, what: str) -> list[dict]:
        return wait_for_records(self.store, predicate, what, logs(self.kernel, self.collector))

    def records_of(self, msg_id: str) -> list[dict]:
        return [r for r in read_store(self.store) if field(r, "jupyter.msg_id") == msg_id]

    def request_record(self, msg_id: str, msg_type: str) -> dict:
        records = self.wait(
            lambda rs: any(field(r, "jupyter.msg_id") == msg_id and action(r) == msg_type
                           for r in rs),
            f"the {msg_type} {msg_id}")
        return next(r for r in records
                    if field(r, "jupyter.msg_id") == msg_id and action(r) == msg_type)


@pytest.fixture
def audited(kernels, collectors, tmp_dir):
    return Audited(kernels, collectors, tmp_dir)


def touch(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


def test_every_field_of_a_request_is_on_the_record(audited, tmp_dir):
    """user_expressions (shell and control) and fields this version does not know are on
    the record of the request that carried them, not only `code`."""
    fe = {channel: RawFrontend(audited.km, channel) for channel in ("shell", "control")}
    try:
        for channel, frontend in fe.items():
            marker = unique_marker(tmp_dir, f"user-expression-{channel}")
            expression = f"{touch(marker)} or 7"
            content = {"code": "", "silent": True, "store_history": False,
                       "user_expressions": {"x": expression}, "allow_stdin": False,
                       "stop_on_error": True, "x_not_in_any_spec": {"nested": [expression]}}
            msg_id, frames = frontend.signer.message("execute_request", content)
            frontend.send(frames)
            reply, _ = frontend.reply_to(msg_id)
            assert reply["content"]["user_expressions"]["x"]["status"] == "ok", reply
            assert marker.exists(), "the expression ran"
            record = audited.request_record(msg_id, "execute_request")
            request = field(record, "jupyter.request")
            assert request["content"] == content, (channel, request)
            assert request["header"]["msg_id"] == msg_id
            assert field(record, "jupyter.channel") == channel
    finally:
        for frontend in fe.values():
            frontend.close()


def test_requests_too_large_for_one_record_are_refused_never_shortened(audited, tmp_dir):
    """A request whose record cannot go to the collector as one frame (64 MiB) is
    refused with a visible error and an execution_refused record: its code never runs
    and no stub of it is acknowledged as its record."""
    fe = RawFrontend(audited.km)
    sent = {}
    try:
        for label in ("header username 65 MiB", "metadata cellId 65 MiB", "code 65 MiB",
                      "code 40 MiB (record twice the code)"):
            marker = sent.setdefault(label, {})["marker"] = unique_marker(tmp_dir, "too-large")
            code = touch(marker)
            if label.startswith("code"):
                size = 65 * MIB if "65" in label else 40 * MIB
                code = "#" * size + "\n" + code
            msg_id, parts = fe.signer.parts("execute_request", fe.signer.execute_content(code))
            if label.startswith("header"):
                header = json.loads(parts[0])
                header["username"] = "u" * (65 * MIB)
                parts[0] = json.dumps(header).encode()
            if label.startswith("metadata"):
                parts[2] = json.dumps({"cellId": "c" * (65 * MIB)}).encode()
            fe.send([b"<IDS|MSG>", fe.signer.sign(parts), *parts])
            reply, others = fe.reply_to(msg_id, timeout=60)
            sent[label]["msg_id"] = msg_id
            sent[label]["reply"] = reply["content"]
        fe.execute_ok("pass")
    finally:
        fe.close()
    for label, case in sent.items():
        assert not case["marker"].exists(), f"{label}: code off the record ran"
        assert case["reply"]["status"] == "error", (label, case["reply"])
        assert case["reply"]["ename"] == "AuditRecordRefused", (label, case["reply"])
        assert "too large" in case["reply"]["evalue"], (label, case["reply"])
    records = audited.wait(
        lambda rs: {c["msg_id"] for c in sent.values()}
        <= {field(r, "jupyter.msg_id") for r in rs if action(r) == "execution_refused"},
        "an execution_refused record for every request too large to record")
    for label, case in sent.items():
        mine = [r for r in records if field(r, "jupyter.msg_id") == case["msg_id"]]
        assert [action(r) for r in mine] == ["execution_refused"], (label, describe(mine))
        assert "too large" in field(mine[0], "jupyter.reason"), mine[0]
    assert not [r for r in records if "record_too_large" in r.get("jupyter", {})], \
        "no stub stands in for a record"
    assert run_ok(audited.kc, "print('still fine')") == "still fine\n"


def test_code_in_comm_data_and_buffers_is_on_the_record(audited, tmp_dir):
    """A comm target (registered in a recorded cell) that runs what comm messages carry:
    code past the output text cap in `data`, and code carried only in a buffer, are on
    the record of the comm_msg in full."""
    run_ok(audited.kc, "import comm\n"
                       "def target(c, msg):\n"
                       "    def run(m):\n"
                       "        exec(m['content']['data'].get('code', ''))\n"
                       "        for b in m['buffers']:\n"
                       "            exec(bytes(b).decode())\n"
                       "    c.on_msg(run)\n"
                       "comm.get_comm_manager().register_target('runner', target)")
    in_data = unique_marker(tmp_dir, "comm-data")
    in_buffer = unique_marker(tmp_dir, "comm-buffer")
    padding = "#" + "p" * 600_000 + "\n"
    data_code = padding + touch(in_data) + "\n" + padding
    buffer_code = touch(in_buffer).encode()
    fe = RawFrontend(audited.km)
    try:
        comm_id = uuid.uuid4().hex
        _, frames = fe.signer.message("comm_open", {"comm_id": comm_id, "target_name": "runner",
                                                    "data": {}})
        fe.send(frames)
        data_id, frames = fe.signer.message("comm_msg", {"comm_id": comm_id,
                                                         "data": {"code": data_code}})
        fe.send(frames)
        buffer_id, frames = fe.signer.message("comm_msg", {"comm_id": comm_id, "data": {}})
        fe.send([*frames, buffer_code])
        fe.execute_ok("pass")
    finally:
        fe.close()
    assert wait_until(lambda: in_data.exists() and in_buffer.exists(), TIMEOUT), "the comm ran"
    record = audited.request_record(data_id, "comm_msg")
    assert field(record, "jupyter.request.content.data.code") == data_code, "code in full"
    record = audited.request_record(buffer_id, "comm_msg")
    buffers = field(record, "jupyter.request.buffers")
    assert buffers and base64.b64decode(buffers[0]["base64"]) == buffer_code, buffers
    assert buffers[0]["sha256"] == hashlib.sha256(buffer_code).hexdigest()


def test_outputs_too_large_for_a_frame_leave_size_hash_head_and_tail(audited, tmp_dir):
    """A display_data of 70 MIME entries of 1.1 MB and an error whose evalue is 70 MB
    reach the notebook; their records keep, per entry, size, SHA-256, head and tail,
    and replay shows what was displayed and that it was cut."""
    entries = {f"text/x-part{i}": chr(65 + i % 26) * 1_100_000 for i in range(70)}
    code = ("from IPython.display import publish_display_data\n"
            "publish_display_data({f'text/x-part{i}': chr(65 + i % 26) * 1_100_000 "
            "for i in range(70)})\n"
            "raise ValueError('v' * 70_000_000)")
    msg_id = audited.kc.execute(code)
    outputs = iopub_for(audited.kc, msg_id, timeout=120)
    shown = [m for m in outputs if m["msg_type"] == "display_data"]
    assert shown and len(shown[0]["content"]["data"]) == 70, "the notebook got the display"
    errors = [m for m in outputs if m["msg_type"] == "error"]
    assert errors and len(errors[0]["content"]["evalue"]) == 70_000_000
    records = audited.wait(
        lambda rs: {"display_data", "error"}
        <= {action(r) for r in rs if field(r, "jupyter.parent_msg_id") == msg_id},
        "the display_data and error records")
    display = next(r for r in records if action(r) == "display_data"
                   and field(r, "jupyter.parent_msg_id") == msg_id)
    kept = field(display, "jupyter.data")
    assert set(kept) == set(entries), sorted(kept)[:5]
    for mime, text in entries.items():
        assert kept[mime]["size"] == len(text), (mime, kept[mime])
        assert kept[mime]["sha256"] == hashlib.sha256(text.encode()).hexdigest(), mime
        assert kept[mime]["head"].startswith(text[0]) and kept[mime]["tail"].endswith(text[0])
    error = next(r for r in records if action(r) == "error"
                 and field(r, "jupyter.parent_msg_id") == msg_id)
    evalue = field(error, "jupyter.evalue")
    assert evalue["size"] == 70_000_000 and evalue["head"].startswith("vvv"), evalue
    assert evalue["sha256"] == hashlib.sha256(b"v" * 70_000_000).hexdigest()

    notebook = tmp_dir / "replayed.ipynb"
    replay = subprocess.run([str(BIN), "replay", "--store", str(audited.store), "--session",
                             audited.session, "-o", str(notebook)],
                            capture_output=True, text=True, timeout=120)
    assert replay.returncode == 0, replay.stderr
    cells = json.loads(notebook.read_text())["cells"]
    cell = next(c for c in cells if "publish_display_data" in "".join(c["source"]))
    types = [o["output_type"] for o in cell["outputs"]]
    assert "display_data" in types and "error" in types, types
    replayed = json.dumps(cell["outputs"])
    assert "bytes omitted" in replayed, "replay says the output was cut"


def test_an_answer_is_kept_unless_the_open_prompt_asks_for_a_password(audited, tmp_dir):
    """A reply that names an earlier, unanswered password prompt as its parent answers
    the prompt the kernel waits on now (not a password prompt): it is kept, and the
    code it carries, which the cell `exec`s, is on the record."""
    kc = audited.kc
    password_cell = kc.execute("import getpass\ngetpass.getpass('secret: ')", allow_stdin=True)
    password_prompt = kc.get_stdin_msg(timeout=TIMEOUT)
    assert password_prompt["content"]["password"] is True
    audited.km.interrupt_kernel()
    reply_for(kc.get_shell_msg, password_cell)

    marker = unique_marker(tmp_dir, "exec-input")
    code = touch(marker)
    exec_cell = kc.execute("exec(input('code: '))", allow_stdin=True)
    plain_prompt = kc.get_stdin_msg(timeout=TIMEOUT)
    assert plain_prompt["content"]["password"] is False
    answer = kc.session.msg("input_reply", {"value": code}, parent=password_prompt["header"])
    kc.stdin_channel.send(answer)
    assert reply_for(kc.get_shell_msg, exec_cell)["content"]["status"] == "ok"
    assert marker.exists()
    record = audited.request_record(answer["header"]["msg_id"], "input_reply")
    assert field(record, "jupyter.value") == code, record["jupyter"]
    assert "value_dropped" not in record["jupyter"]

    # A real password answer is never stored (jupyter_client's input() names no parent).
    kc.execute("import getpass\nprint(len(getpass.getpass('secret: ')))", allow_stdin=True)
    kc.get_stdin_msg(timeout=TIMEOUT)
    secret = f"hunter-{uuid.uuid4().hex}"
    kc.input(secret)
    records = audited.wait(
        lambda rs: sum(action(r) == "input_reply" for r in rs) >= 2, "the password answer")
    assert secret not in json.dumps(records), "a password reached the store"
    answers = [r for r in records if action(r) == "input_reply"]
    assert field(answers[-1], "jupyter.value_dropped") is True, describe(records)


def test_an_output_padded_past_the_budget_still_shows_what_the_notebook_showed(audited):
    """A display whose bundle is padded with a million tiny MIME entries, or with a MIME
    type whose name alone is 17 MB, still has on its record the entry the notebook
    renders (text/plain), not only a digest of the whole content."""
    token = uuid.uuid4().hex
    cases = {
        "a million tiny entries": "{**{f'text/x-pad{i}': 'a' for i in range(1_000_000)}}",
        "a 17 MB MIME type name": "{'x' * 17_000_000: 'junk'}",
    }
    sent = {}
    for label, padding in cases.items():
        code = ("from IPython.display import publish_display_data\n"
                f"publish_display_data({{'text/plain': {label!r} + ' {token}', **{padding}}})")
        msg_id = audited.kc.execute(code)
        outputs = iopub_for(audited.kc, msg_id, timeout=120)
        assert any(m["msg_type"] == "display_data" for m in outputs), label
        sent[label] = msg_id
    records = audited.wait(
        lambda rs: set(sent.values()) <= {field(r, "jupyter.parent_msg_id") for r in rs
                                          if action(r) == "display_data"},
        "both padded displays")
    for label, msg_id in sent.items():
        display = next(r for r in records if action(r) == "display_data"
                       and field(r, "jupyter.parent_msg_id") == msg_id)
        data = field(display, "jupyter.data") or {}
        assert data.get("text/plain") == f"{label} {token}", (label, sorted(display["jupyter"]))
