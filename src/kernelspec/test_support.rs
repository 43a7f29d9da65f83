//! Helpers shared by the kernelspec unit tests.

use std::fs;
use std::path::Path;

use serde_json::{Value, json};

use super::{InstallOptions, KERNEL_JSON, SearchEnv};

pub(super) fn write_spec(dir: &Path, spec: &Value) {
    fs::create_dir_all(dir).expect("mkdir");
    fs::write(
        dir.join(KERNEL_JSON),
        serde_json::to_string(spec).expect("json"),
    )
    .expect("write");
}

pub(super) fn ipykernel_spec() -> Value {
    json!({
        "argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
        "interrupt_mode": "message",
        "env": {"FOO": "bar"},
        "kernel_protocol_version": "5.5",
        "metadata": {"debugger": true, "supported_encryption": ["curve"]},
        "x_custom": [1, 2]
    })
}

pub(super) fn args(wrap: &str) -> InstallOptions {
    InstallOptions {
        wrap: wrap.to_owned(),
        ..InstallOptions::default()
    }
}

pub(super) fn env_with(root: &Path) -> SearchEnv {
    SearchEnv {
        jupyter_path: vec![root.join("jp1"), root.join("jp2")],
        user_data_dir: Some(root.join("user")),
        python_prefix: Some(root.join("env")),
        prefer_env: false,
        system_dirs: vec![root.join("sys1"), root.join("sys2")],
    }
}
