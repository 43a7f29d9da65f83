"""The Kubernetes part of docs/deployment.md, checked without a cluster.

What an admin copies from the guide must at least be what the guide says it is:
- every file under docs/k8s is quoted verbatim in the guide, and every YAML block of the
  guide parses;
- every Kubernetes manifest validates, strictly (no unknown fields), against the API
  schema of the oldest Kubernetes release z2jh 4 supports and of the newest one the
  validator bundles (kubernetes-validate, offline);
- the z2jh values use keys the chart knows (the list below was checked against z2jh's
  values.schema.yaml by hand: the chart's schema is not installable from PyPI or npm),
  and their Kubernetes-typed parts (volumes, mounts, NetworkPolicy rules) validate;
- the pieces agree with each other: the labels the NetworkPolicies select are the
  collector pods' and z2jh's hub pods', the socket is the one the user pods mount and
  the kernelspec names;
- the collector accepts the DaemonSet's flags and starts with the ConfigMap's config
  file, and (as root) after the init container's script, as uid 10001;
- the single-user image's kernelspec steps produce an audited python3 that the
  kernelspec manager finds and that a user's own kernelspecs cannot shadow.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from helpers import BIN, REPO

K8S_DIR = REPO / "docs" / "k8s"
GUIDE = REPO / "docs" / "deployment.md"
# z2jh 4.x requires Kubernetes >= 1.32; 1.37 is the newest schema kubernetes-validate bundles.
KUBERNETES_VERSIONS = ["1.32", "1.37"]
SOCKET = "/run/jupyter-audit/collector.sock"
COLLECTOR_LABELS = {"app.kubernetes.io/name": "jupyter-audit-collector"}
# z2jh labels its hub pods with these (its "matchLabels" helper); the release is "jhub".
HUB_POD_LABELS = {"app": "jupyterhub", "component": "hub", "release": "jhub"}

# Every key path the values file may use, each checked against z2jh's values.schema.yaml
# (main branch, 2026-07-24, after chart 4.4.0; the z2jh configuration reference is
# rendered from it). "*" stands for a name the chart passes through: a traitlets class
# or trait (hub.config), an environment variable (extraEnv).
Z2JH_KEYS = {
    "hub.config.*.*",
    "hub.networkPolicy.ingress",
    "singleuser.image.name",
    "singleuser.image.tag",
    "singleuser.extraEnv.*",
    "singleuser.storage.extraVolumes",
    "singleuser.storage.extraVolumeMounts",
}


def k8s_files(suffix: str) -> list[Path]:
    return sorted(p for p in K8S_DIR.iterdir() if p.name.endswith(suffix))


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifests() -> list[tuple[Path, dict]]:
    return [
        (path, doc)
        for path in k8s_files(".yaml")
        for doc in load_all(path)
        if "apiVersion" in doc and "kind" in doc
    ]


def manifest(kind: str) -> dict:
    found = [doc for _, doc in manifests() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} under docs/k8s, found {len(found)}"
    return found[0]


def values() -> dict:
    return yaml.safe_load((K8S_DIR / "z2jh-values.yaml").read_text())


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(info string, body) of every fenced code block of a Markdown text."""
    return [
        (m.group(1), m.group(2))
        for m in re.finditer(r"^```([^\n`]*)\n(.*?)^```\s*$", text, re.M | re.S)
    ]


def kubernetes_section(text: str) -> str:
    start = text.index("\n## Kubernetes (zero-to-jupyterhub)")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def collector_container() -> dict:
    spec = manifest("DaemonSet")["spec"]["template"]["spec"]
    (container,) = [c for c in spec["containers"] if c["name"] == "collector"]
    return container


def collector_flags() -> dict[str, str]:
    args = collector_container()["args"]
    assert args[0] == "collector"
    flags = {}
    for arg in args[1:]:
        name, sep, value = arg.partition("=")
        assert name.startswith("--") and sep, f"write collector flags as --name=value: {arg}"
        flags[name] = value
    return flags


