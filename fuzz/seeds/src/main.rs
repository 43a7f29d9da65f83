//! Writes the seed corpora of the fuzz targets (`fuzz/corpus/<target>/seed-*`) from
//! real inputs: messages signed by the crate's signer, connection files and kernelspecs
//! as Jupyter and `install` write them, protocol frames as the proxy's client sends
//! them, and stores written by the store itself. Run by `scripts/fuzz.sh seeds`.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use jupyter_audit::audit::{
    Direction, Observation, Record, RecordBuilder, SessionContext, SizePolicy,
};
use jupyter_audit::collector::protocol::{PROTOCOL_VERSION, RecordFrame, ToCollector, write_frame};
use jupyter_audit::collector::server::{PeerIdentity, stamp};
use jupyter_audit::connection::Channel;
use jupyter_audit::kernelspec::{DisplayName, build_wrapped_spec, unwrap_spec};
use jupyter_audit::store::layout::list_segments;
use jupyter_audit::store::{StoreConfig, open};
use jupyter_audit::wire::{SignatureScheme, Signer, WireMessage};
use serde_json::{Value, json};

const KEY: &[u8] = b"a0436f6c-1916-498b-8eb9-e81ab9368e84";
const SEPARATOR: u8 = 0xff;

fn write(corpus: &Path, target: &str, name: &str, bytes: &[u8]) {
    let dir = corpus.join(target);
    std::fs::create_dir_all(&dir).expect("corpus directory");
    std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("seed written");
}

fn header(msg_id: &str, msg_type: &str) -> Value {
    json!({
        "msg_id": msg_id, "msg_type": msg_type, "session": "5c2e1c07-session",
        "username": "alice", "date": "2026-11-21T09:00:00.000000Z", "version": "5.4"
    })
}

fn message(
    routing: &[&[u8]],
    header: &Value,
    parent: &Value,
    metadata: &Value,
    content: &Value,
) -> WireMessage {
    WireMessage::new(
        routing.iter().map(|r| Bytes::copy_from_slice(r)).collect(),
        Bytes::from(header.to_string()),
        Bytes::from(parent.to_string()),
        Bytes::from(metadata.to_string()),
        Bytes::from(content.to_string()),
    )
}

/// Real messages of a notebook session: what a frontend sends and what a kernel answers.
fn messages() -> Vec<(&'static str, WireMessage)> {
    let execute = header("3f2c-exec-1", "execute_request");
    let mut out = vec![
        (
            "execute_request",
            message(
                &[b"\x00k\x8b\x45\x67"],
                &execute,
                &json!({}),
                &json!({"cellId": "c7a1", "deletedCells": [], "recordTiming": false}),
                &json!({"code": "print('hello')\nx = 1", "silent": false, "store_history": true,
                        "user_expressions": {}, "allow_stdin": true, "stop_on_error": true}),
            ),
        ),
        (
            "kernel_info_request",
            message(
                &[b"frontend-1"],
                &header("k1", "kernel_info_request"),
                &json!({}),
                &json!({}),
                &json!({}),
            ),
        ),
        (
            "stream",
            message(
                &[b"kernel.5c2e.stream"],
                &header("s1", "stream"),
                &execute,
                &json!({}),
                &json!({"name": "stdout", "text": "hello\n"}),
            ),
        ),
        (
            "input_reply",
            message(
                &[b"frontend-1"],
                &header("i1", "input_reply"),
                &header("p1", "input_request"),
                &json!({}),
                &json!({"value": "secret"}),
            ),
        ),
    ];
    let mut comm = message(
        &[],
        &header("c1", "comm_msg"),
        &json!({}),
        &json!({}),
        &json!({"comm_id": "w1", "data": {"buffer_paths": [["value"]]}}),
    );
    comm.buffers = vec![Bytes::from_static(b"\x00\x01\x02binary")];
    out.push(("comm_msg_buffers", comm));
    out
}

