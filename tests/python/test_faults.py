"""Faults (issue 5): what survives when a part of the audited setup is killed, the
store's disk fills up, a frontend stops reading, or the store's paths are tampered with.

Each test runs its own collector and store (never the suite's), a real ipykernel behind
the real proxy, and ends with what must hold afterwards: `verify` passes on the store and
every record that was acknowledged is still in it. Timeouts only bound waiting; no
timing is a pass/fail criterion.

- collector SIGKILLed while a cell streams output: cells are refused (block policy)
  with the documented message, they run again once it is back, the store before the
  kill is a prefix of the store after it, every output the frontend saw is stored;
- a partial last line left in the current segment (and in checkpoints.jsonl) while the
  collector is down is cut off on restart and the cut is recorded in `collector_start`;
- proxy SIGKILLed while a cell prints: the kernel dies too, `sessions` says the session
  ended abnormally;
- real kernel SIGKILLed mid-cell: the death is recorded (`session_end` with the signal),
  the proxy exits, KernelManager.restart_kernel starts a new session (new session id);
- (root) the store's filesystem full: the collector logs ENOSPC, cells are refused with
  the documented message, no line is half-written, writing resumes once space is freed;
- a frontend subscribed to iopub that never reads: the reader and the kernel go on
  while 1 GiB passes and the proxy's peak RSS stays under 256 MiB;
- unsafe store and socket paths (symlinks, directories others can write to without the
  sticky bit, directories owned by another user) are refused with a clear error.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from queue import Empty

import pytest
import zmq

from helpers import (
    BIN,
    KernelPool,
    channel_url,
    connection_info,
    execute,
    iopub_for,
    kernel_pid,
    proc_status_mib,
    process_gone,
    reply_for,
    run_ok,
    stdout_of,
    unique_marker,
    wait_until,
)
from test_audit import (
    Collector,
    LoggedKernel,
    action,
    audited_kernelspec,
    by_msg_id,
    children,
    collectors,  # noqa: F401 (a fixture)
    describe,
    field,
    logs,
    own_collector,
    read_store,
    segment_files,
    seq,
    verify,
    verify_output,
    wait_for_records,
)

DEATH_TIMEOUT = 20
IS_ROOT = os.geteuid() == 0

# A cell that prints numbered lines for a while (long enough to kill something while
# it streams; how long it runs is not a criterion).
STREAM_LINES = 300
STREAMING_CELL = (
    "import time\n"
    f"for i in range({STREAM_LINES}):\n"
    "    print(f'line {i:05d}', flush=True)\n"
    "    time.sleep(0.01)\n"
)
EXPECTED_STREAM = "".join(f"line {i:05d}\n" for i in range(STREAM_LINES))


def complete_lines(store: Path) -> dict[str, bytes]:
    """Each segment's complete lines (a partial last line left out), by file name."""
    out = {}
    for segment in segment_files(store):
        data = segment.read_bytes()
        out[segment.name] = data[: data.rfind(b"\n") + 1]
    return out


def assert_prefix_kept(before: dict[str, bytes], store: Path) -> None:
    """Every line stored before is still there, byte for byte, in the same place."""
    after = {s.name: s.read_bytes() for s in segment_files(store)}
    for name, data in before.items():
        assert name in after, f"segment {name} is gone"
        assert after[name].startswith(data), f"segment {name} lost or changed stored lines"


def assert_whole_lines(store: Path) -> None:
    """No half-written record: every segment ends with a newline and every line is JSON."""
    for segment in segment_files(store):
        data = segment.read_bytes()
        assert data == b"" or data.endswith(b"\n"), f"{segment} ends with a partial line"
        for number, line in enumerate(data.split(b"\n")[:-1], 1):
            try:
                json.loads(line)
            except ValueError as error:
                raise AssertionError(f"{segment}:{number} is not a whole record: {error}")
    checkpoints = store / "checkpoints.jsonl"
    if checkpoints.exists():
        data = checkpoints.read_bytes()
        assert data == b"" or data.endswith(b"\n"), "checkpoints.jsonl ends with a partial line"
        for line in data.split(b"\n")[:-1]:
            json.loads(line)


