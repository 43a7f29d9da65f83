"""The Debian package, as an admin meets it: built with scripts/build-deb.sh; first
installed in a container that systemd-nspawn boots from this machine's own files (under a
throwaway overlay), where systemd starts the unit with its whole sandbox; then installed
with dpkg on this machine, its accounts, directories, modes and files checked, its unit
verified by systemd-analyze, its collector run the way the unit runs it (its user and
groups, umask, descriptor limit, no privileges, the file system read-only but for its
two directories, a private /tmp) with an audited kernel recording through it and a
reviewer reading the trail, the syscalls it made checked against the unit's
SystemCallFilter=, then removed (conffile and store kept) and purged (conffile gone,
store still kept: purge does not destroy an audit trail).

Root only. It refuses to touch a machine where jupyter-audit is deployed already (the
package, /usr/bin/jupyter-audit, /var/lib/jupyter-audit or /etc/jupyter-audit), and
leaves the machine as it found it: accounts it created are deleted at the end.
"""

from __future__ import annotations

import grp
import gzip
import os
import pwd
import re
import resource
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from helpers import REPO, KernelPool, run_ok, wait_until

PACKAGING = REPO / "packaging" / "debian"
UNIT_NAME = "jupyter-audit-collector.service"
UNIT = Path("/usr/lib/systemd/system") / UNIT_NAME
SYSUSERS = Path("/usr/lib/sysusers.d/jupyter-audit.conf")
TMPFILES = Path("/usr/lib/tmpfiles.d/jupyter-audit.conf")
CONFFILE = Path("/etc/jupyter-audit/config.toml")
BINARY = Path("/usr/bin/jupyter-audit")
STATE = Path("/var/lib/jupyter-audit")
STORE = STATE / "store"
RUNTIME = Path("/run/jupyter-audit")
SOCKET = RUNTIME / "collector.sock"
COLLECTOR_USER = "jupyter-audit"
CONSOLE_USER = "jupyter-audit-review"
REVIEWERS = "jupyter-audit-reviewers"
# A notebook user: any uid that is neither the collector's nor a reviewer.
OUTSIDER = "nobody"


def package_state() -> str:
    """dpkg's state of the package ("installed", "config-files", …; "" when unknown)."""
    status = subprocess.run(["dpkg-query", "-W", "-f", "${Status}", "jupyter-audit"],
                            capture_output=True, text=True).stdout.split()
    return status[-1] if status else ""


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root: installs a Debian package with dpkg and creates system users"
    for tool in ("dpkg", "dpkg-deb", "systemd-analyze", "systemd-sysusers", "setpriv",
                 "unshare", "prlimit", "strace", "man"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (scripts/deb-env.sh installs what the test needs)"
    if package_state() not in ("", "not-installed"):
        return "the jupyter-audit package is installed on this machine: not touching it"
    for path in (BINARY, STATE, CONFFILE.parent):
        if path.exists():
            return f"{path} exists: jupyter-audit is deployed here, not touching it"
    return None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))


def run(*argv: str | Path, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=300,
                          check=check)


def account_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def service_settings(unit_text: str) -> dict[str, list[str]]:
    """The [Service] section: each key's values in order (continuation lines joined)."""
    settings: dict[str, list[str]] = {}
    section = None
    logical = re.sub(r"\\\n\s*", " ", unit_text)
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def syscall_groups() -> dict[str, set[str]]:
    """systemd's syscall groups, as this systemd defines them (nested groups kept as
    @names)."""
    listing = run("systemd-analyze", "syscall-filter").stdout
    groups: dict[str, set[str]] = {}
    current = None
    for line in listing.splitlines():
        if line.startswith("@"):
            current = line.strip()
            groups[current] = set()
        elif current and line.strip() and not line.strip().startswith("#"):
            groups[current].add(line.strip())
    return groups


def expand(group: str, groups: dict[str, set[str]]) -> set[str]:
    names: set[str] = set()
    for member in groups[group]:
        names |= expand(member, groups) if member.startswith("@") else {member}
    return names


