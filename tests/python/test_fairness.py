"""Fairness (issue 10, items 6-8): one user misbehaving towards the collector does not
halt another user's audited kernel.

Root only: the collector, an attacker and a victim are three OS users. In each test the
attacker (plain Unix-socket connections to the collector, as its own uid) misbehaves in
one way while the victim's real ipykernel, behind the real proxy, runs cells:

- connections: more connections than the per-user cap, and more than 1024 (the collector
  starts with systemd's default soft descriptor limit of 1024);
- memory: connections that announce frames of almost 64 MiB and never finish them;
- disk: a flood of records while the store's filesystem (a small loop-mounted ext4)
  runs into the collector's disk reserve.

What must hold: every victim cell runs, its records (request, output, reply) are in the
store, the collector's memory stays bounded, and a `limit_exceeded` record names the
attacker's uid.
"""

from __future__ import annotations

import json
import os
import resource
import shlex
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from helpers import (
    REPO,
    KernelPool,
    proc_status_mib,
    proxy_argv,
    run_ok,
    system_user,
    wait_until,
)
from test_audit import (
    COLLECTOR_USER,
    NOTEBOOK_USER,
    Collector,
    LoggedKernel,
    action,
    children,
    collectors,  # noqa: F401 (a fixture)
    describe,
    field,
    logs,
    own_collector,
    python_for,
    read_store,
    verify,
    verify_output,
    wait_for_records,
    write_kernelspec,
)
from test_faults import SmallFilesystem

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="needs root: runs the collector, an attacker and a victim as three OS users")

ATTACKER_USER = "jupyter-audit-attacker"
VICTIM_CELLS = 8
DEFAULT_CONNECTIONS_PER_USER = 128
MIB = 1 << 20

# The attacker's side: plain sockets, standard library only (runs as the attacker).
ATTACK = r'''
import json, resource, socket, struct, sys, threading, time

path, mode = sys.argv[1], sys.argv[2]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

def frame(obj):
    body = json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body

def say(*words):
    print(*words, flush=True)

def connect(timeout=2.0):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    return s

def hello(s):
    s.sendall(frame({"type": "hello", "version": 1}))
    length = struct.unpack(">I", s.recv(4, socket.MSG_WAITALL))[0]
    s.recv(length, socket.MSG_WAITALL)

if mode == "connections":
    # Open connections, say hello on each (as a proxy does) and hold them, idle.
    held, failed = [], 0
    for _ in range(int(sys.argv[3])):
        try:
            s = connect(0.5)
            held.append(s)
            s.sendall(frame({"type": "hello", "version": 1}))
        except OSError:
            failed += 1
    say("opened", len(held), "failed", failed)
    sys.stdin.read()

elif mode == "frames":
    # Connections that announce a frame of SIZE bytes and send all of it but its last
    # byte; a connection that is cut starts over.
    count, size = int(sys.argv[3]), int(sys.argv[4])
    chunk = b"x" * (1 << 20)
    def stall():
        while True:
            try:
                s = connect(None)
                hello(s)
                s.sendall(struct.pack(">I", size))
                left = size - 1
                while left:
                    left -= s.send(chunk[:min(left, len(chunk))])
                say("stalled")
                s.recv(1)  # until the collector cuts the connection
                s.close()
                say("cut")
            except OSError as error:
                say("error", error)
                time.sleep(0.2)
    for _ in range(count):
        threading.Thread(target=stall, daemon=True).start()
    sys.stdin.read()

elif mode == "flood":
    # Records of 64 KiB as fast as the collector takes them, every second one urgent;
    # counts the acknowledgements and refusals.
    s = connect(None)
    hello(s)
    counts = {"ack": 0, "nack": 0}
    last = [""]
    def acks():
        while True:
            head = s.recv(4, socket.MSG_WAITALL)
            if len(head) < 4:
                return
            answer = json.loads(s.recv(struct.unpack(">I", head)[0], socket.MSG_WAITALL))
            counts[answer["type"]] = counts.get(answer["type"], 0) + 1
            if answer["type"] == "nack":
                last[0] = answer["error"]
    threading.Thread(target=acks, daemon=True).start()
    def report():
        while True:
            time.sleep(0.2)
            say("ack", counts["ack"], "nack", counts["nack"], "last", last[0])
    threading.Thread(target=report, daemon=True).start()
    text = "x" * (64 << 10)
    for i in range(1, 1 << 40):
        record = {"event": {"action": "stream"},
                  "jupyter": {"session_id": "flood", "text": text}}
        s.sendall(frame({"type": "record", "id": i, "record": record, "urgent": i % 2 == 0}))
'''


