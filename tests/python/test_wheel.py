"""The wheel, as an admin installs it: built by scripts/build-wheel.sh, installed with pip
into a fresh virtualenv next to ipykernel and nbclient from PyPI (the versions pinned in
tests/requirements.txt), and used from there alone.

Everything after the install runs with PATH set to the new environment's bin directory
and /usr/bin:/bin only, HOME and every Jupyter directory private to the test, and no
JUPYTER_AUDIT_BIN: the only jupyter-audit reachable is the wheel's. The wheel's binary
runs the collector, `jupyter audit install` (through Jupyter's subcommand dispatch)
replaces the environment's python3 kernelspec with the audited one, nbclient runs a
notebook through it, and the wheel's `jupyter audit log` and `verify` read the trail.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import textwrap
import uuid
import zipfile
from pathlib import Path

import pytest

from helpers import BIN, wait_until

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 60
# What a binary that needs nothing but glibc (and libgcc's unwinder) links against.
GLIBC_LIBRARIES = {"libc.so.6", "libm.so.6", "libgcc_s.so.1", "ld-linux-x86-64.so.2"}


def pinned(*names: str) -> list[str]:
    """The `name==version` lines of tests/requirements.txt for these packages."""
    pins = {}
    for line in (REPO / "tests" / "requirements.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            pins[line.split("==")[0].strip().lower()] = line.strip()
    return [pins[name] for name in names]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(["bash", str(REPO / "scripts" / "build-wheel.sh"), str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip().splitlines()[-1])
    assert path.parent == out and path.is_file(), result.stdout
    return path


@pytest.fixture(scope="module")
def env_dir(wheel, tmp_path_factory) -> Path:
    """A fresh virtualenv with the wheel, ipykernel and nbclient."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # pip reaches PyPI with the machine's own settings (index, certificates).
    pip_env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "VIRTUAL_ENV"))}
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
         "--disable-pip-version-check", "--no-cache-dir", str(wheel),
         *pinned("ipykernel", "nbclient", "nbformat", "jupyter_client")],
        env=pip_env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return venv


@pytest.fixture(scope="module")
def clean_env(env_dir, tmp_path_factory) -> dict[str, str]:
    """The environment of everything that runs from the new virtualenv."""
    home = tmp_path_factory.mktemp("home")
    return {
        "PATH": f"{env_dir / 'bin'}:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "VIRTUAL_ENV": str(env_dir),
        "JUPYTER_PLATFORM_DIRS": "1",
        "JUPYTER_DATA_DIR": str(home / "jupyter-data"),
        "JUPYTER_CONFIG_DIR": str(home / "jupyter-config"),
        "JUPYTER_RUNTIME_DIR": str(home / "jupyter-runtime"),
        "IPYTHONDIR": str(home / "ipython"),
    }


def run(env: dict[str, str], *argv: str, check: bool = True,
        cwd: Path | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(list(argv), env=env, capture_output=True, text=True,
                            timeout=TIMEOUT, stdin=subprocess.DEVNULL, cwd=cwd)
    if check:
        assert result.returncode == 0, f"{argv}: {result.stderr}"
    return result


def which(env: dict[str, str], name: str) -> str:
    return run(env, "/bin/sh", "-c", f"command -v {name}").stdout.strip()


def test_wheel_holds_the_binary_alone_with_its_metadata(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        scripts = [n for n in names if ".data/scripts/" in n]
        assert [Path(n).name for n in scripts] == ["jupyter-audit"], names
        # Executable once installed: pip keeps the mode bits the wheel records.
        assert archive.getinfo(scripts[0]).external_attr >> 16 & 0o111
        metadata = archive.read(next(n for n in names if n.endswith("METADATA"))).decode()
        wheel_tags = archive.read(next(n for n in names if n.endswith("WHEEL"))).decode()
    assert re.search(r"^Tag: py3-none-manylinux_2_\d+_x86_64$", wheel_tags, re.M), wheel_tags
    assert "License-Expression: Apache-2.0" in metadata
    assert "Project-URL: Deployment, docs/deployment.md" in metadata


def test_installed_binary_is_stripped_and_needs_only_glibc(env_dir, clean_env):
    binary = env_dir / "bin" / "jupyter-audit"
    assert which(clean_env, "jupyter-audit") == str(binary)
    assert not binary.samefile(BIN)
    sections = run(clean_env, "readelf", "--section-headers", "--wide", str(binary)).stdout
    assert ".symtab" not in sections and ".debug_line" not in sections
    needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]",
                            run(clean_env, "readelf", "--dynamic", str(binary)).stdout))
    assert needed <= GLIBC_LIBRARIES, needed