@pytest.fixture(scope="module")
def package() -> Path:
    """The .deb, built by scripts/build-deb.sh (which prints its path)."""
    built = subprocess.run(["bash", str(REPO / "scripts" / "build-deb.sh")],
                           capture_output=True, text=True, timeout=1200, cwd=REPO)
    assert built.returncode == 0, built.stderr
    deb = REPO / built.stdout.strip().splitlines()[-1]
    assert deb.is_file() and deb.suffix == ".deb", built.stdout
    return deb


@pytest.fixture(scope="module")
def installed(package):
    """The package installed as README's install section says (`apt install ./….deb`: apt
    resolves its dependencies, dpkg installs it); at the end purged and every trace removed."""
    accounts_before = {name: account_exists(name) for name in (COLLECTOR_USER, CONSOLE_USER)}
    reviewers_before = group_exists(REVIEWERS)
    done = subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", str(package.resolve())],
        capture_output=True, text=True, timeout=300, check=False,
        env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        yield done
    finally:
        run("dpkg", "--purge", "jupyter-audit", check=False)
        shutil.rmtree(STATE, ignore_errors=True)
        shutil.rmtree(RUNTIME, ignore_errors=True)
        for name, existed in accounts_before.items():
            if not existed and account_exists(name):
                run("userdel", name, check=False)
            if not existed and group_exists(name):
                run("groupdel", name, check=False)
        if not reviewers_before and group_exists(REVIEWERS):
            run("groupdel", REVIEWERS, check=False)


# --- the unit under systemd itself -------------------------------------------------------

# Runs in the container as a oneshot unit: installs the package, then says what it saw, one
# "CHECK name value" line each.
CONTAINER_CHECKS = r"""#!/bin/sh
exec >/ja/out/checks 2>/ja/out/stderr
check() { echo "CHECK $1 $2"; }
dpkg -i /ja/pkg.deb >/ja/out/dpkg.log 2>&1
check dpkg $?
# Debian images forbid starts from maintainer scripts (policy-rc.d); start it here.
systemctl start jupyter-audit-collector
check start $?
for _ in $(seq 100); do [ -S /run/jupyter-audit/collector.sock ] && break; sleep 0.1; done
check active "$(systemctl is-active jupyter-audit-collector)"
pid=$(systemctl show -p MainPID --value jupyter-audit-collector)
check user "$(stat -c %U /proc/$pid)"
check nonewprivs "$(awk '/^NoNewPrivs/{print $2}' /proc/$pid/status)"
check seccomp "$(awk '/^Seccomp:/{print $2}' /proc/$pid/status)"
check capbnd "$(awk '/^CapBnd/{print $2}' /proc/$pid/status)"
check rootfs "$(awk '$5 == "/" {split($6, o, ","); print o[1]}' /proc/$pid/mountinfo)"
check store "$(stat -c %U:%G:%a /var/lib/jupyter-audit/store)"
check socket "$(stat -c %U:%a /run/jupyter-audit/collector.sock)"
check kernel "$(@PYTHON@ /ja/kernel.py deb-under-systemd)"
check logged "$(runuser -u jupyter-audit-review -- jupyter-audit log --store /var/lib/jupyter-audit/store --grep deb-under-systemd --action execute_request | grep -c deb-under-systemd)"
runuser -u jupyter-audit-review -- jupyter-audit verify --store /var/lib/jupyter-audit/store >/dev/null
check verify $?
kill -9 "$pid"
for _ in $(seq 100); do
    new=$(systemctl show -p MainPID --value jupyter-audit-collector)
    [ "$new" != 0 ] && [ "$new" != "$pid" ] && [ -S /run/jupyter-audit/collector.sock ] && break
    sleep 0.1
done
check restarted "$(systemctl is-active jupyter-audit-collector)"
# The Hub over TCP (RestrictAddressFamilies=): a refused connection, not a refused family.
printf '[hub]\napi_url = "http://127.0.0.1:9/hub/api"\nidentity = "preferred"\n' >>/etc/jupyter-audit/config.toml
systemctl restart jupyter-audit-collector
for _ in $(seq 100); do [ -S /run/jupyter-audit/collector.sock ] && break; sleep 0.1; done
JUPYTERHUB_API_TOKEN=not-a-token @PYTHON@ /ja/kernel.py deb-with-hub >/dev/null
check hub "$(runuser -u jupyter-audit-review -- jupyter-audit log --store /var/lib/jupyter-audit/store --action identity_unverified --json | tail -1)"
# Without the reviewers' group the unit does not start.
systemctl stop jupyter-audit-collector
groupdel jupyter-audit-reviewers
systemctl start jupyter-audit-collector 2>/dev/null
check no_group "$(systemctl show -p ExecMainStatus --value jupyter-audit-collector)"
systemctl stop jupyter-audit-collector
check done 1
"""