def test_the_guide_quotes_every_file_under_docs_k8s_verbatim():
    text = GUIDE.read_text()
    quoted = {}
    for _, body in fenced_blocks(text):
        first = body.split("\n", 1)[0]
        m = re.fullmatch(r"# (docs/k8s/\S+)", first)
        if m:
            quoted[m.group(1)] = body
    files = {f"docs/k8s/{p.name}": p for p in K8S_DIR.iterdir() if p.is_file()}
    assert set(files) <= set(quoted), f"not quoted in the guide: {sorted(set(files) - set(quoted))}"
    for name, body in quoted.items():
        assert name in files, f"the guide quotes {name}, which does not exist"
        assert body == files[name].read_text(), f"the guide's copy of {name} differs from the file"


def test_every_yaml_block_of_the_guide_parses_and_the_kubernetes_ones_are_files():
    text = GUIDE.read_text()
    blocks = [body for info, body in fenced_blocks(text) if info.strip() == "yaml"]
    assert blocks
    for body in blocks:
        assert list(yaml.safe_load_all(body)), body[:200]
    for info, body in fenced_blocks(kubernetes_section(text)):
        if info.strip() == "yaml":
            assert body.startswith("# docs/k8s/"), (
                "a YAML block of the Kubernetes section that is not a file under docs/k8s "
                f"escapes the schema check:\n{body[:300]}"
            )


def test_every_yaml_file_parses():
    paths = k8s_files(".yaml")
    assert {p.name for p in paths} >= {
        "collector-configmap.yaml",
        "collector-daemonset.yaml",
        "collector-networkpolicy.yaml",
        "z2jh-values.yaml",
    }
    for path in paths:
        assert load_all(path), f"{path} is empty"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_validate_against_the_kubernetes_api_schema(version):
    kinds = set()
    for path, doc in manifests():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{path.name}: {'.'.join(map(str, error.path))}: {error.message}")
        kinds.add(doc["kind"])
    assert kinds == {"ConfigMap", "DaemonSet", "NetworkPolicy"}


def test_the_schema_check_refuses_a_misspelt_field():
    """The validator is strict: a typo in a security setting would not pass silently."""
    daemonset = manifest("DaemonSet")
    container = daemonset["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["readOnlyRootFilesytem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, KUBERNETES_VERSIONS[0], strict=True)


def key_paths(node: object, prefix: str = "") -> list[str]:
    """The key paths of a values tree down to its leaves (lists are leaves)."""
    if not isinstance(node, dict) or not node:
        return [prefix]
    return [p for key, child in node.items() for p in key_paths(child, f"{prefix}{key}.")]


def known_z2jh_key(path: str) -> bool:
    return any(
        re.fullmatch(re.escape(known).replace(r"\*", r"[^.]+"), path.rstrip("."))
        for known in Z2JH_KEYS
    )


def test_z2jh_values_use_keys_the_chart_knows():
    paths = key_paths(values())
    unknown = [p.rstrip(".") for p in paths if not known_z2jh_key(p)]
    assert not unknown, f"keys not in the checked z2jh list: {unknown}"
    assert not known_z2jh_key("singleuser.extraVolumes."), "the check must be able to fail"


def test_z2jh_values_kubernetes_parts_validate():
    vals = values()
    storage = vals["singleuser"]["storage"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "jupyter-alice"},
        "spec": {
            "containers": [
                {"name": "notebook", "image": "x", "volumeMounts": storage["extraVolumeMounts"]}
            ],
            "volumes": storage["extraVolumes"],
        },
    }
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "hub"},
        "spec": {
            "podSelector": {"matchLabels": HUB_POD_LABELS},
            "ingress": vals["hub"]["networkPolicy"]["ingress"],
        },
    }
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(pod, version, strict=True)
        kubernetes_validate.validate(policy, version, strict=True)
    assert all(isinstance(v, str) for v in vals["singleuser"]["extraEnv"].values())


