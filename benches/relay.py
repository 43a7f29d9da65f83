"""Relay benchmark: the direct ipykernel, the audited kernel (jupyter-audit kernel) and a
plain pyzmq relay (benches/pyzmq_relay.py), measured in the same run, interleaved.

Run by scripts/bench.sh, which starts a durable collector and writes the kernelspecs;
by hand:

    .venv/bin/python benches/relay.py --store STORE [--bin target/release/jupyter-audit]
        [--direct bench-direct] [--audited bench-audited] [--pyzmq bench-pyzmq] [--quick]
        [--only rtt,big,...]

The client is a lean pyzmq client (jupyter_client's Session signs; replies are matched
by parent msg_id, parsing only what it needs), so client cost hides as little of the
relay's cost as possible. Figures are ratios to the direct kernel; absolute times are
shown only to read the ratios by. This is a benchmark, not a test: PASS/MISS are
informational.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import zmq
from jupyter_client import KernelManager
from jupyter_client.session import Session

DELIM = b"<IDS|MSG>"
MB = 1 << 20


def percentile(values, q):
    xs = sorted(values)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


class Lean:
    """A minimal Jupyter client: shell DEALER + iopub SUB."""

    def __init__(self, info):
        self.ctx = zmq.Context.instance()
        key = info["key"]
        self.session = Session(
            key=key.encode() if isinstance(key, str) else key,
            signature_scheme=info.get("signature_scheme", "hmac-sha256"),
        )

        def url(name):
            if info.get("transport", "tcp") == "ipc":
                return f"ipc://{info['ip']}-{info[name + '_port']}"
            return f"tcp://{info['ip']}:{info[name + '_port']}"

        self.shell = self.ctx.socket(zmq.DEALER)
        self.iopub = self.ctx.socket(zmq.SUB)
        self.iopub.setsockopt(zmq.SUBSCRIBE, b"")
        for sock, name in [(self.shell, "shell"), (self.iopub, "iopub")]:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RECONNECT_IVL, 5)
            sock.connect(url(name))
        self.poller = zmq.Poller()
        self.poller.register(self.shell, zmq.POLLIN)
        self.poller.register(self.iopub, zmq.POLLIN)

    def close(self):
        self.shell.close()
        self.iopub.close()

    def send(self, msg_type, content):
        msg = self.session.msg(msg_type, content)
        self.session.send(self.shell, msg)
        return msg["header"]["msg_id"]

    def execute(self, code):
        return self.send(
            "execute_request",
            {"code": code, "silent": False, "store_history": False,
             "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
        )

    @staticmethod
    def _split(frames):
        i = frames.index(DELIM)
        return frames[i + 2 : i + 6]

    def wait(self, msg_id, idle=True, count_stream=False, timeout=600):
        """Until the shell reply to msg_id and (if idle) its status idle on iopub.
        Returns (reply content, stream bytes seen, iopub messages of msg_id by type)."""
        deadline = time.monotonic() + timeout
        reply = None
        got_idle = not idle
        stream_bytes = 0
        kinds = {}
        while reply is None or not got_idle:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply/idle for {msg_id}")
            for sock, _ in self.poller.poll(min(left, 1.0) * 1000):
                frames = sock.recv_multipart()
                header, parent, _meta, content = self._split(frames)
                if json.loads(parent).get("msg_id") != msg_id:
                    continue
                if sock is self.shell:
                    reply = json.loads(content)
                    continue
                msg_type = json.loads(header)["msg_type"]
                kinds[msg_type] = kinds.get(msg_type, 0) + 1
                if msg_type == "status":
                    if json.loads(content)["execution_state"] == "idle":
                        got_idle = True
                elif msg_type == "stream" and count_stream:
                    stream_bytes += len(json.loads(content)["text"].encode())
        return reply, stream_bytes, kinds

    def ready(self, timeout=30):
        """kernel_info until an iopub message for it arrives (iopub subscribed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg_id = self.send("kernel_info_request", {})
            try:
                self.wait(msg_id, idle=True, timeout=1.0)
                return
            except TimeoutError:
                continue
        raise TimeoutError("kernel not ready")

    def run(self, code, count_stream=False):
        msg_id = self.execute(code)
        reply, nbytes, kinds = self.wait(msg_id, count_stream=count_stream)
        if reply.get("status") != "ok":
            raise RuntimeError(f"cell failed: {reply.get('ename')}: {reply.get('evalue')}")
        return msg_id, nbytes, kinds


class Kernel:
    def __init__(self, kernel_name):
        self.km = KernelManager(kernel_name=kernel_name)
        self.t0 = time.perf_counter()
        self.km.start_kernel()
        self.client = Lean(self.km.get_connection_info())

    def kernel_info_time(self):
        """Seconds from start_kernel to the first kernel_info_reply."""
        msg_id = self.client.send("kernel_info_request", {})
        self.client.wait(msg_id, idle=False, timeout=60)
        return time.perf_counter() - self.t0

    @property
    def pid(self):
        return self.km.provisioner.process.pid

    def processes(self):
        """{role: pid} of what this variant runs: the launched process and its children."""
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                children = [int(x) for x in f.read().split()]
        except OSError:
            children = []
        if children:  # a relay: its child is the kernel
            return {"relay": self.pid, "kernel": children[0]}
        return {"kernel": self.pid}

    def rss_kb(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self):
        self.client.close()
        try:
            self.km.shutdown_kernel(now=False)
        except Exception:
            self.km.shutdown_kernel(now=True)


# ---- the store ------------------------------------------------------------------------

def store_stream_bytes(binary, store, msg_id, expect, timeout=30):
    """Bytes of the stream records of the cell msg_id, as the store accounts for them
    (kept text: its length; hashed text: its recorded size). Retries until it equals
    `expect` or the timeout passes (records may still be in the commit pipeline)."""
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(
            [binary, "log", "--store", store, "--json", "--action", "execute_request",
             "--grep", msg_id], capture_output=True, text=True, check=True).stdout
        session = None
        for line in out.splitlines():
            rec = json.loads(line)
            if rec.get("jupyter", {}).get("msg_id") == msg_id:
                session = rec["jupyter"]["session_id"]
        total, kept, hashed, records = 0, 0, 0, 0
        if session:
            out = subprocess.run(
                [binary, "log", "--store", store, "--json", "--session", session,
                 "--action", "stream"], capture_output=True, text=True, check=True).stdout
            for line in out.splitlines():
                rec = json.loads(line)
                if rec["jupyter"].get("parent_msg_id") != msg_id:
                    continue
                records += 1
                text = rec["jupyter"].get("text")
                if isinstance(text, str):
                    total += len(text.encode())
                    kept += 1
                elif isinstance(text, dict):
                    total += int(text["size"])
                    hashed += 1
        if total == expect or time.monotonic() > deadline:
            return session, total, records, kept, hashed
        time.sleep(0.5)


# ---- the figures ----------------------------------------------------------------------

CODE_50MB = (
    "import sys\n_c = 'x' * (1 << 20)\n"
    "for _ in range({n}):\n    sys.stdout.write(_c)\n    sys.stdout.flush()\n"
)
CODE_PRINTS = "for _i in range({n}):\n    print(_i)\n"
SETUP_PNG = (
    "import base64 as _b64, os as _os\nfrom IPython.display import display as _display\n"
    "_png = _b64.b64encode(b'\\x89PNG\\r\\n\\x1a\\n' + _os.urandom({n} - 8)).decode('ascii')\n"
)
CODE_PNG = "_display({'image/png': _png}, raw=True)\n"


FIGURES = ("startup", "rtt", "big", "prints", "png", "memory")
SELECTED = set(FIGURES)


CLOCK_TICK = 1 / os.sysconf("SC_CLK_TCK")
# CPU seconds per figure and variant: {label: {name: {role: seconds}}}; roles are the
# kernel, the relay, the collector (its whole CPU while the variant ran) and this client.
CPU = {}
COLLECTOR_PID = [None]


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * CLOCK_TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def cpu_snapshot(kernel):
    # The start-up figure passes kernelspec names: its kernels live only inside one call.
    roles = kernel.processes() if isinstance(kernel, Kernel) else {}
    if COLLECTOR_PID[0]:
        roles["collector"] = COLLECTOR_PID[0]
    snap = {role: cpu_seconds(pid) for role, pid in roles.items()}
    t = os.times()
    snap["client"] = t.user + t.system
    return snap


def interleave(kernels, reps, fn, results, label):
    """fn(name, kernel) -> seconds; the order rotates each repetition. The CPU each
    process spent during the calls is added up in CPU[label][name]."""
    if label not in SELECTED:
        return
    names = list(kernels)
    for rep in range(reps):
        order = names[rep % len(names):] + names[: rep % len(names)]
        for name in order:
            before = cpu_snapshot(kernels[name])
            results.setdefault(label, {}).setdefault(name, []).append(fn(name, kernels[name]))
            after = cpu_snapshot(kernels[name])
            spent = CPU.setdefault(label, {}).setdefault(name, {})
            for role, value in after.items():
                spent[role] = spent.get(role, 0.0) + value - before.get(role, value)


def versions(binary, direct_name):
    import ipykernel
    import jupyter_client

    def cmd(*argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True).stdout.strip()
        except OSError:
            return "?"

    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) // 1024} MiB"
    from jupyter_client.kernelspec import KernelSpecManager
    spec = KernelSpecManager().get_kernel_spec(direct_name)
    return [
        f"machine: {os.cpu_count()} cores (nproc {cmd('nproc')}), {cpu}, {mem}, "
        f"{platform.system()} {platform.release()}",
        f"versions: {cmd(binary, '--version')}, ipykernel {ipykernel.__version__}, "
        f"jupyter_client {jupyter_client.__version__}, pyzmq {zmq.__version__} "
        f"(libzmq {zmq.zmq_version()}), Python {platform.python_version()}",
        f"kernel: {' '.join(spec.argv)}",
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", required=True, help="the collector's store (for the byte check)")
    ap.add_argument("--bin", default="target/release/jupyter-audit")
    ap.add_argument("--direct", default="bench-direct")
    ap.add_argument("--audited", default="bench-audited")
    ap.add_argument("--pyzmq", default="bench-pyzmq", help="'' to leave the pyzmq relay out")
    ap.add_argument("--relay-only", default="bench-relay-only",
                    help="jupyter-audit kernel --no-audit: the relay without the audit path "
                         "('' to leave it out)")
    ap.add_argument("--collector-pid", type=int, help="the collector's pid, for its CPU time")
    ap.add_argument("--quick", action="store_true", help="tiny repetitions: checks the harness runs")
    ap.add_argument("--only", help=f"comma-separated subset of {','.join(FIGURES)} (for profiling)")
    args = ap.parse_args()
    if args.only:
        SELECTED.clear()
        SELECTED.update(f.strip() for f in args.only.split(","))
        unknown = SELECTED - set(FIGURES)
        if unknown:
            ap.error(f"unknown figures {sorted(unknown)}; choose from {','.join(FIGURES)}")

    q = args.quick
    reps = dict(
        startup=2 if q else 6,
        rtt=20 if q else 400,
        big=1 if q else 5,
        prints=2 if q else 7,
        png=2 if q else 9,
    )
    big_mb = 4 if q else 50
    n_prints = 2000 if q else 20000
    png_bytes = (1 if q else 10) * MB
    mem_mb = (16, 64) if q else (256, 1024)

    COLLECTOR_PID[0] = args.collector_pid
    names = {"direct": args.direct, "audited": args.audited}
    if args.relay_only:
        names["no-audit"] = args.relay_only
    if args.pyzmq:
        names["pyzmq"] = args.pyzmq
    res = {}
    notes = []
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731

    for line in versions(args.bin, args.direct):
        print(line)
    print(f"mode: {'QUICK (harness check only, figures meaningless)' if q else 'full'}; "
          f"repetitions {reps}")
    sys.stdout.flush()
    t_start = time.perf_counter()

    # Start-up: fresh kernels, interleaved.
    log("start-up …")

    def startup(name, kname):
        k = Kernel(kname)
        try:
            return k.kernel_info_time()
        finally:
            k.stop()

    interleave(names, reps["startup"], startup, res, "startup")

    # One long-lived kernel per variant for the relay figures.
    log("kernels …")
    kernels = {name: Kernel(kname) for name, kname in names.items()}
    try:
        for k in kernels.values():
            k.client.ready()
            k.client.run(SETUP_PNG.format(n=png_bytes))
            for _ in range(20):
                k.client.run("pass")

        log("execute round trip …")

        def rtt(name, k):
            t = time.perf_counter()
            k.client.run("pass")
            return time.perf_counter() - t

        interleave(kernels, reps["rtt"], rtt, res, "rtt")

        log(f"{big_mb} MB stdout …")
        last_big = {}

        def big(name, k):
            t = time.perf_counter()
            msg_id, nbytes, _ = k.client.run(CODE_50MB.format(n=big_mb), count_stream=True)
            dt = time.perf_counter() - t
            if nbytes != big_mb * MB:
                notes.append(f"{name}: client saw {nbytes} stream bytes, not {big_mb * MB}")
            last_big[name] = msg_id
            return dt

        interleave(kernels, reps["big"], big, res, "big")
        if "audited" in last_big:
            session, total, records, kept, hashed = store_stream_bytes(
                args.bin, args.store, last_big["audited"], big_mb * MB)
            ok = total == big_mb * MB
            notes.append(
                f"store check ({big_mb} MB cell, session {str(session)[:8]}): {records} stream "
                f"records ({kept} kept in full, {hashed} as size+sha256) sum to {total} bytes of "
                f"{big_mb * MB}: {'every byte accounted for' if ok else 'BYTES MISSING'}")

        log(f"{n_prints} prints …")

        def prints(name, k):
            t = time.perf_counter()
            k.client.run(CODE_PRINTS.format(n=n_prints))
            return time.perf_counter() - t

        interleave(kernels, reps["prints"], prints, res, "prints")

        log(f"{png_bytes // MB} MB PNG …")

        def png(name, k):
            t = time.perf_counter()
            _, _, kinds = k.client.run(CODE_PNG)
            if kinds.get("display_data") != 1:
                notes.append(f"{name}: PNG cell gave {kinds}")
            return time.perf_counter() - t

        interleave(kernels, reps["png"], png, res, "png")
    finally:
        for k in kernels.values():
            k.stop()

    # Proxy memory: fresh kernels, RSS idle, after mem_mb[0] and after mem_mb[1] of output.
    mem = {}
    for name in [n for n in names if n != "direct" and "memory" in SELECTED]:
        log(f"memory ({name}) …")
        k = Kernel(names[name])
        try:
            k.client.ready()
            for _ in range(5):
                k.client.run("pass")
            time.sleep(0.5)
            row = {"idle": k.rss_kb()}
            done = 0
            seen = 0
            for mark in mem_mb:
                seen += k.client.run(CODE_50MB.format(n=mark - done), count_stream=True)[1]
                done = mark
                time.sleep(1.0)  # the proxy hands free memory back within a second
                row[mark] = k.rss_kb()
            with open(f"/proc/{k.pid}/status") as f:
                row["hwm"] = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
            with open(f"/proc/{k.pid}/comm") as f:
                row["comm"] = f.read().strip()
            mem[name] = row
            if seen != done * MB:
                notes.append(f"{name}: of {done} MB of stdout the client received {seen / MB:.1f} MB "
                             f"({(done * MB - seen) / MB:.1f} MB dropped by the relay)")
        finally:
            k.stop()

    # ---- the table ----------------------------------------------------------------
    def ms(x):
        return f"{x * 1000:9.2f}"

    targets = {
        "rtt": ("execute `pass` round trip", 1.10, 1.25),
        "big": (f"{big_mb} MB stdout, 1 MB writes", 1.05, None),
        "prints": (f"{n_prints} prints, one cell", 1.10, None),
        "png": (f"{png_bytes // MB} MB PNG display_data", 1.10, None),
    }
    others = [n for n in names if n != "direct"]
    print()
    head = f"{'figure':34} {'relay':8} {'n':>4} {'direct p50/p99 ms':>21} {'relay p50/p99 ms':>21} " \
           f"{'ratio p50':>9} {'ratio p99':>9}  target            result"
    print(head)
    print("-" * len(head))
    for key, (label, t50, t99) in targets.items():
        if key not in res:
            continue
        d = res[key]["direct"]
        d50, d99 = percentile(d, 50), percentile(d, 99)
        for name in others:
            a = res[key][name]
            a50, a99 = percentile(a, 50), percentile(a, 99)
            r50, r99 = a50 / d50, a99 / d99
            target = f"p50≤{t50:.2f}" + (f" p99≤{t99:.2f}" if t99 else "")
            verdict = "PASS" if r50 <= t50 and (t99 is None or r99 <= t99) else "MISS"
            if name != "audited":
                verdict = "(comparison)"
            print(f"{label:34} {name:8} {len(a):4} {ms(d50)}/{ms(d99)} {ms(a50)}/{ms(a99)} "
                  f"{r50:9.3f} {r99:9.3f}  {target:17} {verdict}")
    d = res.get("startup", {}).get("direct")
    for name in others if d else []:
        a = res["startup"][name]
        diff50 = (percentile(a, 50) - percentile(d, 50)) * 1000
        diff99 = (percentile(a, 99) - percentile(d, 99)) * 1000
        verdict = ("PASS" if diff50 <= 50 else "MISS") if name == "audited" else "(comparison)"
        print(f"{'start → kernel_info_reply':34} {name:8} {len(a):4} "
              f"{ms(percentile(d, 50))}/{ms(percentile(d, 99))} "
              f"{ms(percentile(a, 50))}/{ms(percentile(a, 99))} "
              f"{format(diff50, '+.1f') + 'ms':>9} {format(diff99, '+.1f') + 'ms':>9}  "
              f"{'relay−direct≤50ms':17} {verdict}")
    for name, row in mem.items():
        lo, hi = mem_mb
        growth = row[hi] - row[lo]
        ok = row["idle"] <= 15 * 1024 and row[hi] <= 15 * 1024 and growth <= 1024
        verdict = ("PASS" if ok else "MISS") if name == "audited" else "(comparison)"
        print(f"{'relay RSS (' + row['comm'] + ')':34} {name:8} idle {row['idle'] / 1024:.1f} MiB, "
              f"after {lo} MB {row[lo] / 1024:.1f} MiB, after {hi} MB {row[hi] / 1024:.1f} MiB "
              f"(growth {growth / 1024:+.1f} MiB, peak {row['hwm'] / 1024:.1f} MiB)  "
              f"target ≤15 MiB, no growth  {verdict}")
    print()
    print("CPU per operation, ms (all processes of the variant; the collector's for the "
          "audited one), and how busy the cores were: CPU / (cores × wall)")
    head = f"{'figure':34} {'variant':8} {'kernel':>8} {'relay':>8} {'collector':>9} " \
           f"{'client':>8} {'total':>8} {'wall':>8} {'cores busy':>10}"
    print(head)
    print("-" * len(head))
    cores = os.cpu_count() or 1
    for key, (label, _, _) in targets.items():
        spent_by = CPU.get(key, {})
        # The collector works only for the audited variant, sometimes still while the
        # next variant runs: all of its CPU in this figure is the audited variant's.
        collector = sum(spent.get("collector", 0.0) for spent in spent_by.values())
        for name, spent in spent_by.items():
            n = len(res[key][name])
            per = {role: spent.get(role, 0.0) / n * 1000 for role in ("kernel", "relay", "client")}
            per["collector"] = collector / n * 1000 if name == "audited" else 0.0
            total = sum(per.values())
            wall = sum(res[key][name]) / n * 1000
            print(f"{label:34} {name:8} {per['kernel']:8.1f} {per['relay']:8.1f} "
                  f"{per['collector']:9.1f} {per['client']:8.1f} {total:8.1f} {wall:8.1f} "
                  f"{total / (cores * wall):9.0%}")
    print()
    for note in notes:
        print("note:", note)
    print(f"relay bench: {time.perf_counter() - t_start:.0f} s; p99 of few repetitions is close to the max")


if __name__ == "__main__":
    main()