def test_jupyter_dispatches_to_the_wheels_binary(wheel, clean_env):
    help_text = run(clean_env, "jupyter", "audit", "--help").stdout
    assert "Run the audited kernel proxy" in help_text
    version = run(clean_env, "jupyter", "audit", "--version").stdout
    assert version.split() == ["jupyter-audit", wheel.name.split("-")[1]]


@contextlib.contextmanager
def wheel_collector(env: dict[str, str], store: Path, socket: Path):
    """The wheel's collector (first on env's PATH), stopped at the end."""
    collector = subprocess.Popen(
        ["jupyter-audit", "collector", "--store", str(store), "--socket", str(socket),
         "--config", str(store.parent / "no-admin-config.toml")],
        env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: socket.exists() or collector.poll() is not None, 20)
        assert collector.poll() is None, collector.stderr.read() if collector.stderr else ""
        yield
    finally:
        collector.terminate()
        collector.wait(timeout=TIMEOUT)


def run_notebook(env: dict[str, str], notebook: Path, marker: str, manager: str = "") -> list[str]:
    """Run, with the environment's nbclient and its `python3` kernel (found by the
    kernelspec manager class `manager`, "module.Class", when given), a notebook that
    prints `marker`, the kernel's interpreter and its parent's executable; return the
    text of its outputs."""
    module, _, cls = manager.rpartition(".")
    script = textwrap.dedent(f"""
        import nbclient, nbformat
        from jupyter_client import KernelManager
        from nbformat.v4 import new_code_cell, new_notebook
        nb = new_notebook(cells=[
            new_code_cell("print('{marker}', sum(range(10)))"),
            new_code_cell("import os, sys\\n"
                          "print(sys.executable)\\n"
                          "print(os.readlink(f'/proc/{{os.getppid()}}/exe'))"),
        ])
        kwargs = {{}}
        if {module!r}:
            from {module or "sys"} import {cls or "path"} as Manager
            kwargs["kernel_spec_manager"] = Manager()
        km = KernelManager(kernel_name="python3", **kwargs)
        nbclient.NotebookClient(nb, km=km, timeout={TIMEOUT}).execute()
        nbformat.write(nb, {str(notebook)!r})
    """)
    run(env, "python", "-c", script)
    cells = json.loads(notebook.read_text())["cells"]
    return ["".join(o.get("text", "")) for cell in cells for o in cell["outputs"]]


def assert_on_the_trail(env: dict[str, str], store: Path, marker: str) -> None:
    """The cell that printed `marker` and its output are on the store's trail under the
    kernel's OS account (the socket's peer credentials), read with the wheel's `log`."""

    def recorded() -> list[dict]:
        lines = run(env, "jupyter", "audit", "log", "--store", str(store), "--json",
                    "--action", "execute_request", "--action", "stream",
                    "--grep", marker).stdout
        return [json.loads(line) for line in lines.splitlines()]

    assert wait_until(lambda: len(recorded()) >= 2, TIMEOUT)
    records = recorded()
    assert [r["event"]["action"] for r in records] == ["execute_request", "stream"]
    assert {(r["user"]["id"], r["user"]["verified_by"]) for r in records} == {
        (str(os.getuid()), "peercred")}


def test_notebook_through_the_wheels_kernel_is_on_the_trail(env_dir, clean_env, tmp_path):
    binary = env_dir / "bin" / "jupyter-audit"
    store, socket = tmp_path / "store", tmp_path / "collector.sock"
    with wheel_collector(clean_env, store, socket):
        # ipykernel's own spec, in the environment's prefix, replaced in place.
        spec_dir = env_dir / "share" / "jupyter" / "kernels" / "python3"
        installed = run(clean_env, "jupyter", "audit", "install", "--wrap", "python3",
                        "--replace", "--socket", str(socket),
                        "--config", str(tmp_path / "no-admin-config.toml"))
        assert Path(installed.stdout.strip()) == spec_dir
        spec = json.loads((spec_dir / "kernel.json").read_text())
        assert spec["argv"][:2] == [str(binary), "kernel"]
        assert spec["argv"][spec["argv"].index("--") + 1] == str(env_dir / "bin" / "python")
        assert spec["display_name"] == "Python 3 (ipykernel)"

        marker = uuid.uuid4().hex
        texts = run_notebook(clean_env, tmp_path / "wheel.ipynb", marker)
        # The kernel is the environment's Python, and its parent the wheel's proxy.
        assert texts == [f"{marker} 45\n", f"{env_dir / 'bin' / 'python'}\n{binary}\n"]
        assert_on_the_trail(clean_env, store, marker)
    run(clean_env, "jupyter", "audit", "verify", "--store", str(store))