def stored_text(records: list[dict], parent: str) -> str:
    """The stdout a request caused, as stored: one copy per message (a record resent
    after a reconnect may be stored twice), in the order stored."""
    seen, text = set(), []
    for r in sorted(children(records, parent), key=seq):
        if action(r) != "stream" or field(r, "jupyter.name", "stdout") != "stdout":
            continue
        msg_id = field(r, "jupyter.msg_id")
        if msg_id in seen:
            continue
        seen.add(msg_id)
        text.append(field(r, "jupyter.text", ""))
    return "".join(text)


def wait_for_first_outputs(collector: Collector, kernel: LoggedKernel, streaming_id: str) -> None:
    """Until the first outputs of STREAMING_CELL (request streaming_id) are stored."""
    wait_for_records(
        collector.store,
        lambda rs: len([r for r in children(rs, streaming_id) if action(r) == "stream"]) >= 10,
        "the first outputs of the streaming cell", logs(collector, kernel))


def stop_and_verify(collector: Collector) -> None:
    collector.stop()
    assert_whole_lines(collector.store)
    result = verify(collector.store)
    assert result.returncode == 0, verify_output(result)


def assert_refused(reply: dict, msgs: list[dict], marker: Path, diagnostics: str) -> None:
    """The documented block-policy refusal: an AuditLogUnavailable error, nothing run."""
    content = reply["content"]
    assert content["status"] == "error", diagnostics
    assert content["ename"] == "AuditLogUnavailable", diagnostics
    assert content["evalue"].startswith(
        "Execution refused: the audit log is unavailable, so nothing was run"), diagnostics
    assert "execute_input" not in [m["msg_type"] for m in msgs], "the kernel saw the request"
    assert not marker.exists(), "a refused cell ran"


def run_when_back(kc, code: str, tries: int = 20) -> dict:
    """Executes code until it is not refused (the proxy reconnects with a backoff)."""
    for _ in range(tries):
        reply, _ = execute(kc, code)
        if reply["content"].get("ename") != "AuditLogUnavailable":
            return reply
        time.sleep(0.5)
    pytest.fail(f"still refused after {tries} tries: {reply['content']}")


# --- 1. collector SIGKILLed mid-session ---------------------------------------------------


def test_collector_sigkill_while_output_streams(collectors, tmp_dir):
    collector = own_collector(collectors, tmp_dir)
    pool = KernelPool()
    try:
        kernel = LoggedKernel(pool, audited_kernelspec(collector.socket), tmp_dir)
        kc = kernel.kc
        streaming_id = kc.execute(STREAMING_CELL)
        wait_for_first_outputs(collector, kernel, streaming_id)
        collector.process.send_signal(signal.SIGKILL)
        collector.process.wait(timeout=DEATH_TIMEOUT)
        # What was on disk when it died: everything acknowledged is in here.
        before = complete_lines(collector.store)
        torn = sum(len(s.read_bytes()) for s in segment_files(collector.store)) - sum(
            len(d) for d in before.values())

        # The cell goes on (its outputs are held by the proxy) and the frontend sees all.
        shown = stdout_of(iopub_for(kc, streaming_id, timeout=60))
        assert shown == EXPECTED_STREAM, f"{len(shown)} characters shown\n{kernel.log()}"
        reply_for(kc.get_shell_msg, streaming_id)

        # A new cell is refused, with the documented message, and does not run.
        marker = unique_marker(tmp_dir, "refused")
        code = f"open({str(marker)!r}, 'w').write('ran')"
        reply, msgs = execute(kc, code)
        assert_refused(reply, msgs, marker, f"{reply}\n{logs(collector, kernel)}")
        refused_id = reply["parent_header"]["msg_id"]

        collector.start()  # same store, same socket
        reply = run_when_back(kc, "print('resumed')")
        assert reply["content"]["status"] == "ok", reply["content"]
        resumed_id = reply["parent_header"]["msg_id"]
        records = wait_for_records(
            collector.store,
            lambda rs: stored_text(rs, streaming_id) == EXPECTED_STREAM
            and bool(by_msg_id(rs, refused_id, "execution_refused"))
            and any(action(r) == "execute_reply" for r in children(rs, resumed_id)),
            "every output of the streaming cell, the refusal and the resumed cell",
            logs(collector, kernel))
        listing = describe(records)
        assert_prefix_kept(before, collector.store)
        # The restart says whether it found a torn line, and how long it was.
        starts = [r for r in records if action(r) == "collector_start"]
        assert len(starts) == 2, listing
        found = field(starts[1], "collector.torn_record")
        if torn:
            assert found and found["bytes"] == torn, starts[1]
        else:
            assert found is None, starts[1]
        sequences = [seq(r) for r in records]
        assert sequences == list(range(1, len(records) + 1)), "sequence gap or reordering"
        assert not marker.exists()
    finally:
        pool.shutdown_all()
    stop_and_verify(collector)