/// `[scheme index][key length][key][frames joined by 0xff]`, as the wire target reads it.
fn wire_input(scheme: u8, key: &[u8], frames: Vec<Bytes>) -> Vec<u8> {
    let mut out = vec![scheme, u8::try_from(key.len()).expect("short key")];
    out.extend_from_slice(key);
    for (index, frame) in frames.iter().enumerate() {
        if index > 0 {
            out.push(SEPARATOR);
        }
        out.extend_from_slice(frame);
    }
    out
}

fn wire_seeds(corpus: &Path) {
    // Index into the target's scheme list: md5, sha1, sha224, sha256, sha384, sha512.
    let schemes = [(3u8, "hmac-sha256"), (0, "hmac-md5"), (5, "hmac-sha512")];
    for (name, message) in messages() {
        for (index, scheme_name) in schemes {
            let scheme = SignatureScheme::parse(scheme_name).expect("known scheme");
            let mut signed = message.clone();
            signed.resign(&Signer::new(KEY, scheme));
            let frames = signed.into_frames();
            write(
                corpus,
                "wire",
                &format!("{name}-{scheme_name}"),
                &wire_input(index, KEY, frames),
            );
        }
        // Unsigned session: empty key, empty signature.
        write(
            corpus,
            "wire",
            &format!("{name}-unsigned"),
            &wire_input(3, b"", message.into_frames()),
        );
    }
    // A wrong signature and a missing delimiter are what the proxy must refuse.
    let (_, message) = &messages()[0];
    let mut frames = message.clone().into_frames();
    frames[2] =
        Bytes::from_static(b"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff");
    write(corpus, "wire", "bad-signature", &wire_input(3, KEY, frames));
    write(
        corpus,
        "wire",
        "no-delimiter",
        &wire_input(
            3,
            KEY,
            vec![Bytes::from_static(b"id"), Bytes::from_static(b"sig")],
        ),
    );
}

fn files_seeds(corpus: &Path) {
    let connection = |name: &str, value: Value| {
        let mut bytes = vec![0u8];
        bytes.extend(serde_json::to_vec_pretty(&value).expect("json"));
        write(corpus, "files", &format!("connection-{name}"), &bytes);
    };
    // As jupyter_client writes it.
    connection(
        "tcp",
        json!({
            "shell_port": 50001, "iopub_port": 50002, "stdin_port": 50003, "control_port": 50004,
            "hb_port": 50005, "ip": "127.0.0.1", "key": "a0436f6c-1916-498b-8eb9-e81ab9368e84",
            "transport": "tcp", "signature_scheme": "hmac-sha256", "kernel_name": "python3",
            "jupyter_session": "/home/alice/analysis.ipynb"
        }),
    );
    connection(
        "ipc-unsigned",
        json!({
            "shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5,
            "ip": "/run/user/1000/jupyter/kernel-1f2e", "key": "", "transport": "ipc",
            "signature_scheme": "hmac-sha512"
        }),
    );
    connection(
        "wildcard-ip",
        json!({
            "shell_port": 6001, "iopub_port": 6002, "stdin_port": 6003, "control_port": 6004,
            "hb_port": 6005, "ip": "*", "key": "k", "signature_scheme": "hmac-md5"
        }),
    );

    let kernelspec = |name: &str, value: &Value| {
        let mut bytes = vec![1u8];
        bytes.extend(serde_json::to_vec_pretty(value).expect("json"));
        write(corpus, "files", &format!("kernelspec-{name}"), &bytes);
    };
    // As ipykernel installs it.
    let ipykernel = json!({
        "argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ipykernel)", "language": "python",
        "metadata": {"debugger": true, "supported_encryption": ["curve"]},
        "kernel_protocol_version": "5.5", "interrupt_mode": "signal",
        "env": {"PYTHONUNBUFFERED": "1"}
    });
    kernelspec("ipykernel", &ipykernel);
    kernelspec(
        "irkernel",
        &json!({
            "argv": ["/usr/lib/R/bin/R", "--slave", "-e", "IRkernel::main()", "--args", "{connection_file}"],
            "display_name": "R", "language": "R"
        }),
    );
    // What `install` writes for the ipykernel spec.
    let dir = Path::new("/usr/local/share/jupyter/kernels/python3");
    let Value::Object(spec) = ipykernel else {
        unreachable!("an object")
    };
    let source = unwrap_spec(spec, dir).expect("ipykernel spec unwraps");
    let flags = [
        "--socket",
        "/run/jupyter-audit/collector.sock",
        "--on-audit-failure",
        "block",
    ]
    .map(str::to_owned);
    let audited = build_wrapped_spec(
        &source,
        Path::new("/usr/local/bin/jupyter-audit"),
        &flags,
        &DisplayName::Suffixed,
        dir,
        None,
    )
    .expect("wraps");
    kernelspec("audited", &Value::Object(audited));
}

