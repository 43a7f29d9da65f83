//! Helpers shared by the kernelspec unit tests.

use std::fs;
use std::path::Path;

use serde_json::{Value, json};

use super::{KERNEL_JSON, SearchEnv};
use crate::cli::InstallArgs;

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

pub(super) fn args(wrap: &str) -> InstallArgs {
    InstallArgs {
        wrap: wrap.to_owned(),
        name: None,
        display_name: None,
        replace: false,
        user: false,
        sys_prefix: false,
        prefix: None,
        proxy_path: None,
        socket: None,
        on_audit_failure: None,
        config: None,
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
