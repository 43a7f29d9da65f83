"""`jupyter-audit install`: wrapping kernelspecs, replacing them in place, and errors.

Every test uses its own temporary directories and passes the Jupyter path variables to
the subprocess explicitly, so the result does not depend on the directories conftest.py
set up for the other tests (nor on the machine's own kernelspecs). Specs are installed
with the suite's collector socket and a nonexistent admin config file (`audit_flags()`),
so every audited kernel started here records to the suite's collector.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager

from helpers import STARTUP_TIMEOUT, run_ok, wait_until

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("JUPYTER_AUDIT_BIN") or REPO / "target" / "release" / "jupyter-audit")

NAME = "audited-test"
LOGOS = {
    "logo-32x32.png": b"\x89PNG\r\n\x1a\nsmall",
    "logo-64x64.png": b"\x89PNG\r\n\x1a\nlarge",
    "logo-svg.svg": b"<svg xmlns='http://www.w3.org/2000/svg'/>",
    "kernel.js": b"// kernel.js\n",
}
IPYKERNEL_ARGV = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]


def audit_flags() -> list[str]:
    """`install` flags that make the spec record to the suite's collector."""
    return [
        "--socket", os.environ["JUPYTER_AUDIT_TEST_SOCKET"],
        "--config", os.environ["JUPYTER_AUDIT_TEST_CONFIG"],
    ]


def proxy_flags_of(argv: list[str]) -> list[str]:
    """The proxy's flags in an audited argv: between `kernel` and `-f {connection_file}`."""
    return argv[2 : argv.index("-f")]


def kernel_argv_of(argv: list[str]) -> list[str]:
    """The wrapped kernel's command line: what follows the proxy's `--`."""
    return argv[argv.index("--") + 1 :]