def test_partial_last_line_is_cut_off_on_restart(collectors, tmp_dir):
    collector = own_collector(collectors, tmp_dir, "--checkpoint-interval-secs", "1")
    pool = KernelPool()
    try:
        kernel = LoggedKernel(pool, audited_kernelspec(collector.socket), tmp_dir)
        kc = kernel.kc
        first = kc.execute("print('stored before the crash')")
        iopub_for(kc, first)
        wait_for_records(collector.store,
                         lambda rs: any(action(r) == "execute_reply" for r in children(rs, first)),
                         "the first cell", logs(collector, kernel))
        checkpoints = collector.store / "checkpoints.jsonl"
        assert wait_until(lambda: checkpoints.exists() and checkpoints.read_bytes(), 20)
        collector.process.send_signal(signal.SIGKILL)
        collector.process.wait(timeout=DEATH_TIMEOUT)

        # A crash in the middle of a write: part of a line, no newline, in the current
        # segment and in the checkpoint file.
        segment = segment_files(collector.store)[-1]
        good = segment.read_bytes()
        assert good.endswith(b"\n")
        partial = b'{"event":{"action":"execute_request","sequence":99999},"jupyter":{"code":"pri'
        with open(segment, "ab") as f:
            f.write(partial)
        good_checkpoints = checkpoints.read_bytes()
        with open(checkpoints, "ab") as f:
            f.write(b'{"sequence":')
        # Before the restart, verify names the torn line and does not pass it as intact.
        result = verify(collector.store)
        assert result.returncode != 0, verify_output(result)

        collector.start()  # (the killed one's socket is still there: wait for the record)
        records = wait_for_records(
            collector.store, lambda rs: len([r for r in rs if action(r) == "collector_start"]) == 2,
            "the second collector_start", collector.log())
        # Cut off exactly the partial bytes; everything before is kept.
        data = segment.read_bytes()
        assert data.startswith(good) and partial not in data
        assert checkpoints.read_bytes().startswith(good_checkpoints)
        assert b'{"sequence":' not in checkpoints.read_bytes()[len(good_checkpoints):]
        start = [r for r in records if action(r) == "collector_start"][1]
        assert field(start, "collector.torn_record") == {
            "segment": str(segment), "offset": len(good), "bytes": len(partial)}, start
        assert seq(start) == seq([r for r in records if seq(r) < seq(start)][-1]) + 1
        assert "torn" in collector.log() or "partial" in collector.log(), collector.log()

        # The proxy goes on in the same session.
        assert run_when_back(kc, "print('after')")["content"]["status"] == "ok"
    finally:
        pool.shutdown_all()
    stop_and_verify(collector)


# --- 2. proxy SIGKILLed while a cell prints -----------------------------------------------