# --- The Littlest JupyterHub (docs/install/tljh.md), run against a stand-in layout ---------

TLJH_GUIDE = REPO / "docs" / "install" / "tljh.md"


def fenced(path: Path, language: str) -> list[str]:
    """The bodies of a Markdown file's fenced blocks of one language."""
    return re.findall(rf"^```{language}\n(.*?)^```$", path.read_text(), re.M | re.S)


def test_tljh_steps_give_users_the_audited_kernel_only(wheel, env_dir, clean_env, tmp_path):
    """Step 2 of the TLJH guide as written (run as root there: `sudo` dropped here), with
    the fresh virtualenv (the wheel, ipykernel, nbclient) standing in for /opt/tljh/user,
    /usr/local moved under a temporary root and the socket a test collector's; then the
    JupyterHub config of step 3 applied to a Spawner after settings of TLJH's own, and a
    notebook run with the environment it gives the user's server."""
    (wheel_line,) = [b for b in fenced(TLJH_GUIDE, "sh") if b.startswith("WHEEL=")]
    assert wheel_line.strip() == f"WHEEL=dist/{wheel.name}"
    (step,) = [b for b in fenced(TLJH_GUIDE, "sh") if "install --wrap" in b]
    commands = [line for line in step.splitlines() if line and not line.startswith("#")]
    assert all(line.startswith("sudo ") for line in commands), commands
    socket = tmp_path / "collector.sock"
    script = relocated("\n".join(c.removeprefix("sudo ") for c in commands), tmp_path,
                       "/usr/local")
    # The test machine's own /etc/jupyter-audit/config.toml, if any, must not name
    # another socket: the spec points at a config file that does not exist.
    script = script.replace("/opt/tljh/user", str(env_dir)).replace(
        f"--socket {SOCKET}", f"--socket {socket} --config {tmp_path / 'no-admin-config.toml'}")
    run({**clean_env, "WHEEL": str(wheel)}, "/bin/sh", "-e", "-c", script, cwd=REPO)

    usr_local = tmp_path / "usr" / "local"
    binary = env_dir / "bin" / "jupyter-audit"
    spec_dir = usr_local / "share" / "jupyter" / "kernels" / "python3"
    argv = json.loads((spec_dir / "kernel.json").read_text())["argv"]
    assert argv[:2] == [str(binary), "kernel"]
    assert argv[argv.index("--socket") + 1] == str(socket)
    assert not Path(argv[argv.index("--config") + 1]).exists()
    assert argv[argv.index("--") + 1] == str(env_dir / "bin" / "python")
    # Root's (whoever ran the steps), and writable by nobody else.
    for item in [usr_local, *usr_local.rglob("*")]:
        assert item.stat().st_uid == os.getuid() and not item.stat().st_mode & 0o022, item

    # Step 3, after settings TLJH's own config could have made.
    from jupyterhub.spawner import Spawner
    from traitlets.config import Config

    (hub_config,) = fenced(TLJH_GUIDE, "python")
    config = Config()
    config.Spawner.default_url = "/lab"
    config.Spawner.environment = {"TLJH_SETTING": "kept"}
    config.Spawner.args = ["--TLJH.setting=kept"]
    exec(compile(hub_config, str(TLJH_GUIDE), "exec"), {"c": config})
    spawner = Spawner(config=config)
    assert spawner.disable_user_config
    assert spawner.environment["TLJH_SETTING"] == "kept"
    assert spawner.args[0] == "--TLJH.setting=kept" and len(spawner.args) == 6
    server_env = {k: relocated(v, tmp_path, "/usr/local") for k, v in spawner.environment.items()}

    store = tmp_path / "store"
    with wheel_collector(clean_env, store, socket):
        marker = uuid.uuid4().hex
        texts = run_notebook({**clean_env, **server_env}, tmp_path / "tljh.ipynb", marker,
                             manager="audited_kernelspecs.AuditedKernelSpecManager")
        assert texts == [f"{marker} 45\n", f"{env_dir / 'bin' / 'python'}\n{binary}\n"]
        assert_on_the_trail(clean_env, store, marker)
    run(clean_env, "jupyter", "audit", "verify", "--store", str(store))


# --- the images' steps (docs/k8s), run outside Docker ----------------------------------------

K8S_DIR = REPO / "docs" / "k8s"
SOCKET = "/run/jupyter-audit/collector.sock"