/// Records as the proxy makes them from the session's messages.
fn records() -> Vec<Record> {
    let context = SessionContext {
        session_id: "9d1f-proxy-run".into(),
        kernel_id: Some("1f2e-kernel".into()),
        kernel_name: Some("python3".into()),
    };
    let mut builder = RecordBuilder::new(context, SizePolicy::default());
    let mut out = vec![builder.event("session_start", serde_json::Map::new())];
    for (_, message) in messages() {
        let direction = match message.header().map(|h| h.msg_type) {
            Ok(t) if t == "stream" => Direction::FromKernel,
            _ => Direction::FromFrontend,
        };
        let observation = Observation {
            channel: Channel::Shell,
            direction,
            message,
            parsed: None,
        };
        out.extend(builder.message(observation));
    }
    out
}

fn collector_seeds(corpus: &Path) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut stream: Vec<u8> = Vec::new();
    let hello_only = runtime.block_on(async {
        write_frame(
            &mut stream,
            &ToCollector::Hello {
                version: PROTOCOL_VERSION,
                hub_token: None,
            },
        )
        .await
        .expect("hello");
        let hello_only = stream.len();
        for (id, record) in records().iter().enumerate() {
            let frame = RecordFrame {
                id: id as u64 + 1,
                record,
                urgent: id % 2 == 0,
            };
            write_frame(&mut stream, &frame).await.expect("record");
        }
        hello_only
    });
    write(corpus, "collector", "session", &stream);
    write(corpus, "collector", "hello", &stream[..hello_only]);
}

fn store_seeds(corpus: &Path) {
    let identity = PeerIdentity {
        uid: 1000,
        gid: 1000,
        pid: Some(4242),
        user_name: Some("alice".into()),
        hub: None,
    };
    for (name, segment_max_bytes) in [("one-segment", 64 * 1024 * 1024), ("segments", 1500)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = StoreConfig::new(dir.path().join("store"));
        config.segment_max_bytes = segment_max_bytes;
        let (store, _) = open(config).expect("store opens");
        for record in records() {
            let record = stamp(record, &identity, "audit-host").expect("valid record");
            store.append_blocking(record).expect("stored");
        }
        store.shutdown_blocking().expect("closed");
        write(
            corpus,
            "store",
            name,
            &store_image(&dir.path().join("store")),
        );
    }
}

/// A store as the store target reads it: checkpoints, public key, then each segment
/// as `FIRST\n` and its lines, separated by 0xff.
fn store_image(store: &Path) -> Vec<u8> {
    let mut image = std::fs::read(store.join("checkpoints.jsonl")).unwrap_or_default();
    image.push(SEPARATOR);
    image.extend(std::fs::read(store.join("checkpoint.pub")).expect("public key"));
    for segment in list_segments(store).expect("segments") {
        image.push(SEPARATOR);
        image.extend(format!("{}\n", segment.first).bytes());
        image.extend(std::fs::read(&segment.path).expect("segment"));
    }
    image
}

fn main() {
    let corpus = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus".into()));
    wire_seeds(&corpus);
    files_seeds(&corpus);
    collector_seeds(&corpus);
    store_seeds(&corpus);
}