class Setup:
    """The three users, a directory for each, and the victim's audited kernel."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.owner = system_user(COLLECTOR_USER)
        self.victim = system_user(NOTEBOOK_USER)
        self.attacker = system_user(ATTACKER_USER)
        base.chmod(0o755)
        self.collector_dir, self.run_dir, self.nb_dir = base / "collector", base / "run", base / "nb"
        for path, user, mode in ((self.collector_dir, self.owner, 0o755),
                                 (self.run_dir, self.owner, 0o755), (self.nb_dir, self.victim, 0o700)):
            path.mkdir()
            os.chown(path, user.pw_uid, user.pw_gid)
            path.chmod(mode)
        for sub in ("home", "runtime", "xdg", "ipython", "data", "config"):
            (self.nb_dir / sub).mkdir(mode=0o700)
            os.chown(self.nb_dir / sub, self.victim.pw_uid, self.victim.pw_gid)
        self.attack_script = base / "attack.py"
        self.attack_script.write_text(ATTACK)
        self.attack_script.chmod(0o644)
        self.attacks: list[subprocess.Popen] = []
        self.pool = KernelPool()

    def collector(self, collectors: list, *flags: str, store: Path | None = None) -> Collector:
        """The collector as its own user, started with systemd's default descriptor
        limits (soft 1024, the hard limit as it is)."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
        try:
            return own_collector(
                collectors, self.base, "--socket-mode", "666", *flags,
                store=store or self.collector_dir / "store",
                socket=self.run_dir / "collector.sock",
                run_as=(self.owner.pw_uid, self.owner.pw_gid))
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    def victim_kernel(self, collector: Collector) -> LoggedKernel:
        """A real ipykernel behind the proxy, both running as the victim."""
        python, python_env = python_for(NOTEBOOK_USER)
        inner = proxy_argv(collector.socket) + [python, "-m", "ipykernel_launcher",
                                                "-f", "{connection_file}"]
        inner[inner.index("--config") + 1] = str(self.base / "no-admin-config.toml")
        uid, gid = self.victim.pw_uid, self.victim.pw_gid
        script = (f"chown {uid}:{gid} {{connection_file}} && "
                  f"exec setpriv --reuid={uid} --regid={gid} --clear-groups -- "
                  + shlex.join(inner))
        nb = self.nb_dir
        env = {
            "HOME": str(nb / "home"), "XDG_RUNTIME_DIR": str(nb / "xdg"),
            "JUPYTER_RUNTIME_DIR": str(nb / "runtime"), "IPYTHONDIR": str(nb / "ipython"),
            "JUPYTER_DATA_DIR": str(nb / "data"), "JUPYTER_CONFIG_DIR": str(nb / "config"),
            "JUPYTER_PATH": str(nb / "data"), "RUST_LOG": "jupyter_audit=info", **python_env,
        }
        name = write_kernelspec(["/bin/sh", "-c", script], env=env, prefix="ja-fair-victim")
        return LoggedKernel(self.pool, name, self.base,
                            connection_file=str(nb / f"kernel-{uuid.uuid4().hex}.json"))

    def attack(self, collector: Collector, *argv: str) -> tuple[subprocess.Popen, Path]:
        """Starts the attacker's script; returns it and the file its progress goes to."""
        python, _ = python_for(ATTACKER_USER)
        out = self.base / f"attack-{uuid.uuid4().hex[:6]}.log"
        uid, gid = self.attacker.pw_uid, self.attacker.pw_gid
        with open(out, "wb") as log:
            process = subprocess.Popen(
                ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--",
                 python, str(self.attack_script), str(collector.socket), *argv],
                stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT)
        self.attacks.append(process)
        return process, out

    def close(self) -> None:
        for process in self.attacks:
            process.kill()
            process.wait()
        self.pool.shutdown_all()