def run_steps(dockerfile: str) -> list[str]:
    """The RUN commands of a Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (K8S_DIR / dockerfile).read_text())
    return [" ".join(line.split()[1:]) for line in text.splitlines() if line.startswith("RUN ")]


def relocated(command: str, root: Path, *paths: str) -> str:
    """`command` with each absolute path in `paths` moved under `root`."""
    pattern = "|".join(re.escape(p) for p in paths)
    return re.sub(f"(?<![\\w/])({pattern})", lambda m: f"{root}{m.group(1)}", command)


def test_single_user_image_steps_install_the_wheel_where_jovyan_cannot_write(
    wheel, env_dir, clean_env, tmp_path
):
    """Dockerfile.singleuser's RUN step, as written, with /usr/local, /etc/jupyter-audit and
    the wheel's directory moved under a temporary root and the fresh virtualenv first on
    PATH in place of /opt/conda (the base image's Python, which jovyan may write)."""
    root = tmp_path / "image"
    (step,) = [s for s in run_steps("Dockerfile.singleuser") if "ipykernel install" in s]
    # What the COPY lines put in place.
    dist = root / "tmp" / "jupyter-audit-dist"
    dist.mkdir(parents=True)
    (dist / wheel.name).write_bytes(wheel.read_bytes())
    (root / "etc" / "jupyter-audit").mkdir(parents=True)
    (root / "etc" / "jupyter-audit" / "config.toml").write_text(
        (K8S_DIR / "singleuser-config.toml").read_text())
    kernelspecs_module = root / "usr" / "local" / "lib" / "jupyter-audit" / "python"
    kernelspecs_module.mkdir(parents=True)
    (kernelspecs_module / "audited_kernelspecs.py").write_text(
        (K8S_DIR / "audited_kernelspecs.py").read_text())

    command = relocated(step, root, "/usr/local", "/etc/jupyter-audit", "/tmp/jupyter-audit-dist")
    run(clean_env, "/bin/sh", "-c", command)

    binary = root / "usr" / "local" / "bin" / "jupyter-audit"
    assert binary.read_bytes() == (env_dir / "bin" / "jupyter-audit").read_bytes()
    assert binary.stat().st_mode & 0o7777 == 0o755
    assert not dist.exists()
    spec = json.loads((root / "usr/local/share/jupyter/kernels/python3/kernel.json").read_text())
    argv = spec["argv"]
    assert argv[:2] == [str(binary), "kernel"]
    assert argv[argv.index("--socket") + 1] == SOCKET
    assert argv[argv.index("--") + 1] == str(env_dir / "bin" / "python")
    # What every kernel runs is outside the environment jovyan may write, and nothing of
    # it is writable by group or others.
    for path in (binary, root / "usr/local/share/jupyter/kernels/python3"):
        assert env_dir not in path.parents
    for path in [root / "usr" / "local", root / "etc" / "jupyter-audit"]:
        for item in [path, *path.rglob("*")]:
            assert not item.is_symlink() and not item.stat().st_mode & 0o022, item

    help_text = run(clean_env, str(binary), "--help").stdout
    assert "Run the audited kernel proxy" in help_text


def test_collector_image_takes_the_binary_out_of_the_wheel(wheel, env_dir, clean_env, tmp_path):
    """Dockerfile.collector's RUN step after the maturin build (the wheel here is
    scripts/build-wheel.sh's), with /dist, /wheel and /usr/local moved under a temporary root."""
    root = tmp_path / "image"
    (step,) = [s for s in run_steps("Dockerfile.collector") if "maturin build" in s]
    commands = step.split(" && ")
    assert commands[0].startswith("/opt/maturin/bin/maturin build --release --locked --out /dist")
    (root / "dist").mkdir(parents=True)
    (root / "dist" / wheel.name).write_bytes(wheel.read_bytes())
    (root / "usr" / "local" / "bin").mkdir(parents=True)

    command = relocated(" && ".join(commands[1:]), root, "/dist", "/wheel", "/usr/local")
    run(clean_env, "/bin/sh", "-c", command)

    binary = root / "usr" / "local" / "bin" / "jupyter-audit"
    assert binary.read_bytes() == (env_dir / "bin" / "jupyter-audit").read_bytes()
    assert binary.stat().st_mode & 0o7777 == 0o755
    assert "--store" in run(clean_env, str(binary), "collector", "--help").stdout


def test_the_images_build_with_the_maturin_the_suite_pins():
    (pin,) = pinned("maturin")
    for name in ("Dockerfile.singleuser", "Dockerfile.collector"):
        assert f"pip install --no-cache-dir {pin}" in (K8S_DIR / name).read_text(), name