# Runs in the container: a cell through an audited kernel that records to the collector.
CONTAINER_KERNEL = r"""import json, os, sys
from pathlib import Path
from jupyter_client.manager import start_new_kernel
spec = Path("/tmp/kernels/kernels/audited"); spec.mkdir(parents=True, exist_ok=True)
argv = ["/usr/bin/jupyter-audit", "kernel", "--socket", "/run/jupyter-audit/collector.sock",
        "-f", "{connection_file}", "--",
        sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
(spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "a", "language": "python"}))
os.environ["JUPYTER_PATH"] = "/tmp/kernels"
km, kc = start_new_kernel(kernel_name="audited", startup_timeout=60)
out = []
kc.execute_interactive(f"print({sys.argv[1]!r}.upper())", timeout=60,
                       output_hook=lambda m: out.append(m["content"].get("text", "")))
print("".join(out).strip())
kc.stop_channels()
km.shutdown_kernel(now=True)
"""

CONTAINER_UNIT = """[Unit]
Description=jupyter-audit package checks
After=basic.target
[Service]
Type=oneshot
ExecStart=/bin/sh /ja/checks.sh
ExecStopPost=/bin/systemctl poweroff --no-block
"""

# The container: this machine's own file system under a throwaway overlay (changes go to a
# tmpfs in a private mount namespace), booted by systemd-nspawn into the checks' unit.
CONTAINER_RUN = """set -e
mount --make-rprivate /
mount -t tmpfs tmpfs "$WORK/changes"
mkdir "$WORK/changes/upper" "$WORK/changes/work"
mount -t overlay overlay -o "lowerdir=/,upperdir=$WORK/changes/upper,workdir=$WORK/changes/work" "$WORK/root"
# nspawn keeps state in /run and will only clean it from a tmpfs.
mount -t tmpfs tmpfs /run
exec systemd-nspawn --quiet --directory "$WORK/root" --machine ja-deb-test --register=no \\
    --keep-unit --link-journal=no --uuid "$(tr -d - </proc/sys/kernel/random/uuid)" \\
    --bind-ro "$WORK/checks.sh:/ja/checks.sh" --bind-ro "$WORK/kernel.py:/ja/kernel.py" \\
    --bind-ro "$DEB:/ja/pkg.deb" --bind "$WORK/out:/ja/out" --bind-ro "$VENV:$VENV" \\
    --bind-ro "$WORK/ja-checks.service:/etc/systemd/system/ja-checks.service" \\
    --boot -- systemd.unit=ja-checks.service
"""

CGROUP_ROOTS = (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))


def cgroups_now() -> set[Path]:
    return {child for root in CGROUP_ROOTS if root.is_dir() for child in root.iterdir()
            if child.is_dir()}


def remove_cgroup(path: Path) -> None:
    """An empty cgroup nspawn left (payload, supervisor), children first."""
    for child in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        try:
            child.rmdir()
        except OSError:
            pass
    try:
        path.rmdir()
    except OSError:
        pass