@pytest.fixture
def setup():
    base = Path(tempfile.mkdtemp(prefix="ja-fair-"))
    state = Setup(base)
    try:
        yield state
    finally:
        state.close()
        shutil.rmtree(base, ignore_errors=True)


def victim_cells(kernel: LoggedKernel, label: str) -> list[str]:
    """Runs the victim's cells; each must succeed. Returns the tokens they print."""
    tokens = []
    for i in range(VICTIM_CELLS):
        token = f"{label}-{i}-{uuid.uuid4().hex[:8]}"
        assert run_ok(kernel.kc, f"print({token!r})") == f"{token}\n", kernel.log()
        tokens.append(token)
    return tokens


def assert_victim_on_record(store: Path, tokens: list[str], sources: tuple) -> list[dict]:
    """Every victim cell's execute_request, stdout and execute_reply are stored."""
    def complete(records: list[dict]) -> bool:
        for token in tokens:
            requests = [r for r in records if action(r) == "execute_request"
                        and token in str(field(r, "jupyter.code", ""))]
            if not requests:
                return False
            kids = children(records, field(requests[0], "jupyter.msg_id"))
            if not any(action(r) == "execute_reply" for r in kids):
                return False
            if not any(token in str(field(r, "jupyter.text", "")) for r in kids):
                return False
        return True

    return wait_for_records(store, complete, "every victim cell's request, output and reply",
                            logs(*sources))


def limit_records(records: list[dict], limit: str) -> list[dict]:
    return [r for r in records
            if action(r) == "limit_exceeded" and field(r, "collector.limit") == limit]


def flood_nacks(path: Path) -> int:
    """How many of the flood's records the collector refused so far."""
    lines = [line.split() for line in path.read_text().splitlines() if line.startswith("ack ")]
    return int(lines[-1][3]) if lines else 0


def stop_and_check(collector: Collector) -> None:
    """Stops the collector; the store verifies and every record (the limit_exceeded
    ones included) matches the schema."""
    collector.stop()
    result = verify(collector.store)
    assert result.returncode == 0, verify_output(result)
    schema = json.loads((REPO / "schema" / "audit-record.schema.json").read_text())
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    for record in read_store(collector.store):
        errors = [error.message for error in validator.iter_errors(record)]
        assert not errors, f"{errors}\n{json.dumps(record)[:2000]}"


def attack_log(path: Path) -> str:
    try:
        return f"attacker output ({path}):\n{path.read_text()[-3000:]}"
    except OSError:
        return "attacker output: none"


# --- item 6: descriptors ------------------------------------------------------------------


def test_connection_flood_does_not_lock_out_another_user(collectors, setup):
    collector = setup.collector(collectors)
    attack, out = setup.attack(collector, "connections", "1100")
    assert wait_until(lambda: "opened" in out.read_text(), 60), attack_log(out)
    # The victim's proxy connects while the attacker holds its connections.
    kernel = setup.victim_kernel(collector)
    tokens = victim_cells(kernel, "conn")
    records = assert_victim_on_record(collector.store, tokens, (collector, kernel))

    held = len(os.listdir(f"/proc/{collector.process.pid}/fd"))
    assert held < 200, f"the collector holds {held} descriptors\n{collector.log()}"
    # Every connection past the cap was refused, and counted in the records (one per
    # user, limit and 10 s).
    opened = int(out.read_text().split()[1])
    assert opened > 1024, attack_log(out)
    refusals = wait_for_records(
        collector.store,
        lambda rs: sum(field(r, "collector.count")
                       for r in limit_records(rs, "connections_per_user"))
        == opened - DEFAULT_CONNECTIONS_PER_USER,
        "limit_exceeded records counting the attacker's refused connections", logs(collector))
    refused = limit_records(refusals, "connections_per_user")
    assert {field(r, "collector.peer.user_id") for r in refused} == {
        str(setup.attacker.pw_uid)}, describe(refused)
    assert all(field(r, "user.name") == COLLECTOR_USER for r in refused), describe(records)
    print(f"collector descriptors with {opened} attacker connections opened: {held}")
    attack.stdin.close()
    setup.pool.shutdown_all()
    stop_and_check(collector)