def sessions_of(store: Path) -> list[dict]:
    out = subprocess.run([str(BIN), "sessions", "--store", str(store), "--json"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_proxy_sigkill_while_cell_prints(collectors, tmp_dir):
    collector = own_collector(collectors, tmp_dir)
    pool = KernelPool()
    try:
        kernel = LoggedKernel(pool, audited_kernelspec(collector.socket), tmp_dir)
        kc = kernel.kc
        pid = kernel_pid(kc)
        proxy = kernel.km.provisioner.process
        assert pid != proxy.pid
        streaming_id = kc.execute(STREAMING_CELL)
        wait_for_first_outputs(collector, kernel, streaming_id)
        proxy.kill()
        proxy.wait(timeout=DEATH_TIMEOUT)
        assert wait_until(lambda: process_gone(pid), DEATH_TIMEOUT), f"kernel {pid} outlived its proxy"

        records = read_store(collector.store)
        # Write-ahead: the cell is on the record; what it printed so far is stored in order.
        assert len(by_msg_id(records, streaming_id, "execute_request")) == 1
        assert EXPECTED_STREAM.startswith(stored_text(records, streaming_id))
        found = sessions_of(collector.store)
        assert len(found) == 1, found
        assert found[0]["state"] == "ended abnormally", found[0]
        assert "gone" in found[0]["end_reason"], found[0]
    finally:
        pool.shutdown_all()
    stop_and_verify(collector)


# --- 3. the real kernel SIGKILLed mid-cell ------------------------------------------------


def test_kernel_sigkill_mid_cell_and_restart(collectors, tmp_dir):
    collector = own_collector(collectors, tmp_dir)
    pool = KernelPool()
    try:
        kernel = LoggedKernel(pool, audited_kernelspec(collector.socket), tmp_dir)
        km, kc = kernel.km, kernel.kc
        pid = kernel_pid(kc)
        first_proxy = km.provisioner.process
        streaming_id = kc.execute(STREAMING_CELL)
        wait_for_first_outputs(collector, kernel, streaming_id)
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: first_proxy.poll() is not None, DEATH_TIMEOUT), \
            f"the proxy outlived its kernel\n{kernel.log()}"
        assert first_proxy.returncode == -signal.SIGKILL, "the proxy dies of its kernel's signal"

        records = wait_for_records(
            collector.store, lambda rs: any(action(r) == "session_end" for r in rs),
            "session_end of the killed kernel", logs(collector, kernel))
        end = [r for r in records if action(r) == "session_end"][0]
        first_session = field(end, "jupyter.session_id")
        assert field(end, "jupyter.exit_signal") == signal.SIGKILL, end

        km.restart_kernel(now=True)
        kc.wait_for_ready(timeout=60)
        reply = run_when_back(kc, "print('new session')")
        assert reply["content"]["status"] == "ok"
        new_id = reply["parent_header"]["msg_id"]
        records = wait_for_records(
            collector.store, lambda rs: bool(by_msg_id(rs, new_id, "execute_request")),
            "the cell run after the restart", logs(collector, kernel))
        starts = [r for r in records if action(r) == "session_start"]
        assert len(starts) == 2, describe(records)
        second_session = field(by_msg_id(records, new_id, "execute_request")[0], "jupyter.session_id")
        assert second_session != first_session
        assert [field(s, "jupyter.session_id") for s in starts] == [first_session, second_session]
        assert field(starts[0], "jupyter.kernel_id") == field(starts[1], "jupyter.kernel_id")
        states = {s["session_id"]: s["state"] for s in sessions_of(collector.store)}
        assert states == {first_session: "ended abnormally", second_session: "running"}, states
    finally:
        pool.shutdown_all()
    stop_and_verify(collector)


# --- 4. disk full -------------------------------------------------------------------------


class SmallFilesystem:
    """A small ext4 filesystem on a loop device (no reserved blocks: root fills it too)."""

    def __init__(self, root: Path, size_mib: int = 8, kind: str = "ext4") -> None:
        self.image = root / "fs.img"
        self.mount = root / "mnt"
        self.mount.mkdir()
        if kind == "tmpfs":
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs",
                            str(self.mount)], check=True)
            return
        with open(self.image, "wb") as f:
            f.truncate(size_mib << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(self.image)], check=True,
                       capture_output=True)
        result = subprocess.run(["mount", "-o", "loop", str(self.image), str(self.mount)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot loop-mount here: {result.stderr.strip()}")

    def fill(self) -> Path:
        """Fills the filesystem to the last byte; returns the filler file."""
        filler = self.mount / "filler"
        with open(filler, "wb", buffering=0) as f:
            for size in (1 << 20, 4096, 1):
                try:
                    while True:
                        f.write(b"\0" * size)
                except OSError as error:
                    assert error.errno == errno.ENOSPC, error
            try:
                os.fsync(f.fileno())
            except OSError:
                pass
        return filler

    def unmount(self) -> None:
        subprocess.run(["umount", str(self.mount)], capture_output=True)


@pytest.mark.skipif(not IS_ROOT, reason="mounting a small filesystem needs root")
def test_disk_full_blocks_and_resumes(collectors, tmp_dir):
    if not shutil.which("mkfs.ext4"):
        pytest.skip("mkfs.ext4 is not installed")
    fs = SmallFilesystem(tmp_dir)
    pool = KernelPool()
    try:
        collector = own_collector(collectors, tmp_dir, "--checkpoint-interval-secs", "1",
                                  store=fs.mount / "store")
        kernel = LoggedKernel(pool, audited_kernelspec(collector.socket), tmp_dir)
        kc = kernel.kc
        assert run_ok(kc, "print('before')") == "before\n"
        filler = fs.fill()

        # The write-ahead record of this cell (its code alone is 16 KiB) cannot fit.
        marker = unique_marker(tmp_dir, "disk-full")
        code = f"# {'x' * 16384}\nopen({str(marker)!r}, 'w').write('ran')"
        reply, msgs = execute(kc, code)
        assert_refused(reply, msgs, marker, f"{reply}\n{logs(collector, kernel)}")
        assert wait_until(lambda: "No space left on device" in collector.log(), 20), collector.log()
        # The proxy says why, in its log.
        assert wait_until(lambda: "No space left on device" in kernel.log(), 20), kernel.log()
        assert collector.process.poll() is None, "the collector died of a full disk"
        time.sleep(1.5)  # let an interval checkpoint try (and fail) on the full disk
        assert_whole_lines(collector.store)

        filler.unlink()
        reply = run_when_back(kc, f"print('after')\nopen({str(marker)!r} + '.after', 'w')")
        assert reply["content"]["status"] == "ok", reply["content"]
        assert not marker.exists()
        after_id = reply["parent_header"]["msg_id"]
        records = wait_for_records(
            collector.store,
            lambda rs: any(action(r) == "execute_reply" for r in children(rs, after_id)),
            "the cell run after space was freed", logs(collector, kernel))
        assert [seq(r) for r in records] == list(range(1, len(records) + 1))
    finally:
        pool.shutdown_all()
        try:
            stop_and_verify(collector)
        finally:
            collector.kill()
            fs.unmount()


@pytest.mark.skipif(not IS_ROOT, reason="mounting a small filesystem needs root")
@pytest.mark.parametrize("kind", ["ext4", "tmpfs"])
def test_checkpoint_cut_short_by_a_full_disk_leaves_no_torn_line(collectors, tmp_dir, kind):
    """Regression: a checkpoint line that only partly fit on a full disk stayed in
    checkpoints.jsonl, and the next checkpoint was appended to it (one garbled line)."""
    if not shutil.which("mkfs.ext4"):
        pytest.skip("mkfs.ext4 is not installed")
    fs = SmallFilesystem(tmp_dir, kind=kind)
    pool = KernelPool()
    try:
        collector = own_collector(collectors, tmp_dir, "--checkpoint-interval-secs", "1",
                                  store=fs.mount / "store")
        kernel = LoggedKernel(pool, audited_kernelspec(collector.socket), tmp_dir)
        kc = kernel.kc
        checkpoints = collector.store / "checkpoints.jsonl"
        block = os.statvfs(fs.mount).f_bsize

        def checkpointed_cell() -> None:
            count = checkpoints.read_bytes().count(b"\n") if checkpoints.exists() else 0
            run_ok(kc, "print('x')")
            assert wait_until(lambda: checkpoints.exists()
                              and checkpoints.read_bytes().count(b"\n") > count, 20)

        # Until the room left in the file's last block is less than a checkpoint line:
        # then the next checkpoint can be written only in part once the disk is full.
        checkpointed_cell()
        for _ in range(2 * block // 100):
            data = checkpoints.read_bytes()
            line = len(data.split(b"\n")[-2]) + 1
            room = -len(data) % block
            if 0 < room < line:
                break
            checkpointed_cell()
        else:
            pytest.skip("could not bring the checkpoint file to a partial block")
        run_ok(kc, "print('records to checkpoint')")  # a checkpoint is now due
        fs.fill()
        assert wait_until(lambda: "cannot write a checkpoint" in collector.log(), 20), \
            collector.log()
        assert_whole_lines(collector.store)
        (fs.mount / "filler").unlink()
        assert run_when_back(kc, "print('after')")["content"]["status"] == "ok"
        checkpointed_cell()
    finally:
        pool.shutdown_all()
        try:
            stop_and_verify(collector)
        finally:
            collector.kill()
            fs.unmount()


# --- 5. a frontend that never reads -------------------------------------------------------


# The proxy's buffers are bounded by design (16 MiB per frontend queue, 32 MiB of
# records not yet stored, bounded kernel-side queues of messages up to 1 MiB here); its
# peak levels off (measured: 68-113 MiB after 1 GiB). Unbounded buffering would reach
# the volume passed (1 GiB). The reader must get every byte: while the proxy waited 5 s
# for the frontend that never reads, the kernel's iopub socket overflowed and dropped
# output for everyone (up to 36 of the 1024 messages); the wait is now 250 ms.
RSS_BOUND_MIB = 256


def test_non_reading_subscriber_memory_stays_bounded(collectors, tmp_dir):
    collector = own_collector(collectors, tmp_dir)
    pool = KernelPool()
    ctx = zmq.Context.instance()
    idle = ctx.socket(zmq.SUB)
    try:
        # A short text cap keeps the store small; the relay still carries every byte.
        kernel = LoggedKernel(
            pool, audited_kernelspec(collector.socket, "--text-cap-bytes", "4096"), tmp_dir)
        kc = kernel.kc
        proxy_pid = kernel.km.provisioner.process.pid
        idle.linger = 0
        idle.rcvhwm = 1
        idle.setsockopt(zmq.RCVBUF, 4096)
        idle.subscribe(b"")
        idle.connect(channel_url(connection_info(kernel.km), "iopub"))
        time.sleep(1)  # let the subscription arrive; not a pass/fail timing

        chunk, count = 1 << 20, int(os.environ.get("JA_FAULTS_MIB", "1024"))  # 1 GiB in 1 MiB writes
        msg_id = kc.execute(
            "import sys\nblock = 'q' * " + str(chunk - 8) + "\n"
            f"for i in range({count}):\n"
            "    sys.stdout.write('%08d' % i + block)\n    sys.stdout.flush()\n")
        received = 0
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            try:
                msg = kc.get_iopub_msg(timeout=1)
            except Empty:
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                text = msg["content"]["text"]
                received += len(text)
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        # The reader counts as stalled (and loses messages) only if it took nothing for
        # 250 ms; the proxy's log says so if that happened.
        assert received == chunk * count, \
            f"the reader got {received} of {chunk * count}\n{kernel.log()}"
        assert reply_for(kc.get_shell_msg, msg_id)["content"]["status"] == "ok"
        assert run_ok(kc, "print('still responsive')") == "still responsive\n"
        peak = proc_status_mib(proxy_pid, "VmHWM")
        assert peak < RSS_BOUND_MIB, f"proxy peak RSS {peak:.0f} MiB\n{kernel.log()}"
        print(f"proxy peak RSS {peak:.0f} MiB while {count} MiB passed")
    finally:
        idle.close()
        pool.shutdown_all()
    stop_and_verify(collector)


# --- 6. unsafe store and socket paths -----------------------------------------------------


def start_collector(store: Path, socket: Path) -> subprocess.CompletedProcess:
    """Runs a collector that is expected to refuse to start."""
    try:
        return subprocess.run(
            [str(BIN), "collector", "--store", str(store), "--socket", str(socket)],
            capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail("the collector started on an unsafe path")


def expect_refused(result: subprocess.CompletedProcess, *fragments: str) -> None:
    out = f"exit {result.returncode}\n{result.stderr}"
    assert result.returncode != 0, out
    assert "unsafe" in result.stderr, out
    for fragment in fragments:
        assert fragment in result.stderr, out


@pytest.fixture
def private_dir(tmp_dir):
    """A directory only its owner can write (tmp_dir is under the suite's 0700 dir)."""
    path = tmp_dir / "private"
    path.mkdir(mode=0o700)
    return path


def test_store_dir_symlink_is_refused(private_dir):
    real = private_dir / "real-store"
    real.mkdir(mode=0o700)
    link = private_dir / "store"
    link.symlink_to(real)
    expect_refused(start_collector(link, private_dir / "c.sock"), str(link), "symbolic link")
    assert list(real.iterdir()) == [], "the collector wrote through the symlink"


def test_symlinks_inside_the_store_are_refused(private_dir):
    store, elsewhere = private_dir / "store", private_dir / "elsewhere"
    elsewhere.mkdir()
    collector = Collector(private_dir, store=store)
    collector.start()
    collector.stop()
    # Someone who can write the store's parent... or a restore gone wrong: segments/
    # replaced by a link to another directory.
    segments = store / "segments"
    shutil.move(str(segments), str(elsewhere / "segments"))
    segments.symlink_to(elsewhere / "segments")
    expect_refused(start_collector(store, private_dir / "c.sock"), "segments", "symbolic link")


def test_socket_path_symlink_is_refused(private_dir):
    target = private_dir / "target"
    target.write_text("keep me")
    link = private_dir / "c.sock"
    link.symlink_to(target)
    expect_refused(start_collector(private_dir / "store", link), str(link), "symbolic link")
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("which", ["store", "socket"])
def test_directory_writable_by_others_is_refused(private_dir, which):
    shared = private_dir / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # world-writable, no sticky bit: anyone could swap entries
    store = shared / "store" if which == "store" else private_dir / "store"
    socket = shared / "c.sock" if which == "socket" else private_dir / "c.sock"
    expect_refused(start_collector(store, socket), str(shared), "writable by others")
    # With the sticky bit (like /tmp) others cannot rename or remove our entries.
    os.chmod(shared, 0o1777)
    collector = Collector(private_dir, store=store, socket=socket)
    try:
        collector.start()
        collector.stop()
    finally:
        collector.kill()


@pytest.mark.skipif(not IS_ROOT, reason="giving a directory to another user needs root")
def test_directory_owned_by_another_user_is_refused(private_dir):
    theirs = private_dir / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, 65534, 65534)  # nobody: could rename our store away and put theirs
    expect_refused(start_collector(theirs / "store", private_dir / "c.sock"), str(theirs),
                   "owned by")
    store = private_dir / "store"
    store.mkdir(mode=0o700)
    os.chown(store, 65534, 65534)  # a store someone else prepared: they could read it
    expect_refused(start_collector(store, private_dir / "c.sock"), str(store), "owned by")


def test_safe_paths_still_work(collectors, private_dir):
    """The checks do not refuse an ordinary setup (a fresh store in a private dir)."""
    collector = own_collector(collectors, private_dir, store=private_dir / "a" / "b" / "store")
    collector.stop()
    assert verify(collector.store).returncode == 0
