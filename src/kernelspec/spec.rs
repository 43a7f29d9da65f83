//! Reading a kernelspec and recovering the original one from it: an already audited spec
//! is unwrapped to the kernel it runs, so it is never wrapped twice.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{KERNEL_JSON, KernelspecError, Result, flags};

/// Key under `metadata` that marks an audited kernelspec.
pub const METADATA_KEY: &str = "jupyter_audit";

/// Read and parse `DIR/kernel.json`; it must be a JSON object.
pub fn read_spec(dir: &Path) -> Result<Map<String, Value>> {
    let path = dir.join(KERNEL_JSON);
    let text = fs::read_to_string(&path).map_err(|error| KernelspecError::Read {
        path: path.clone(),
        error,
    })?;
    parse_spec(&text, path)
}

/// Parses the text of a `kernel.json` read from `path` (named in errors): the parsing
/// entry point of [`read_spec`], public for the fuzzer.
pub fn parse_spec(text: &str, path: PathBuf) -> Result<Map<String, Value>> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(KernelspecError::InvalidSpec {
            path,
            reason: "kernel.json is not a JSON object".to_owned(),
        }),
        Err(error) => Err(KernelspecError::InvalidJson { path, error }),
    }
}

/// A kernelspec as it was before any auditing: what gets wrapped.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceSpec {
    /// The original spec: original `argv`, `metadata` without `jupyter_audit` (with any
    /// removed keys restored), everything else as found.
    pub spec: Map<String, Value>,
    /// The original kernel command line.
    pub argv: Vec<String>,
    /// Directory of the original kernelspec.
    pub wrapped_spec: PathBuf,
    /// Whether the spec read was already audited.
    pub was_audited: bool,
    /// The proxy flags of the audited spec read (between `kernel` and `--`, without the
    /// connection file); empty when it was not audited.
    pub proxy_flags: Vec<String>,
}

fn string_array(value: &Value) -> Option<Vec<String>> {
    value
        .as_array()?
        .iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect()
}

fn is_proxy_argv(argv: &[String]) -> bool {
    argv.len() >= 2
        && argv[1] == "kernel"
        && Path::new(&argv[0])
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("jupyter-audit"))
}

