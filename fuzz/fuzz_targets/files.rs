//! Connection files and kernelspecs: the two files of someone else's the proxy and
//! `install` read. Input: one selector byte (even: connection file, odd: kernel.json),
//! then the file's bytes.
#![no_main]

use std::path::Path;

use jupyter_audit::connection::{Channel, ConnectionInfo};
use jupyter_audit::kernelspec::{
    DisplayName, build_wrapped_spec, flag_value, parse_spec, proxy_flags, unwrap_spec,
};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

fuzz_target!(|data: &[u8]| {
    let Some((selector, text)) = data.split_first() else {
        return;
    };
    if selector % 2 == 0 {
        connection_file(text);
    } else if let Ok(text) = std::str::from_utf8(text) {
        kernelspec(text);
    }
});

fn connection_file(text: &[u8]) {
    let Ok(info) = ConnectionInfo::parse(text) else {
        return;
    };
    // A parsed file is usable: a signer for its scheme and an endpoint per channel.
    info.signer().expect("parse checked the scheme");
    for channel in Channel::ALL {
        assert!(info.port(channel) != 0);
        let _ = info.endpoint(channel);
    }
    // What the proxy writes for the real kernel reads back the same.
    let written = serde_json::to_vec_pretty(&info).expect("serialisable");
    let again = ConnectionInfo::parse(&written).expect("written file parses");
    assert!(
        again == info,
        "connection file changed in a write/read round trip"
    );
}

const PROXY: &str = "/opt/audit/bin/jupyter-audit";

fn kernelspec(text: &str) {
    let dir = Path::new("/nonexistent/share/jupyter/kernels/fuzz");
    let Ok(spec) = parse_spec(text, dir.join("kernel.json")) else {
        return;
    };
    let Ok(source) = unwrap_spec(spec, dir) else {
        return;
    };
    let _ = flag_value(&source.proxy_flags, "--socket");
    let flags: Vec<String> = ["--socket", "/run/jupyter-audit.sock"]
        .map(str::to_owned)
        .to_vec();
    let wrapped = build_wrapped_spec(
        &source,
        Path::new(PROXY),
        &flags,
        &DisplayName::Suffixed,
        dir,
        None,
    )
    .expect("any unwrapped spec can be wrapped");

    // Never twice: the audited spec unwraps to the kernel it runs, with the flags given.
    let argv: Vec<String> = wrapped["argv"]
        .as_array()
        .expect("argv is a list")
        .iter()
        .map(|a| a.as_str().expect("argv holds strings").to_owned())
        .collect();
    assert_eq!(proxy_flags(&argv), flags);
    let unwrapped = unwrap_spec(wrapped.clone(), dir).expect("an audited spec unwraps");
    assert!(unwrapped.was_audited);
    assert_eq!(unwrapped.argv, source.argv);
    assert_eq!(unwrapped.proxy_flags, flags);
    assert_eq!(
        comparable(&unwrapped.spec),
        comparable(&source.spec),
        "unwrapping changed the original spec"
    );
    // Wrapping again gives the same spec: a repeated `install` writes nothing new.
    let rewrapped = build_wrapped_spec(
        &unwrapped,
        Path::new(PROXY),
        &flags,
        &DisplayName::Suffixed,
        dir,
        None,
    )
    .expect("wraps again");
    assert_eq!(rewrapped, wrapped, "a second wrap differs from the first");
}

/// The spec without what wrapping may change on purpose: the display name, and
/// `metadata` being absent, null or empty.
fn comparable(spec: &Map<String, Value>) -> Map<String, Value> {
    let mut spec = spec.clone();
    spec.remove("display_name");
    if spec
        .get("metadata")
        .is_some_and(|m| m.is_null() || m.as_object().is_some_and(Map::is_empty))
    {
        spec.remove("metadata");
    }
    spec
}
