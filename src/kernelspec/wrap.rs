//! Building the audited `kernel.json` from the template: the proxy command line, the
//! display name, removed metadata, and resolving a bare `python` interpreter.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::spec::{METADATA_KEY, SourceSpec, string_list};
use super::{KernelspecError, Result};

/// The template every audited `kernel.json` is built from.
pub const TEMPLATE: &str = include_str!("../../kernelspec/kernel.json.in");

/// Metadata keys of the wrapped spec that the audited spec must not announce.
const REMOVED_METADATA: &[&str] = &["supported_encryption"];

const DISPLAY_SUFFIX: &str = " (audited)";

/// How the display name of the audited spec is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisplayName {
    /// Use this one.
    Given(String),
    /// `"<original> (audited)"` (not doubled if already there).
    Suffixed,
    /// Keep the original.
    Keep,
}

/// Whether `name` is an interpreter name that Jupyter replaces by `sys.executable`.
pub fn is_bare_python(name: &str) -> bool {
    match name.strip_prefix("python") {
        Some("") => true,
        Some(version) => {
            version.starts_with(|c: char| c.is_ascii_digit())
                && version.chars().all(|c| c.is_ascii_digit() || c == '.')
        }
        None => false,
    }
}

pub(super) fn is_executable_file(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The prefix a kernelspec directory lives in, if it is `<prefix>/share/jupyter/kernels/X`.
fn spec_prefix(spec_dir: &Path) -> Option<PathBuf> {
    let kernels = spec_dir.parent()?;
    let jupyter = kernels.parent()?;
    let share = jupyter.parent()?;
    (kernels.file_name()? == "kernels"
        && jupyter.file_name()? == "jupyter"
        && share.file_name()? == "share")
        .then(|| share.parent().map(Path::to_path_buf))
        .flatten()
}

/// Resolve a bare `python*` `argv[0]` to an absolute interpreter (see the `kernelspec`
/// module doc).
pub fn resolve_interpreter(
    argv0: &str,
    spec_dir: &Path,
    python_prefix: Option<&Path>,
) -> Option<PathBuf> {
    if !is_bare_python(argv0) {
        return None;
    }
    spec_prefix(spec_dir)
        .into_iter()
        .chain(python_prefix.map(Path::to_path_buf))
        .map(|prefix| prefix.join("bin").join(argv0))
        .find(|candidate| is_executable_file(candidate))
}

/// Fill the template: `@KEY@` strings are replaced by their value; inside an array a
/// placeholder whose value is an array is spliced in.
fn fill_template(template: &Value, values: &[(&str, Value)]) -> Value {
    let lookup = |s: &str| values.iter().find(|(k, _)| *k == s).map(|(_, v)| v);
    match template {
        Value::String(s) => lookup(s).cloned().unwrap_or_else(|| template.clone()),
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match item.as_str().and_then(lookup) {
                    Some(Value::Array(spliced)) => out.extend(spliced.iter().cloned()),
                    _ => out.push(fill_template(item, values)),
                }
            }
            Value::Array(out)
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), fill_template(v, values)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Build the audited `kernel.json` for `source`.
///
/// `proxy_flags` go between `kernel` and `-f` (see [`super::AuditFlags::apply`]);
/// `spec_dir` is where `source` was read from (for resolving a bare `python`);
/// `python_prefix` the active Python prefix.
pub fn build_wrapped_spec(
    source: &SourceSpec,
    proxy: &Path,
    proxy_flags: &[String],
    display_name: &DisplayName,
    spec_dir: &Path,
    python_prefix: Option<&Path>,
) -> Result<Map<String, Value>> {
    let template: Value =
        serde_json::from_str(TEMPLATE).map_err(|e| KernelspecError::Template(e.to_string()))?;

    let original_display = source
        .spec
        .get("display_name")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| {
            spec_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "kernel".to_owned())
        });
    let display = match display_name {
        DisplayName::Given(name) => name.clone(),
        DisplayName::Keep => original_display,
        DisplayName::Suffixed if original_display.ends_with(DISPLAY_SUFFIX) => original_display,
        DisplayName::Suffixed => format!("{original_display}{DISPLAY_SUFFIX}"),
    };

    let mut run_argv = source.argv.clone();
    if let Some(first) = run_argv.first_mut() {
        if let Some(resolved) = resolve_interpreter(first, spec_dir, python_prefix) {
            tracing::info!(
                from = %first,
                to = %resolved.display(),
                "resolved the kernel's interpreter (Jupyter would substitute its own)"
            );
            *first = resolved.to_string_lossy().into_owned();
        } else if is_bare_python(first) {
            tracing::warn!(
                interpreter = %first,
                "cannot resolve the kernel's interpreter to an absolute path; it will be \
                 looked up on PATH when the kernel starts"
            );
        }
    }

    let filled = fill_template(
        &template,
        &[
            (
                "@PROXY@",
                Value::String(proxy.to_string_lossy().into_owned()),
            ),
            ("@PROXY_FLAGS@", string_list(proxy_flags)),
            ("@WRAPPED_ARGV@", string_list(&run_argv)),
            ("@DISPLAY_NAME@", Value::String(display)),
            (
                "@VERSION@",
                Value::String(env!("CARGO_PKG_VERSION").to_owned()),
            ),
            (
                "@WRAPPED_SPEC@",
                Value::String(source.wrapped_spec.to_string_lossy().into_owned()),
            ),
        ],
    );
    let Value::Object(mut filled) = filled else {
        return Err(KernelspecError::Template("not a JSON object".to_owned()));
    };
    let mut record = match filled
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .and_then(|m| m.remove(METADATA_KEY))
    {
        Some(Value::Object(record)) => record,
        _ => {
            return Err(KernelspecError::Template(
                "metadata.jupyter_audit is missing".to_owned(),
            ));
        }
    };
    // wrapped_argv records the original argv, not the resolved one.
    record.insert("wrapped_argv".to_owned(), string_list(&source.argv));

    let mut out = source.spec.clone();
    let mut metadata = match out.remove("metadata") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let mut removed = Map::new();
    for key in REMOVED_METADATA {
        if let Some(v) = metadata.remove(*key) {
            tracing::info!(key, "removed from metadata: the proxy does not support it");
            removed.insert((*key).to_owned(), v);
        }
    }
    if !removed.is_empty() {
        record.insert("removed_metadata".to_owned(), Value::Object(removed));
    }
    metadata.insert(METADATA_KEY.to_owned(), Value::Object(record));
    // Template keys other than metadata (argv, display_name) override the original.
    filled.remove("metadata");
    for (k, v) in filled {
        out.insert(k, v);
    }
    out.insert("metadata".to_owned(), Value::Object(metadata));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernelspec::spec::unwrap_spec;
    use crate::kernelspec::test_support::ipykernel_spec;
    use serde_json::json;

    #[test]
    fn template_parses_and_has_placeholders() {
        let t: Value = serde_json::from_str(TEMPLATE).expect("template");
        assert_eq!(t["argv"][0], "@PROXY@");
        assert_eq!(t["argv"][2], "@PROXY_FLAGS@");
        assert_eq!(t["argv"][4], "{connection_file}");
        assert!(t["metadata"][METADATA_KEY].is_object());
    }

    #[test]
    fn wrap_keeps_everything_and_records_original() {
        let dir = Path::new("/nowhere/kernels/py");
        let Value::Object(spec) = ipykernel_spec() else {
            unreachable!()
        };
        let source = unwrap_spec(spec, dir).expect("unwrap");
        assert!(!source.was_audited);
        let out = build_wrapped_spec(
            &source,
            Path::new("/bin/jupyter-audit"),
            &[],
            &DisplayName::Suffixed,
            dir,
            None,
        )
        .expect("wrap");
        let out = Value::Object(out);
        assert_eq!(
            out["argv"],
            json!([
                "/bin/jupyter-audit",
                "kernel",
                "-f",
                "{connection_file}",
                "--",
                "python",
                "-m",
                "ipykernel_launcher",
                "-f",
                "{connection_file}"
            ])
        );
        assert_eq!(out["display_name"], "Python 3 (ipykernel) (audited)");
        for key in [
            "language",
            "interrupt_mode",
            "env",
            "kernel_protocol_version",
            "x_custom",
        ] {
            assert_eq!(out[key], ipykernel_spec()[key], "{key}");
        }
        assert_eq!(out["metadata"]["debugger"], true);
        assert!(out["metadata"].get("supported_encryption").is_none());
        let rec = &out["metadata"][METADATA_KEY];
        assert_eq!(rec["wrapped_argv"], ipykernel_spec()["argv"]);
        assert_eq!(rec["wrapped_spec"], "/nowhere/kernels/py");
        assert_eq!(rec["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(
            rec["removed_metadata"]["supported_encryption"],
            json!(["curve"])
        );
    }

    #[test]
    fn bare_python_is_resolved_in_the_spec_prefix() {
        assert!(
            is_bare_python("python") && is_bare_python("python3") && is_bare_python("python3.11")
        );
        assert!(
            !is_bare_python("python3-config")
                && !is_bare_python("/usr/bin/python")
                && !is_bare_python("pythonx")
        );

        let tmp = tempfile::tempdir().expect("tmp");
        let prefix = tmp.path().join("env");
        let spec_dir = prefix.join("share/jupyter/kernels/python3");
        fs::create_dir_all(prefix.join("bin")).expect("mkdir");
        let py = prefix.join("bin/python");
        fs::write(&py, "#!/bin/sh\n").expect("write");
        fs::set_permissions(&py, fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(
            resolve_interpreter("python", &spec_dir, None),
            Some(py.clone())
        );
        assert_eq!(resolve_interpreter("python3", &spec_dir, None), None);
        assert_eq!(
            resolve_interpreter("python", Path::new("/x/kernels/p"), Some(&prefix)),
            Some(py.clone())
        );
        assert_eq!(
            resolve_interpreter("/usr/bin/python", &spec_dir, Some(&prefix)),
            None
        );

        let Value::Object(spec) = ipykernel_spec() else {
            unreachable!()
        };
        let source = unwrap_spec(spec, &spec_dir).expect("unwrap");
        let out = build_wrapped_spec(
            &source,
            Path::new("/p"),
            &[],
            &DisplayName::Keep,
            &spec_dir,
            None,
        )
        .expect("wrap");
        assert_eq!(out["argv"][5], json!(py.to_string_lossy()));
        assert_eq!(out["metadata"][METADATA_KEY]["wrapped_argv"][0], "python");
    }
}