/// Recover the original spec from `spec` (read from `dir`), undoing a previous audit.
pub fn unwrap_spec(mut spec: Map<String, Value>, dir: &Path) -> Result<SourceSpec> {
    let path = dir.join(KERNEL_JSON);
    let invalid = |reason: &str| KernelspecError::InvalidSpec {
        path: path.clone(),
        reason: reason.to_owned(),
    };
    let argv = spec
        .get("argv")
        .and_then(string_array)
        .ok_or_else(|| invalid("\"argv\" must be a list of strings"))?;
    if argv.is_empty() {
        return Err(invalid("\"argv\" is empty"));
    }

    let record = match spec.get_mut("metadata") {
        Some(Value::Object(metadata)) => metadata.remove(METADATA_KEY),
        Some(Value::Null) | None => None,
        Some(_) => return Err(invalid("\"metadata\" must be an object")),
    };
    if let Some(record) = record {
        let wrapped_argv = record
            .get("wrapped_argv")
            .and_then(string_array)
            .filter(|a| !a.is_empty())
            .ok_or_else(|| {
                invalid("metadata.jupyter_audit.wrapped_argv must be a non-empty list of strings")
            })?;
        let wrapped_spec = record
            .get("wrapped_spec")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.to_path_buf());
        if let Some(Value::Object(removed)) = record.get("removed_metadata")
            && let Some(Value::Object(metadata)) = spec.get_mut("metadata")
        {
            for (k, v) in removed {
                metadata.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        spec.insert("argv".to_owned(), string_list(&wrapped_argv));
        let proxy_flags = if is_proxy_argv(&argv) {
            flags::proxy_flags(&argv)
        } else {
            Vec::new()
        };
        return Ok(SourceSpec {
            spec,
            argv: wrapped_argv,
            wrapped_spec,
            was_audited: true,
            proxy_flags,
        });
    }

    if is_proxy_argv(&argv) {
        let sep = argv.iter().position(|a| a == "--").ok_or_else(|| {
            invalid("argv runs jupyter-audit but has no \"--\" before the kernel")
        })?;
        let original: Vec<String> = argv[sep + 1..].to_vec();
        if original.is_empty() {
            return Err(invalid(
                "argv runs jupyter-audit but no kernel follows \"--\"",
            ));
        }
        spec.insert("argv".to_owned(), string_list(&original));
        return Ok(SourceSpec {
            spec,
            argv: original,
            wrapped_spec: dir.to_path_buf(),
            was_audited: true,
            proxy_flags: flags::proxy_flags(&argv),
        });
    }

    Ok(SourceSpec {
        spec,
        argv,
        wrapped_spec: dir.to_path_buf(),
        was_audited: false,
        proxy_flags: Vec::new(),
    })
}

pub(super) fn string_list(items: &[String]) -> Value {
    Value::Array(items.iter().cloned().map(Value::String).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernelspec::test_support::ipykernel_spec;
    use crate::kernelspec::wrap::{DisplayName, build_wrapped_spec};
    use serde_json::json;

    #[test]
    fn read_spec_errors() {
        let tmp = tempfile::tempdir().expect("tmp");
        assert!(matches!(
            read_spec(tmp.path()),
            Err(KernelspecError::Read { .. })
        ));
        fs::write(tmp.path().join(KERNEL_JSON), "{not json").expect("write");
        assert!(matches!(
            read_spec(tmp.path()),
            Err(KernelspecError::InvalidJson { .. })
        ));
        fs::write(tmp.path().join(KERNEL_JSON), "[1]").expect("write");
        assert!(matches!(
            read_spec(tmp.path()),
            Err(KernelspecError::InvalidSpec { .. })
        ));
        fs::write(tmp.path().join(KERNEL_JSON), r#"{"argv": [1]}"#).expect("write");
        let spec = read_spec(tmp.path()).expect("object");
        assert!(matches!(
            unwrap_spec(spec, tmp.path()),
            Err(KernelspecError::InvalidSpec { .. })
        ));
    }

    #[test]
    fn unwrap_of_wrapped_gives_back_the_original() {
        let dir = Path::new("/k/py");
        let Value::Object(spec) = ipykernel_spec() else {
            unreachable!()
        };
        let source = unwrap_spec(spec.clone(), dir).expect("unwrap");
        let flags = ["--socket", "/run/c.sock", "--on-audit-failure", "allow"].map(String::from);
        let wrapped = build_wrapped_spec(
            &source,
            Path::new("/old/jupyter-audit"),
            &flags,
            &DisplayName::Keep,
            dir,
            None,
        )
        .expect("wrap");
        assert_eq!(
            wrapped["argv"],
            json!([
                "/old/jupyter-audit",
                "kernel",
                "--socket",
                "/run/c.sock",
                "--on-audit-failure",
                "allow",
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
        let again = unwrap_spec(wrapped, Path::new("/elsewhere")).expect("unwrap2");
        assert!(again.was_audited);
        assert_eq!(again.spec, spec);
        assert_eq!(again.wrapped_spec, dir);
        assert_eq!(
            again.argv,
            [
                "python",
                "-m",
                "ipykernel_launcher",
                "-f",
                "{connection_file}"
            ]
        );
        assert_eq!(again.proxy_flags, flags);

        // A bare proxy command line without metadata is recognised too.
        let legacy = json!({
            "argv": ["/opt/bin/jupyter-audit", "kernel", "-f", "{connection_file}", "--", "k", "-f", "{connection_file}"],
            "display_name": "K"
        });
        let Value::Object(legacy) = legacy else {
            unreachable!()
        };
        let src = unwrap_spec(legacy, dir).expect("legacy");
        assert!(src.was_audited);
        assert_eq!(src.argv, ["k", "-f", "{connection_file}"]);
        assert!(src.proxy_flags.is_empty());
        assert!(!source.was_audited && source.proxy_flags.is_empty());
    }
}