def test_the_unit_under_systemd(package):
    """The packaged unit run by systemd itself, in a container booted from this machine's
    file system: the sandbox as the kernel applies it, the store, an audited cell, a
    reviewer, Restart=, the Hub over TCP, a missing reviewers' group."""
    if shutil.which("systemd-nspawn") is None:
        pytest.skip("systemd-nspawn is missing (Debian systemd-container; scripts/deb-env.sh)")
    assert not BINARY.exists(), "the package must not be on the host: the container copies it"
    work = Path(tempfile.mkdtemp(prefix="ja-deb-nspawn-", dir="/var/tmp"))
    cgroups_before = cgroups_now()
    try:
        for sub in ("root", "changes", "out"):
            (work / sub).mkdir()
        # The container sees this machine's files: the suite's Python (jupyter_client,
        # ipykernel) runs the kernel there. Its environment is bound in as well: nspawn
        # mounts a fresh /tmp, where a clone's .venv may live (CI clones into /tmp).
        (work / "checks.sh").write_text(CONTAINER_CHECKS.replace("@PYTHON@", sys.executable))
        (work / "kernel.py").write_text(CONTAINER_KERNEL)
        (work / "ja-checks.service").write_text(CONTAINER_UNIT)
        env = {**os.environ, "WORK": str(work), "DEB": str(package),
               "VENV": str(Path(sys.prefix).resolve())}
        booted = subprocess.run(["unshare", "--mount", "--", "sh", "-c", CONTAINER_RUN],
                                capture_output=True, text=True, timeout=600, env=env)
        checks_file = work / "out" / "checks"
        if not checks_file.exists():
            pytest.skip("systemd-nspawn could not boot this machine's file system here: "
                        + (booted.stderr.strip().splitlines() or ["(no output)"])[-1])
        checks = {}
        for line in checks_file.read_text().splitlines():
            _, name, value = (line.split(" ", 2) + [""])[:3]
            checks[name] = value
        detail = f"{checks}\n{(work / 'out' / 'stderr').read_text()}"
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for cgroup in cgroups_now() - cgroups_before:
            remove_cgroup(cgroup)

    assert checks.get("done") == "1", detail
    assert checks["dpkg"] == "0" and checks["start"] == "0", detail
    assert checks["active"] == "active", detail
    # The sandbox as the kernel sees it: the collector's user, no new privileges, a
    # seccomp filter, no capabilities, the root file system read-only.
    assert checks["user"] == COLLECTOR_USER, detail
    assert checks["nonewprivs"] == "1" and checks["seccomp"] == "2", detail
    assert int(checks["capbnd"], 16) == 0, detail
    assert checks["rootfs"] == "ro", detail
    assert checks["store"] == f"{COLLECTOR_USER}:{REVIEWERS}:750", detail
    assert checks["socket"] == f"{COLLECTOR_USER}:666", detail
    # An audited cell ran and is on the record, which a reviewer reads and verifies.
    assert checks["kernel"] == "DEB-UNDER-SYSTEMD", detail
    assert checks["logged"] == "1" and checks["verify"] == "0", detail
    assert checks["restarted"] == "active", detail
    # The Hub was asked over TCP; the refusal is the port's, not the sandbox's.
    assert "hub_unreachable" in checks["hub"] and "Connection refused" in checks["hub"], detail
    # 216/GROUP: systemd could not apply SupplementaryGroups=.
    assert checks["no_group"] == "216", detail