# --- item 7: memory -----------------------------------------------------------------------


def test_unfinished_huge_frames_do_not_grow_the_collector(collectors, setup):
    collector = setup.collector(collectors, "--frame-timeout-secs", "3")
    kernel = setup.victim_kernel(collector)
    attack, out = setup.attack(collector, "frames", "8", str(64 * MIB - 64))
    assert wait_until(lambda: "stalled" in out.read_text(), 60), attack_log(out)
    tokens = victim_cells(kernel, "mem")
    # Eight stalled frames would be 512 MiB; the attacker's budget admits one at a time.
    peak = proc_status_mib(collector.process.pid, "VmHWM")
    assert peak < 200, f"collector peak RSS {peak:.0f} MiB\n{attack_log(out)}"
    # Until a stalled frame has been cut for missing its deadline.
    records = wait_for_records(
        collector.store, lambda rs: bool(limit_records(rs, "frame_timeout")),
        "a limit_exceeded record for the stalled frames", logs(collector) + attack_log(out))
    tokens += victim_cells(kernel, "mem-after")
    assert_victim_on_record(collector.store, tokens, (collector, kernel))
    peak = proc_status_mib(collector.process.pid, "VmHWM")
    assert peak < 200, f"collector peak RSS {peak:.0f} MiB\n{attack_log(out)}"
    refused = limit_records(records, "frame_timeout")
    assert {field(r, "collector.peer.user_id") for r in refused} == {
        str(setup.attacker.pw_uid)}, describe(refused)
    print(f"collector peak RSS under the memory attack: {peak:.0f} MiB")
    attack.kill()
    setup.pool.shutdown_all()
    stop_and_check(collector)


# --- item 8: disk -------------------------------------------------------------------------


def test_a_flood_into_the_disk_reserve_refuses_the_flooder_only(collectors, setup):
    if not shutil.which("mkfs.ext4"):
        pytest.skip("mkfs.ext4 is not installed")
    fs = SmallFilesystem(setup.base, size_mib=64)
    try:
        store_root = fs.mount / "audit"
        store_root.mkdir()
        os.chown(store_root, setup.owner.pw_uid, setup.owner.pw_gid)
        store_root.chmod(0o755)
        config = setup.base / "collector.toml"
        config.write_text(
            "[limits]\n"
            "disk_reserve_bytes = 0\n"
            "disk_reserve_percent = 40\n"
            f"storage_share_bytes = {4 * MIB}\n")
        collector = setup.collector(collectors, "--config", str(config),
                                    store=store_root / "store")
        kernel = setup.victim_kernel(collector)
        tokens = victim_cells(kernel, "disk-before")
        attack, out = setup.attack(collector, "flood")
        # Until the flood reaches the reserve and the attacker's records are refused.
        assert wait_until(lambda: flood_nacks(out) > 0, 60), attack_log(out)
        tokens += victim_cells(kernel, "disk-during")
        records = assert_victim_on_record(collector.store, tokens, (collector, kernel))
        assert "storage share" in attack_log(out), attack_log(out)
        refusals = wait_for_records(
            collector.store, lambda rs: bool(limit_records(rs, "storage_share")),
            "a limit_exceeded record for the flood", logs(collector))
        refused = limit_records(refusals, "storage_share")
        assert {field(r, "collector.peer.user_id") for r in refused} == {
            str(setup.attacker.pw_uid)}, describe(refused)
        # The flood stopped at the reserve: the half kept for write-ahead records alone
        # was never needed.
        space = os.statvfs(fs.mount)
        free_mib = space.f_bavail * space.f_frsize / MIB
        reserve_mib = 0.4 * space.f_blocks * space.f_frsize / MIB
        assert free_mib > reserve_mib / 2, \
            f"{free_mib:.1f} MiB left, reserve {reserve_mib:.1f} MiB\n{describe(records)}"
        print(f"free space with the flood refused: {free_mib:.1f} MiB "
              f"(reserve {reserve_mib:.1f} MiB)")
        attack.kill()
        setup.pool.shutdown_all()
        stop_and_check(collector)
    finally:
        for collector in collectors:
            collector.kill()
        fs.unmount()