def test_z2jh_spawner_config_names_real_traits():
    """hub.config.KubeSpawner sets Spawner traits; its args set server traits that exist."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_server.serverapp import ServerApp
    from jupyter_server.services.contents.manager import ContentsManager
    from jupyterhub.spawner import Spawner

    spawner = values()["hub"]["config"]["KubeSpawner"]
    for trait in spawner:
        assert trait in Spawner.class_traits(), trait
    classes = {c.__name__: c for c in (KernelSpecManager, ServerApp, ContentsManager)}
    for arg in spawner["args"]:
        m = re.fullmatch(r"--(\w+)\.(\w+)=(.+)", arg)
        assert m, arg
        cls, trait, _ = m.groups()
        assert trait in classes[cls].class_traits(), arg


def test_the_network_policies_select_the_collector_and_the_hub():
    pod_labels = manifest("DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert COLLECTOR_LABELS.items() <= pod_labels.items()

    policy = manifest("NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    assert policy["ingress"] == [], "nothing connects to the collector over the network"
    to_hub = [
        rule
        for rule in policy["egress"]
        if any(peer.get("podSelector", {}).get("matchLabels") == HUB_POD_LABELS
               for peer in rule["to"])
    ]
    assert [p["port"] for rule in to_hub for p in rule["ports"]] == [8081]

    (hub_rule,) = values()["hub"]["networkPolicy"]["ingress"]
    (peer,) = hub_rule["from"]
    assert peer["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert [p["port"] for p in hub_rule["ports"]] == [8081]


def test_the_socket_is_where_the_user_pods_and_the_kernelspec_look():
    flags = collector_flags()
    assert flags["--socket"] == SOCKET
    socket_dir = str(Path(SOCKET).parent)

    spec = manifest("DaemonSet")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in collector_container()["volumeMounts"]}
    assert volumes[mounts[socket_dir]]["hostPath"]["path"] == socket_dir

    storage = values()["singleuser"]["storage"]
    (user_volume,) = [
        v for v in storage["extraVolumes"] if v.get("hostPath", {}).get("path") == socket_dir
    ]
    (user_mount,) = [m for m in storage["extraVolumeMounts"] if m["name"] == user_volume["name"]]
    assert user_mount["mountPath"] == socket_dir and user_mount["readOnly"] is True

    proxy_config = tomllib.loads((K8S_DIR / "singleuser-config.toml").read_text())
    assert proxy_config == {"collector": {"socket": SOCKET, "on_audit_failure": "block"}}
    assert f"--socket {SOCKET}" in (K8S_DIR / "Dockerfile.singleuser").read_text()


def collector_help() -> str:
    return subprocess.run(
        [str(BIN), "collector", "--help"], capture_output=True, text=True, check=True
    ).stdout


def test_the_daemonset_collector_flags_are_ones_the_collector_accepts():
    accepted = set(re.findall(r"(--[a-z][a-z0-9-]+)", collector_help()))
    flags = collector_flags()
    hub_flags = {f for f in flags if f.startswith("--hub-")}
    assert hub_flags >= {"--hub-api-url", "--hub-identity"}
    assert flags["--hub-api-url"] == "http://hub:8081/hub/api"
    assert flags["--hub-identity"] == "required"
    unknown = sorted(set(flags) - accepted)
    assert not unknown, f"collector flags the binary does not know: {unknown}"


def test_the_collector_starts_with_the_configmap_config_and_the_hub_flags():
    """The ConfigMap's config.toml and the DaemonSet's Hub flags, on the real collector
    (paths moved to a temporary directory; no PostgreSQL, and the Hub is unreachable)."""
    config_text = manifest("ConfigMap")["data"]["config.toml"]
    config = tomllib.loads(config_text)
    flag_names = set(re.findall(r"--([a-z][a-z0-9-]+)", collector_help()))
    assert set(config) == {"limits"}
    assert {k.replace("_", "-") for k in config["limits"]} <= flag_names

    flags = collector_flags()
    with tempfile.TemporaryDirectory(prefix="ja-k8s-") as tmp:
        tmp = Path(tmp)
        (tmp / "config.toml").write_text(config_text)
        socket = tmp / "collector.sock"
        argv = [str(BIN), "collector", "--store", str(tmp / "store"), "--socket", str(socket),
                "--config", str(tmp / "config.toml")]
        # Port 9 on loopback: nothing listens; the collector must start all the same.
        argv += ["--hub-api-url=http://127.0.0.1:9/hub/api",
                 f"--hub-identity={flags['--hub-identity']}"]
        collector = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 20
            while not socket.exists() and collector.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert socket.exists(), f"the collector did not start: {collector.poll()}"
        finally:
            collector.terminate()
            _, stderr = collector.communicate(timeout=20)
        assert collector.returncode == 0, stderr


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            logical.append(current.strip())
            current = ""
    assert not current, f"{path.name} ends inside a continued line"
    return [(text.split(None, 1)[0], text.split(None, 1)[1]) for text in logical]


@pytest.mark.parametrize("name", ["Dockerfile.collector", "Dockerfile.singleuser"])
def test_dockerfiles_are_well_formed(name):
    known = {"ARG", "FROM", "WORKDIR", "COPY", "RUN", "USER", "ENTRYPOINT", "ENV"}
    instructions = dockerfile_instructions(K8S_DIR / name)
    for instruction, args in instructions:
        assert instruction in known, f"{name}: {instruction} {args}"
        if instruction == "FROM":
            words = args.split()
            # "image" or "image AS stage": a trailing comment is not a comment here
            assert len(words) == 1 or (len(words) == 3 and words[1].upper() == "AS"), args
        if instruction == "COPY" and not args.startswith("--from="):
            source = REPO / args.split()[0]
            assert source.exists(), f"{name} copies {source}, which does not exist"
    assert [i for i, _ in instructions].count("FROM") == 2


def test_the_single_user_image_steps_give_an_audited_python3_users_cannot_shadow(
    tmp_path, monkeypatch
):
    """Dockerfile.singleuser's kernelspec steps, run here with a temporary prefix in place
    of /usr/local, then the image's kernelspec manager with the values' environment."""
    text = (K8S_DIR / "Dockerfile.singleuser").read_text()
    dockerfile = " ".join(text.replace("\\\n", " ").split())
    ipykernel_step = ('python -m ipykernel install --prefix /usr/local --name python3 '
                      '--display-name "Python 3 (ipykernel)"')
    audit_step = f"/usr/local/bin/jupyter-audit install --wrap python3 --replace --socket {SOCKET}"
    assert ipykernel_step in dockerfile
    assert f"JUPYTER_PATH=/usr/local/share/jupyter {audit_step}" in dockerfile

    prefix = tmp_path / "usr-local"
    ipykernel_argv = shlex.split(ipykernel_step)
    ipykernel_argv[0] = sys.executable
    ipykernel_argv[ipykernel_argv.index("--prefix") + 1] = str(prefix)
    subprocess.run(ipykernel_argv, check=True, capture_output=True)
    subprocess.run(
        [str(BIN), *shlex.split(audit_step)[1:]],
        check=True,
        capture_output=True,
        env={**os.environ, "JUPYTER_PATH": str(prefix / "share" / "jupyter")},
    )
    kernels = prefix / "share" / "jupyter" / "kernels"
    spec = json.loads((kernels / "python3" / "kernel.json").read_text())
    argv = spec["argv"]
    assert argv[:2] == [str(BIN.resolve()), "kernel"]
    assert argv[argv.index("--socket") + 1] == SOCKET
    wrapped = argv[argv.index("--") + 1 :]
    assert wrapped[0] == sys.executable and "ipykernel_launcher" in wrapped

    # A user's own kernelspecs, in the user's Jupyter data dir and JUPYTER_PATH.
    user_data = tmp_path / "home" / ".local" / "share" / "jupyter"
    for name in ("python3", "rogue"):
        (user_data / "kernels" / name).mkdir(parents=True)
        (user_data / "kernels" / name / "kernel.json").write_text(
            json.dumps({"argv": ["/bin/true"], "display_name": name, "language": "python"})
        )
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(user_data))
    monkeypatch.setenv("JUPYTER_PATH", str(user_data))
    env = values()["singleuser"]["extraEnv"]
    monkeypatch.setenv(
        "JUPYTER_AUDIT_KERNEL_DIRS",
        env["JUPYTER_AUDIT_KERNEL_DIRS"].replace("/usr/local", str(prefix)),
    )
    module_spec = importlib.util.spec_from_file_location(
        "audited_kernelspecs_under_test", K8S_DIR / "audited_kernelspecs.py"
    )
    audited = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(audited)
    from jupyter_client.kernelspec import NoSuchKernel

    manager = audited.AuditedKernelSpecManager(
        allowed_kernelspecs={"python3"}, ensure_native_kernel=False
    )
    assert manager.find_kernel_specs() == {"python3": str(kernels / "python3")}
    assert manager.get_kernel_spec("python3").argv == argv
    with pytest.raises(NoSuchKernel):
        manager.get_kernel_spec("rogue")


@pytest.mark.skipif(
    os.geteuid() != 0,
    reason="needs root: runs the init container's script and the collector as uid 10001",
)
def test_the_init_container_leaves_what_the_collector_as_its_uid_accepts():
    """The DaemonSet's init script, run (twice, as on a pod restart) as root with only the
    capabilities the manifest grants, on volumes laid out as the kubelet makes them; then
    the collector with the manifest's flags as the manifest's uid: it must start, which
    means its path checks accept the store and socket directories and the password file
    is its own and private. (The Hub and PostgreSQL addresses point at nothing.)"""
    pod = manifest("DaemonSet")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["command"][:2] == ["sh", "-euc"]
    caps = [c.lower() for c in init["securityContext"]["capabilities"]["add"]]
    collector = collector_container()
    uid, gid = collector["securityContext"]["runAsUser"], collector["securityContext"]["runAsGroup"]

    root = Path(tempfile.mkdtemp(prefix="ja-k8s-node-", dir="/tmp"))
    try:
        root.chmod(0o755)
        volume_dirs = {}
        for volume in pod["volumes"]:
            path = root / volume["name"]
            path.mkdir()
            if "emptyDir" in volume:
                path.chmod(0o777)
            elif "hostPath" in volume:
                assert volume["hostPath"]["type"] == "DirectoryOrCreate"
                path.chmod(0o755)
            elif "secret" in volume:
                for item in volume["secret"]["items"]:
                    (path / item["path"]).write_text("not-the-password\n")
                    (path / item["path"]).chmod(volume["secret"]["defaultMode"])
            elif "configMap" in volume:
                if volume["configMap"]["name"] == manifest("ConfigMap")["metadata"]["name"]:
                    for key, text in manifest("ConfigMap")["data"].items():
                        (path / key).write_text(text)
            volume_dirs[volume["name"]] = path

        def localize(text: str, container: dict) -> str:
            mounts = sorted(container["volumeMounts"], key=lambda m: -len(m["mountPath"]))
            for mount in mounts:
                text = text.replace(mount["mountPath"], str(volume_dirs[mount["name"]]))
            return text

        script = localize(init["command"][2], init)
        for _ in range(2):
            subprocess.run(
                ["setpriv", f"--bounding-set=-all,{','.join('+' + c for c in caps)}",
                 "sh", "-euc", script],
                check=True, capture_output=True,
            )

        argv = [str(BIN)]
        for arg in collector["args"]:
            if arg.startswith("--hub-api-url="):
                arg = "--hub-api-url=http://127.0.0.1:9/hub/api"
            elif arg.startswith("--forward-postgres="):
                arg = ("--forward-postgres=postgresql://jupyter_audit_writer@127.0.0.1:9/"
                       "jupyter_audit?sslmode=disable")
            argv.append(localize(arg, collector))
        socket = Path(localize(collector_flags()["--socket"], collector))
        process = subprocess.Popen(
            ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--no-new-privs",
             "--bounding-set=-all", *argv],
            stderr=subprocess.PIPE, text=True,
        )
        try:
            deadline = time.monotonic() + 20
            while not socket.exists() and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            started = socket.exists() and process.poll() is None
        finally:
            process.kill()
            _, stderr = process.communicate(timeout=20)
        assert started, f"the collector did not start as uid {uid}: {stderr}"
        store_dir = volume_dirs["store-dir"].stat()
        assert (store_dir.st_uid, store_dir.st_mode & 0o777) == (uid, 0o700)
        password = (volume_dirs["secrets"] / "pg-password").stat()
        assert (password.st_uid, password.st_mode & 0o777) == (uid, 0o400)
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)