def test_the_package_installs_its_files(installed):
    listed = set(run("dpkg", "-L", "jupyter-audit").stdout.split())
    assert {str(BINARY), str(UNIT), str(SYSUSERS), str(TMPFILES), str(CONFFILE)} <= listed

    version = run(BINARY, "--version").stdout
    assert version.startswith("jupyter-audit ")
    sections = run("readelf", "-S", "-W", BINARY).stdout
    assert ".debug_info" not in sections and ".debug_line" not in sections, "binary is stripped"
    assert stat.S_IMODE(BINARY.stat().st_mode) == 0o755 and BINARY.stat().st_uid == 0

    # The installed files are the repository's (README and the guide show that unit).
    assert UNIT.read_text() == (PACKAGING / UNIT_NAME).read_text()
    assert SYSUSERS.read_text() == (PACKAGING / "sysusers.d" / "jupyter-audit.conf").read_text()
    assert TMPFILES.read_text() == (PACKAGING / "tmpfiles.d" / "jupyter-audit.conf").read_text()

    # The admin config: a conffile dpkg keeps, that every proxy (any user) can read and
    # only root can change.
    conffiles = run("dpkg-query", "-W", "-f", "${Conffiles}", "jupyter-audit").stdout
    assert str(CONFFILE) in conffiles
    assert CONFFILE.read_text() == (PACKAGING / "config.toml").read_text()
    for path, mode in ((CONFFILE, 0o644), (CONFFILE.parent, 0o755)):
        info = path.stat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, 0, mode), path

    # Man pages: gzip, a .TH per page, found and rendered by man.
    man_dir = Path("/usr/share/man/man1")
    for page in ("jupyter-audit", "jupyter-audit-collector", "jupyter-audit-install",
                 "jupyter-audit-postgres-init"):
        source = gzip.decompress((man_dir / f"{page}.1.gz").read_bytes()).decode()
        assert re.search(rf"^\.TH {re.escape(page)} 1\b", source, re.M), page
    assert run("man", "-w", "jupyter-audit-collector").stdout.strip() == str(
        man_dir / "jupyter-audit-collector.1.gz")
    rendered = run("man", "-l", man_dir / "jupyter-audit-collector.1.gz",
                   check=False).stdout
    assert "--reviewers-group" in rendered.replace("\u2010", "-")
    # No man page for the hidden packaging subcommand.
    assert not (man_dir / "jupyter-audit-manpages.1.gz").exists()

    # Completions at the paths bash-completion, zsh and fish look in, for this binary.
    bash = Path("/usr/share/bash-completion/completions/jupyter-audit")
    loaded = run("bash", "-c", f"source {bash} && complete -p jupyter-audit").stdout
    assert "jupyter-audit" in loaded
    assert "--reviewers-group" in bash.read_text()
    zsh = Path("/usr/share/zsh/vendor-completions/_jupyter-audit").read_text()
    assert zsh.startswith("#compdef jupyter-audit")
    fish = Path("/usr/share/fish/vendor_completions.d/jupyter-audit.fish").read_text()
    assert "complete -c jupyter-audit" in fish


def test_accounts_and_directories(installed):
    for name in (COLLECTOR_USER, CONSOLE_USER):
        account = pwd.getpwnam(name)
        assert account.pw_uid < 1000, f"{name} is a system user"
        assert account.pw_shell.endswith("nologin"), f"{name} cannot log in"
        assert grp.getgrgid(account.pw_gid).gr_name == name
    reviewers = grp.getgrnam(REVIEWERS)
    assert CONSOLE_USER in reviewers.gr_mem, "the console reads the store"
    assert COLLECTOR_USER not in reviewers.gr_mem, "the unit grants it (SupplementaryGroups=)"

    collector = pwd.getpwnam(COLLECTOR_USER)
    for path, mode in ((STATE, 0o711), (RUNTIME, 0o755)):
        info = path.stat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (
            collector.pw_uid, collector.pw_gid, mode), path

    # Enabled for the next boot, though systemd does not run here.
    wants = Path("/etc/systemd/system/multi-user.target.wants") / UNIT_NAME
    assert wants.is_symlink() and wants.resolve() == UNIT.resolve()


def test_the_unit_verifies(installed):
    verified = run("systemd-analyze", "verify", UNIT, check=False)
    assert verified.returncode == 0, verified.stderr
    assert verified.stderr.strip() == "" and verified.stdout.strip() == ""