def run_install(args: list[str], tmp_path: Path, **extra_env: str) -> subprocess.CompletedProcess:
    """Run `jupyter-audit install ARGS` with Jupyter's search path confined to tmp_path."""
    env = dict(os.environ)
    for var in ("JUPYTER_PATH", "JUPYTER_DATA_DIR", "XDG_DATA_HOME", "JUPYTER_PREFER_ENV_PATH"):
        env.pop(var, None)
    env["JUPYTER_DATA_DIR"] = str(tmp_path / "user-data")
    env["JUPYTER_PATH"] = str(tmp_path / "jupyter-path")
    env["RUST_LOG"] = "info"
    env.update(extra_env)
    return subprocess.run(
        [str(BIN), "install", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def write_spec(spec_dir: Path, spec: dict, logos: bool = True) -> Path:
    spec_dir.mkdir(parents=True, exist_ok=True)
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
    if logos:
        for name, data in LOGOS.items():
            (spec_dir / name).write_bytes(data)
    return spec_dir


def source_spec() -> dict:
    return {
        "argv": IPYKERNEL_ARGV,
        "display_name": "Python 3 (install test)",
        "language": "python",
        "interrupt_mode": "message",
        "env": {"JA_INSTALL_TEST": "from-the-spec"},
        "kernel_protocol_version": "5.5",
        "metadata": {"debugger": True, "custom": {"nested": [1, 2]}},
    }


def read_json(spec_dir: Path) -> dict:
    return json.loads((spec_dir / "kernel.json").read_text())


def proxy_argv_count(argv: list[str]) -> int:
    """How many times a jupyter-audit proxy appears on a command line."""
    return sum(
        1
        for i, arg in enumerate(argv[:-1])
        if Path(arg).name.startswith("jupyter-audit") and argv[i + 1] == "kernel"
    )


def test_wrap_into_prefix_keeps_the_spec_and_runs(tmp_path, kernels):
    src = write_spec(tmp_path / "src" / "python3-source", source_spec())
    prefix = tmp_path / "prefix"

    result = run_install(
        ["--wrap", str(src), "--name", NAME, "--prefix", str(prefix), *audit_flags()], tmp_path
    )
    assert result.returncode == 0, result.stderr
    kernels_dir = prefix / "share" / "jupyter" / "kernels"
    assert Path(result.stdout.strip()) == kernels_dir / NAME

    ksm = KernelSpecManager(kernel_dirs=[str(kernels_dir)])
    assert NAME in ksm.find_kernel_specs()
    spec = ksm.get_kernel_spec(NAME)
    original = source_spec()
    assert spec.argv[:9] == [
        str(BIN.resolve()), "kernel", *audit_flags(), "-f", "{connection_file}", "--"
    ]
    assert spec.argv[9:] == original["argv"]
    assert spec.display_name == "Python 3 (install test) (audited)"
    assert spec.language == "python"
    assert spec.interrupt_mode == "message"
    assert spec.env == original["env"]
    raw = read_json(Path(spec.resource_dir))
    assert raw["kernel_protocol_version"] == "5.5"
    metadata = spec.metadata
    assert metadata["debugger"] is True
    assert metadata["custom"] == {"nested": [1, 2]}
    audit = metadata["jupyter_audit"]
    assert audit["wrapped_argv"] == original["argv"]
    assert Path(audit["wrapped_spec"]) == src.resolve()
    assert audit["version"]
    for name, data in LOGOS.items():
        assert (Path(spec.resource_dir) / name).read_bytes() == data, name
    assert not [p for p in kernels_dir.iterdir() if p.name.startswith(".")], "staging left over"

    # The audited kernel really runs (through the proxy) and gets the spec's env.
    km = KernelManager(kernel_spec_manager=ksm, kernel_name=NAME)
    kernels.managers.append(km)
    km.start_kernel()
    kc = kernels.client(km)
    assert run_ok(kc, "print(1+1)") == "2\n"
    assert run_ok(kc, "import os; print(os.environ['JA_INSTALL_TEST'])") == "from-the-spec\n"


def test_socket_given_to_install_is_in_the_argv_and_the_kernel_records(
    tmp_path, kernels, suite_store
):
    src = write_spec(tmp_path / "src" / "python3-source", source_spec(), logos=False)
    prefix = tmp_path / "prefix"
    socket = os.environ["JUPYTER_AUDIT_TEST_SOCKET"]
    config = os.environ["JUPYTER_AUDIT_TEST_CONFIG"]
    result = run_install(
        ["--wrap", str(src), "--name", NAME, "--prefix", str(prefix), "--socket", socket,
         "--on-audit-failure", "block", "--config", config],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "no audit collector" not in result.stderr
    kernels_dir = prefix / "share" / "jupyter" / "kernels"
    assert read_json(kernels_dir / NAME)["argv"] == [
        str(BIN.resolve()), "kernel",
        "--socket", socket, "--on-audit-failure", "block", "--config", config,
        "-f", "{connection_file}", "--", *IPYKERNEL_ARGV,
    ]

    ksm = KernelSpecManager(kernel_dirs=[str(kernels_dir)])
    km = KernelManager(kernel_spec_manager=ksm, kernel_name=NAME)
    kernels.managers.append(km)
    km.start_kernel()
    kc = kernels.client(km)
    marker = f"ja-install-{uuid.uuid4().hex}"
    assert run_ok(kc, f"print('{marker}')") == f"{marker}\n"
    # Write-ahead: the request was on disk in the suite's store before it ran.
    segments = sorted((suite_store / "segments").glob("*.jsonl"))
    assert any(marker in p.read_text(errors="replace") for p in segments), segments


def test_spec_without_a_collector_refuses_to_start(tmp_path):
    """No --socket in the spec and no admin config: the kernel does not start, and the
    reason is in its stderr and in the KernelManager's failure."""
    src = write_spec(tmp_path / "src" / "python3-source", source_spec(), logos=False)
    prefix = tmp_path / "prefix"
    # --config points at a file that does not exist, so /etc/jupyter-audit cannot help.
    config = os.environ["JUPYTER_AUDIT_TEST_CONFIG"]
    assert not Path(config).exists()
    result = run_install(
        ["--wrap", str(src), "--name", NAME, "--prefix", str(prefix), "--config", config],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "no audit collector" in result.stderr, result.stderr  # install warns
    kernels_dir = prefix / "share" / "jupyter" / "kernels"
    argv = read_json(kernels_dir / NAME)["argv"]
    assert proxy_flags_of(argv) == ["--config", config]

    ksm = KernelSpecManager(kernel_dirs=[str(kernels_dir)])
    km = KernelManager(kernel_spec_manager=ksm, kernel_name=NAME)
    stderr_path = tmp_path / "kernel-stderr.txt"
    with open(stderr_path, "w") as stderr:
        km.start_kernel(stderr=stderr)
    try:
        kc = km.client()  # the only client of km: its parent is km, so it sees the death
        kc.start_channels()
        try:
            with pytest.raises(RuntimeError, match="[Kk]ernel died"):
                kc.wait_for_ready(timeout=STARTUP_TIMEOUT)
        finally:
            kc.stop_channels()
        assert wait_until(lambda: not km.is_alive(), 10)
        assert km.provisioner.process.returncode not in (0, None)
        text = stderr_path.read_text()
        assert "no audit collector configured" in text, text
        assert "--socket" in text, text
    finally:
        if km.has_kernel:
            km.shutdown_kernel(now=True)
        km.cleanup_resources()


def test_replace_twice_wraps_once(tmp_path):
    spec_dir = write_spec(tmp_path / "jupyter-path" / "kernels" / "replace-me", source_spec())
    mode = 0o640
    (spec_dir / "kernel.json").chmod(mode)

    first = run_install(["--wrap", "replace-me", "--replace", *audit_flags()], tmp_path)
    assert first.returncode == 0, first.stderr
    assert Path(first.stdout.strip()) == spec_dir.resolve()
    once = read_json(spec_dir)
    once_bytes = (spec_dir / "kernel.json").read_bytes()

    second = run_install(["--wrap", "replace-me", "--replace", *audit_flags()], tmp_path)
    assert second.returncode == 0, second.stderr
    assert (spec_dir / "kernel.json").read_bytes() == once_bytes

    for spec in (once, read_json(spec_dir)):
        assert proxy_argv_count(spec["argv"]) == 1, spec["argv"]
        assert proxy_flags_of(spec["argv"]) == audit_flags()
        assert kernel_argv_of(spec["argv"]) == IPYKERNEL_ARGV
        assert spec["metadata"]["jupyter_audit"]["wrapped_argv"] == IPYKERNEL_ARGV
        # --replace keeps the name users know.
        assert spec["display_name"] == "Python 3 (install test)"
    assert (spec_dir / "kernel.json").stat().st_mode & 0o777 == mode
    assert not [p for p in spec_dir.iterdir() if p.name.startswith(".")], "temp file left over"

    # A new proxy path is only refreshed, never stacked, and the flags are kept.
    other = tmp_path / "bin" / "jupyter-audit"
    third = run_install(
        ["--wrap", "replace-me", "--replace", "--proxy-path", str(other)], tmp_path
    )
    assert third.returncode == 0, third.stderr
    spec = read_json(spec_dir)
    assert spec["argv"][0] == str(other)
    assert proxy_argv_count(spec["argv"]) == 1
    assert proxy_flags_of(spec["argv"]) == audit_flags()
    assert kernel_argv_of(spec["argv"]) == IPYKERNEL_ARGV

    # A flag given again gets its new value, in place; the others stay.
    fourth = run_install(
        ["--wrap", "replace-me", "--replace", "--socket", str(tmp_path / "other.sock"),
         "--on-audit-failure", "allow"],
        tmp_path,
    )
    assert fourth.returncode == 0, fourth.stderr
    spec = read_json(spec_dir)
    assert proxy_flags_of(spec["argv"]) == [
        "--socket", str(tmp_path / "other.sock"),
        "--config", os.environ["JUPYTER_AUDIT_TEST_CONFIG"],
        "--on-audit-failure", "allow",
    ]
    assert kernel_argv_of(spec["argv"]) == IPYKERNEL_ARGV


def test_wrapping_an_audited_spec_wraps_the_original(tmp_path):
    src = write_spec(tmp_path / "src" / "orig", source_spec(), logos=False)
    first = run_install(["--wrap", str(src), "--name", "first", "--user", *audit_flags()], tmp_path)
    assert first.returncode == 0, first.stderr
    audited = Path(first.stdout.strip())
    assert audited == tmp_path / "user-data" / "kernels" / "first"

    second = run_install(["--wrap", "first", "--name", "second", "--user"], tmp_path)
    assert second.returncode == 0, second.stderr
    spec = read_json(Path(second.stdout.strip()))
    assert proxy_argv_count(spec["argv"]) == 1, spec["argv"]
    # The audited spec's flags come along unless given again.
    assert proxy_flags_of(spec["argv"]) == audit_flags()
    assert spec["metadata"]["jupyter_audit"]["wrapped_argv"] == IPYKERNEL_ARGV
    assert spec["display_name"] == "Python 3 (install test) (audited)"


def test_existing_destination_is_not_overwritten(tmp_path):
    src = write_spec(tmp_path / "src" / "orig", source_spec(), logos=False)
    taken = write_spec(
        tmp_path / "user-data" / "kernels" / "taken",
        {"argv": ["something-else"], "display_name": "Taken"},
        logos=False,
    )
    result = run_install(["--wrap", str(src), "--name", "taken", "--user", *audit_flags()], tmp_path)
    assert result.returncode != 0
    assert "already exists" in result.stderr
    assert read_json(taken)["argv"] == ["something-else"]

    # The same install twice is fine: the destination wraps the same spec.
    for _ in range(2):
        again = run_install(
            ["--wrap", str(src), "--name", "mine", "--user", *audit_flags()], tmp_path
        )
        assert again.returncode == 0, again.stderr


def test_bare_python_is_resolved_to_the_prefix_interpreter(tmp_path):
    env_prefix = tmp_path / "jupyter-path" / ".." / "env"
    env_prefix = env_prefix.resolve()
    (env_prefix / "bin").mkdir(parents=True)
    (env_prefix / "bin" / "python").symlink_to(sys.executable)
    spec = dict(source_spec(), argv=["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"])
    write_spec(env_prefix / "share" / "jupyter" / "kernels" / "bare", spec, logos=False)

    result = run_install(
        ["--wrap", "bare", "--name", "bare-audited", "--prefix", str(tmp_path / "out"),
         *audit_flags()],
        tmp_path,
        JUPYTER_PATH=str(env_prefix / "share" / "jupyter"),
    )
    assert result.returncode == 0, result.stderr
    wrapped = read_json(Path(result.stdout.strip()))
    assert kernel_argv_of(wrapped["argv"])[0] == str(env_prefix / "bin" / "python")
    assert wrapped["metadata"]["jupyter_audit"]["wrapped_argv"][0] == "python"


def test_unknown_spec_fails_and_names_the_searched_directories(tmp_path):
    out = tmp_path / "out"
    result = run_install(
        ["--wrap", "no-such-kernel-here", "--name", NAME, "--prefix", str(out)],
        tmp_path,
        JUPYTER_PATH=f"{tmp_path / 'first'}:{tmp_path / 'second'}",
    )
    assert result.returncode != 0
    assert "no-such-kernel-here" in result.stderr
    for searched in (
        tmp_path / "first" / "kernels",
        tmp_path / "second" / "kernels",
        tmp_path / "user-data" / "kernels",
        Path("/usr/local/share/jupyter/kernels"),
        Path("/usr/share/jupyter/kernels"),
    ):
        assert str(searched) in result.stderr, (searched, result.stderr)
    assert not out.exists()


@pytest.mark.parametrize("bad", [["--name", "has space"], ["--name", "x", "--replace"]])
def test_bad_arguments_fail(tmp_path, bad):
    src = write_spec(tmp_path / "src" / "orig", source_spec(), logos=False)
    result = run_install(["--wrap", str(src), "--prefix", str(tmp_path / "out"), *bad], tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip()
    assert read_json(src)["argv"] == IPYKERNEL_ARGV


def kernel_transport(kc) -> str:
    """The transport the real kernel (ipykernel) was started with: "tcp" or "ipc"."""
    return run_ok(kc, "from ipykernel.kernelapp import IPKernelApp\n"
                      "print(IPKernelApp.instance().transport)").strip()


def test_kernel_transport_and_other_proxy_flags_are_passed_and_refreshed(tmp_path, kernels):
    src = write_spec(tmp_path / "src" / "python3-source", source_spec(), logos=False)
    prefix = tmp_path / "prefix"
    kernels_dir = prefix / "share" / "jupyter" / "kernels"
    install = ["--wrap", str(src), "--name", NAME, "--prefix", str(prefix), *audit_flags()]

    first = run_install([*install, "--kernel-transport", "tcp", "--proxy-flag=--keep-binary",
                         "--proxy-flag", "--text-cap-bytes=4096"], tmp_path)
    assert first.returncode == 0, first.stderr
    assert proxy_flags_of(read_json(kernels_dir / NAME)["argv"]) == [
        *audit_flags(), "--kernel-transport", "tcp", "--keep-binary", "--text-cap-bytes=4096"]
    ksm = KernelSpecManager(kernel_dirs=[str(kernels_dir)])
    km = KernelManager(kernel_spec_manager=ksm, kernel_name=NAME)
    kernels.managers.append(km)
    km.start_kernel()
    assert kernel_transport(kernels.client(km)) == "tcp"
    km.shutdown_kernel(now=True)

    # Given again, each flag gets its new value in place; the others stay.
    second = run_install([*install, "--kernel-transport", "ipc",
                          "--proxy-flag=--text-cap-bytes=8192"], tmp_path)
    assert second.returncode == 0, second.stderr
    assert proxy_flags_of(read_json(kernels_dir / NAME)["argv"]) == [
        *audit_flags(), "--kernel-transport", "ipc", "--keep-binary", "--text-cap-bytes=8192"]
    km = KernelManager(kernel_spec_manager=ksm, kernel_name=NAME)
    kernels.managers.append(km)
    km.start_kernel()
    assert kernel_transport(kernels.client(km)) == "ipc"


@pytest.mark.parametrize("bad", [
    "--no-such-flag", "--text-cap-bytes=many", "--socket=/run/x.sock", "-f", "keep-binary"])
def test_a_proxy_flag_the_proxy_would_refuse_is_refused_at_install(tmp_path, bad):
    src = write_spec(tmp_path / "src" / "orig", source_spec(), logos=False)
    out = tmp_path / "out"
    result = run_install(
        ["--wrap", str(src), "--name", NAME, "--prefix", str(out), f"--proxy-flag={bad}"],
        tmp_path,
    )
    assert result.returncode != 0
    assert "--proxy-flag" in result.stderr, result.stderr
    assert not out.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: makes directories owned by another user")
def test_install_warns_when_someone_else_could_replace_the_proxy_or_the_spec(tmp_path):
    """The Docker Stacks' mistake: the wheel installed into an environment the notebook
    user owns (/opt/conda belongs to jovyan). That user could swap the binary every
    audited kernel runs for one that records nothing, so `install` says so, naming the
    directory and its owner; a root-owned layout installs without the warning."""
    src = write_spec(tmp_path / "src" / "python3-source", source_spec(), logos=False)
    nobody = 65534
    env_dir = tmp_path / "user-owned-env"
    (env_dir / "bin").mkdir(parents=True)
    for d in (env_dir, env_dir / "bin"):
        os.chown(d, nobody, nobody)
    copied = env_dir / "bin" / "jupyter-audit"
    copied.write_bytes(BIN.read_bytes())
    copied.chmod(0o755)

    def install_with(binary: Path, prefix: Path) -> subprocess.CompletedProcess:
        env = dict(os.environ, JUPYTER_PATH=str(tmp_path / "jupyter-path"),
                   JUPYTER_DATA_DIR=str(tmp_path / "user-data"))
        return subprocess.run(
            [str(binary), "install", "--wrap", str(src), "--name", NAME, "--prefix", str(prefix),
             *audit_flags()], env=env, capture_output=True, text=True, timeout=60)

    warning = "can be replaced by someone other than root"
    unsafe = install_with(copied, tmp_path / "prefix-a")
    assert unsafe.returncode == 0, unsafe.stderr
    assert warning in unsafe.stderr and "proxy binary" in unsafe.stderr, unsafe.stderr
    assert f"{env_dir / 'bin'} is owned by user {nobody}" in unsafe.stderr, unsafe.stderr

    shared = tmp_path / "group-writable"
    shared.mkdir()
    shared.chmod(0o775)
    spec_warned = install_with(BIN, shared / "prefix")
    assert spec_warned.returncode == 0, spec_warned.stderr
    assert warning in spec_warned.stderr and "kernelspec" in spec_warned.stderr, spec_warned.stderr
    assert "proxy binary" not in spec_warned.stderr, spec_warned.stderr

    safe = install_with(BIN, tmp_path / "prefix-b")
    assert safe.returncode == 0, safe.stderr
    assert warning not in safe.stderr, safe.stderr