def sandboxed_collector(settings: dict[str, list[str]], trace_dir: Path) -> list[str]:
    """The unit's ExecStart= as the unit runs it, without systemd: in a mount namespace
    where the file system is read-only but for the StateDirectory= and RuntimeDirectory=
    (ProtectSystem=strict) with a private /tmp and no homes (PrivateTmp=, ProtectHome=),
    under User=/Group=/SupplementaryGroups=, UMask=, LimitNOFILE=, with no new
    privileges and no capabilities, traced by strace (its syscall summary in
    `trace_dir`/syscalls.txt, the one other writable directory)."""
    (user,) = settings["User"]
    (group,) = settings["Group"]
    (groups,) = settings["SupplementaryGroups"]
    (umask,) = settings["UMask"]
    (nofile,) = settings["LimitNOFILE"]
    # Raising the hard limit needs CAP_SYS_RESOURCE, which systemd has and a container's
    # root may not (this machine's stops at 20000): the unit's figure, or what we may.
    nofile = min(int(nofile), resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    (state,) = settings["StateDirectory"]
    (runtime,) = settings["RuntimeDirectory"]
    assert settings["ProtectSystem"] == ["strict"] and settings["NoNewPrivileges"] == ["yes"]
    assert settings["CapabilityBoundingSet"] == [""]
    (exec_start,) = settings["ExecStart"]
    inside = " && ".join([
        f"mount --bind /var/lib/{state} /var/lib/{state}",
        f"mount --bind /run/{runtime} /run/{runtime}",
        f"mount --bind {trace_dir} {trace_dir}",
        "mount -o remount,bind,ro /",
        "mount -t tmpfs -o mode=1777 tmpfs /tmp",
        "mount -t tmpfs -o ro,mode=755 tmpfs /home",
        "mount -t tmpfs -o ro,mode=700 tmpfs /root",
        f"umask {umask}",
        shlex.join(["exec", "prlimit", f"--nofile={nofile}:{nofile}", "--",
                    "setpriv", f"--reuid={user}", f"--regid={group}", f"--groups={groups}",
                    "--no-new-privs", "--bounding-set=-all", "--inh-caps=-all", "--",
                    "strace", "-f", "-c", "-o", str(trace_dir / "syscalls.txt"), "--"])
        + " " + exec_start,
    ])
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", inside]


def collector_processes(tracer: int) -> list[int]:
    """The processes strace (`tracer`, what the sandbox command became) runs."""
    try:
        return [int(pid) for pid in
                Path(f"/proc/{tracer}/task/{tracer}/children").read_text().split()]
    except FileNotFoundError:
        return []


def test_the_collector_runs_as_the_unit_runs_it(installed):
    settings = service_settings(UNIT.read_text())
    # strace writes its summary where the collector's user may write and others may not
    # (not in /tmp: the collector gets a private one).
    trace_dir = Path(tempfile.mkdtemp(prefix="ja-deb-trace-", dir="/var/tmp"))
    collector_user = pwd.getpwnam(COLLECTOR_USER)
    os.chown(trace_dir, collector_user.pw_uid, collector_user.pw_gid)
    try:
        check_the_sandboxed_collector(settings, trace_dir)
    finally:
        shutil.rmtree(trace_dir, ignore_errors=True)


def check_the_sandboxed_collector(settings: dict[str, list[str]], trace_dir: Path) -> None:
    collector_user = pwd.getpwnam(COLLECTOR_USER)
    syscalls = trace_dir / "syscalls.txt"
    log = open(trace_dir / "collector.log", "w+")
    collector = subprocess.Popen(sandboxed_collector(settings, trace_dir),
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                 env={**os.environ, "RUST_LOG": "jupyter_audit=info"})
    pool = KernelPool()
    try:
        assert wait_until(lambda: SOCKET.exists() or collector.poll() is not None, 30)
        assert collector.poll() is None, Path(log.name).read_text()
        assert stat.S_IMODE(SOCKET.stat().st_mode) == 0o666, "every notebook user may connect"
        info = STORE.stat()
        assert (info.st_uid, grp.getgrgid(info.st_gid).gr_name, stat.S_IMODE(info.st_mode)) == (
            collector_user.pw_uid, REVIEWERS, 0o750)

        # An audited kernel, installed by the packaged binary, recording through it.
        prefix = Path(os.environ["JUPYTER_PATH"]).parents[1]
        name = f"python3-deb-{uuid.uuid4().hex[:8]}"
        run(BINARY, "install", "--wrap", "python3-direct", "--name", name,
            "--prefix", prefix, "--socket", SOCKET)
        _, kc = pool.start(name)
        marker = f"deb-{uuid.uuid4().hex}"
        assert run_ok(kc, f"print({marker!r}.upper())").strip() == marker.upper()

        # A reviewer reads the trail; a notebook user cannot.
        def reviewer_sees_it() -> bool:
            shown = run("runuser", "-u", CONSOLE_USER, "--", BINARY, "log", "--store", STORE,
                        "--grep", marker, check=False)
            return shown.returncode == 0 and marker in shown.stdout
        assert wait_until(reviewer_sees_it, 30)
        refused = run("runuser", "-u", OUTSIDER, "--", BINARY, "log", "--store", STORE,
                      check=False)
        assert refused.returncode != 0 and marker not in refused.stdout

        # What a notebook user must not be able to do.
        for attempt in (["ls", STATE], ["ls", STORE], ["touch", RUNTIME / "x"],
                        ["touch", STATE / "x"], ["touch", CONFFILE.parent / "x"],
                        ["sh", "-c", f"echo '[collector]' >> {CONFFILE}"]):
            tried = run("runuser", "-u", OUTSIDER, "--", *attempt, check=False)
            assert tried.returncode != 0, f"{OUTSIDER} could: {attempt}"
        # ... and the collector needed nothing writable outside its two directories.
        assert "Read-only file system" not in Path(log.name).read_text()
    finally:
        pool.shutdown_all()
        # systemctl stop: SIGTERM to the collector (strace's child), not to strace.
        for child in collector_processes(collector.pid):
            os.kill(child, signal.SIGTERM)
        try:
            collector.wait(timeout=30)
        except subprocess.TimeoutExpired:
            collector.kill()
            collector.wait()
        log.close()
    output = Path(trace_dir / "collector.log").read_text()
    assert collector.returncode == 0, output
    verified = run("runuser", "-u", CONSOLE_USER, "--", BINARY, "verify", "--store", STORE,
                   check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    # Every syscall the collector made is one SystemCallFilter= lets through.
    made = {
        fields[-1]
        for line in syscalls.read_text().splitlines()
        if (fields := line.split()) and re.fullmatch(r"[\d.]+", fields[0]) and len(fields) >= 4
        and fields[-1] != "total"
    }
    # The traced run did what the unit must allow: give the store to the reviewers'
    # group, raise the descriptor limit, read the peers' credentials.
    assert {"chown", "fchown", "fchownat"} & made, sorted(made)
    assert {"prlimit64", "setrlimit"} & made, sorted(made)
    assert "getsockopt" in made, sorted(made)
    groups = syscall_groups()
    allowed = set()
    for entry in settings["SystemCallFilter"]:
        for item in entry.split():
            allowed |= expand(item, groups) if item.startswith("@") else {item}
    assert made - allowed == set(), f"syscalls outside the unit's filter: {made - allowed}"


def test_upgrade_and_remove_keep_the_conffile_and_the_store_and_purge_keeps_the_store(
        installed, package):
    # The store the collector test left (or none, when run alone).
    store_files = {p for p in STORE.rglob("*")} if STORE.exists() else set()
    edited = CONFFILE.read_text() + "# edited by the admin\n"
    CONFFILE.write_text(edited)

    # An upgrade (here: the same version again) keeps the admin's config and the store.
    upgraded = run("dpkg", "-i", package, check=False)
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    assert CONFFILE.read_text() == edited
    assert {p for p in STORE.rglob("*")} >= store_files

    store_files = {p for p in STORE.rglob("*")} if STORE.exists() else set()
    removed = run("dpkg", "-r", "jupyter-audit", check=False)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert not BINARY.exists() and not UNIT.exists() and not SYSUSERS.exists()
    assert CONFFILE.read_text() == edited
    assert STATE.is_dir()
    assert {p for p in STORE.rglob("*")} == store_files
    assert account_exists(COLLECTOR_USER) and group_exists(REVIEWERS)

    purged = run("dpkg", "-P", "jupyter-audit", check=False)
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert not CONFFILE.exists() and not CONFFILE.parent.exists()
    assert not RUNTIME.exists()
    assert not (Path("/etc/systemd/system/multi-user.target.wants") / UNIT_NAME).exists()
    if store_files:
        # The trail outlives the package, and purge says where it is.
        assert {p for p in STORE.rglob("*")} == store_files
        assert str(STATE) in purged.stderr
    else:
        assert not STATE.exists()
    # Debian policy: system users are not removed (the kept store belongs to them).
    assert account_exists(COLLECTOR_USER) and account_exists(CONSOLE_USER)
    assert package_state() in ("", "not-installed")
