//! Collector benchmark: starts the real `jupyter-audit collector` as its own process and
//! measures durable ingest (64 pipelined writers) and 100 concurrent audited sessions.
//!
//! `cargo bench --bench collector` (add `-- --quick` for a short run). The collector
//! binary must be built first (`cargo build --release`) or named by `JUPYTER_AUDIT_BIN`.
//! The store goes to a temporary directory under `JUPYTER_AUDIT_BENCH_DIR` (default:
//! cargo's target tmp dir), so that its disk is the one measured.
// A benchmark stops at its first failure, loudly: that is what expect() is for here.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jupyter_audit::audit::{Record, RecordBuilder, SessionContext, SizePolicy};
use jupyter_audit::collector::AuditClient;
use jupyter_audit::collector::protocol::{
    FromCollector, PROTOCOL_VERSION, RecordFrame, ToCollector, read_frame, write_frame,
};
use jupyter_audit::store::Reader;
use serde_json::{Value, json};
use tokio::io::{AsyncWriteExt, BufReader as AsyncBufReader, BufWriter};
use tokio::net::UnixStream;
use tokio::sync::Semaphore;

#[derive(Clone)]
struct Settings {
    quick: bool,
    writers: usize,
    window: usize,
    ingest_for: Duration,
    sessions: usize,
    cells: usize,
    outputs_per_cell: usize,
    /// Time each cell "runs" in the kernel before the next one is sent (0: back to back).
    pause: Duration,
}

impl Settings {
    /// `--quick`, and `--writers N`, `--window N`, `--seconds N`, `--sessions N`,
    /// `--cells N`, `--pause-ms N` to change one figure's load.
    fn from_args() -> Self {
        let args: Vec<String> = std::env::args().collect();
        let quick = args.iter().any(|arg| arg == "--quick");
        let number = |name: &str, default: u64| {
            args.iter()
                .position(|arg| arg == name)
                .and_then(|at| args.get(at + 1))
                .map_or(default, |value| {
                    value
                        .parse()
                        .unwrap_or_else(|_| panic!("{name} wants a number, not {value:?}"))
                })
        };
        Settings {
            quick,
            writers: number("--writers", 64) as usize,
            window: number("--window", 64) as usize,
            ingest_for: Duration::from_secs(number("--seconds", if quick { 1 } else { 5 })),
            sessions: number("--sessions", 100) as usize,
            cells: number("--cells", if quick { 5 } else { 30 }) as usize,
            outputs_per_cell: 4,
            pause: Duration::from_millis(number("--pause-ms", 10)),
        }
    }
}

struct Row {
    figure: String,
    value: String,
    target: &'static str,
    verdict: &'static str,
}

fn row(figure: impl Into<String>, value: impl Into<String>) -> Row {
    Row {
        figure: figure.into(),
        value: value.into(),
        target: "",
        verdict: "",
    }
}

fn judged(figure: &str, value: String, target: &'static str, pass: bool) -> Row {
    Row {
        figure: figure.into(),
        value,
        target,
        verdict: if pass { "PASS" } else { "MISS" },
    }
}

fn main() {
    let settings = Settings::from_args();
    let binary = match collector_binary() {
        Ok(binary) => binary,
        Err(message) => {
            eprintln!("collector bench: {message}");
            std::process::exit(2);
        }
    };
    let base = std::env::var_os("JUPYTER_AUDIT_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&base).expect("bench directory");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    println!(
        "collector benchmark{}",
        if settings.quick { " (quick)" } else { "" }
    );
    println!("  machine: {}", machine());
    println!("  collector: {}", binary.display());
    println!(
        "  store disk: {} ({})",
        base.display(),
        filesystem_of(&base)
    );
    let mut rows = Vec::new();

    // The disk's own limit: what one fdatasync costs.
    for (size, label) in [(4096, "4 KiB"), (1 << 20, "1 MiB")] {
        let fsync = fsync_latency(&base, if settings.quick { 20 } else { 100 }, size);
        rows.push(row(
            format!("write {label} + fdatasync on the store's disk, p50 / p99"),
            format!("{} / {}", micros(fsync.0), micros(fsync.1)),
        ));
    }

    rows.extend(per_byte_costs(&base, if settings.quick { 4 } else { 64 }));

    // 1. Ingest: 64 writers, each its own connection with a window of outstanding records.
    let dir = tempfile::Builder::new()
        .prefix("ingest-")
        .tempdir_in(&base)
        .expect("tempdir");
    let collector = Collector::start(&binary, dir.path());
    let cpu_before = own_cpu();
    let ingest = runtime.block_on(ingest(&collector.socket, &settings));
    let client_cpu = own_cpu() - cpu_before;
    let stats = collector.stop();
    let rate = ingest.acked as f64 / ingest.elapsed.as_secs_f64();
    let batches = stats.get("batches").copied().unwrap_or(0);
    let records_stored = stats.get("records").copied().unwrap_or(0);
    rows.push(judged(
        &format!(
            "ingest, {} writers × window {}, durable (records/s)",
            settings.writers, settings.window
        ),
        format!("{rate:.0}"),
        "≥ 100000",
        rate >= 100_000.0,
    ));
    rows.push(row(
        "  fsyncs/s (store batches; records per batch)",
        format!(
            "{:.0} ({:.0})",
            batches as f64 / ingest.elapsed.as_secs_f64(),
            records_stored as f64 / batches.max(1) as f64
        ),
    ));
    rows.push(row(
        "  ack latency p50 / p99 / max (submit → ack)",
        format!(
            "{} / {} / {}",
            micros(percentile(&ingest.latencies, 0.50)),
            micros(percentile(&ingest.latencies, 0.99)),
            micros(percentile(&ingest.latencies, 1.0))
        ),
    ));
    rows.push(row(
        "  records acked / stored (collector's count)",
        format!(
            "{} / {} (nacks {})",
            ingest.acked, records_stored, ingest.nacked
        ),
    ));
    rows.push(row(
        "  collector CPU s (busiest threads)",
        cpu_summary(&stats, ingest.elapsed),
    ));
    rows.push(row(
        "  bench clients' CPU s (same machine)",
        format!("{client_cpu:.2}"),
    ));
    drop(dir);

    // 2. Sessions: write-ahead execute_request, then outputs without waiting; paced
    // (each cell "runs" for --pause-ms), then back to back as a stress figure.
    let mut pauses = vec![settings.pause];
    if !settings.pause.is_zero() {
        pauses.push(Duration::ZERO);
    }
    for pause in pauses {
        rows.extend(run_sessions(&runtime, &binary, &base, &settings, pause));
    }
    // 3. One session alone, one cell every 3 ms: the write-ahead round trip that sits
    // in every audited execute (proxy's client → collector → store's fdatasync → back),
    // to compare with the fdatasync above.
    let alone = Settings {
        sessions: 1,
        cells: if settings.quick { 20 } else { 300 },
        ..settings.clone()
    };
    rows.extend(run_sessions(
        &runtime,
        &binary,
        &base,
        &alone,
        Duration::from_millis(3),
    ));

    print_table(&rows);
}

fn run_sessions(
    runtime: &tokio::runtime::Runtime,
    binary: &Path,
    base: &Path,
    settings: &Settings,
    pause: Duration,
) -> Vec<Row> {
    let mut rows = Vec::new();
    let dir = tempfile::Builder::new()
        .prefix("sessions-")
        .tempdir_in(base)
        .expect("tempdir");
    let collector = Collector::start(binary, dir.path());
    let sessions = runtime.block_on(sessions(&collector.socket, settings, pause));
    let stats = collector.stop();
    let stored = count_per_session(dir.path());
    let mut lost = 0u64;
    let mut extra = 0u64;
    for (session, sent) in &sessions.sent {
        let have = stored.get(session).copied().unwrap_or(0);
        lost += sent.saturating_sub(have);
        extra += have.saturating_sub(*sent);
    }
    let sent_total: u64 = sessions.sent.values().sum();
    let stored_total: u64 = sessions
        .sent
        .keys()
        .map(|session| stored.get(session).copied().unwrap_or(0))
        .sum();
    rows.push(judged(
        &format!(
            "{} session{} × {} cells, {} between cells: sent / stored",
            settings.sessions,
            if settings.sessions == 1 { "" } else { "s" },
            settings.cells,
            if pause.is_zero() {
                "nothing".to_owned()
            } else {
                format!("~{}", micros(pause))
            }
        ),
        format!(
            "{sent_total} / {stored_total} (lost {lost}, extra {extra}, failed acks {})",
            sessions.failures
        ),
        "zero lost",
        lost == 0 && extra == 0 && sessions.failures == 0,
    ));
    let p99 = percentile(&sessions.latencies, 0.99);
    // Back to back is a stress figure: the target is for sessions whose cells take time.
    rows.push(if pause.is_zero() {
        row("  durable ack (execute_request) p99 (stress)", micros(p99))
    } else {
        judged(
            "  durable ack (execute_request) p99",
            micros(p99),
            "≤ 5 ms",
            p99 <= Duration::from_millis(5),
        )
    });
    rows.push(row(
        "  durable ack p50 / max",
        format!(
            "{} / {}",
            micros(percentile(&sessions.latencies, 0.50)),
            micros(percentile(&sessions.latencies, 1.0))
        ),
    ));
    rows.push(row(
        "  wall time; fsyncs/s (records per batch)",
        format!(
            "{:.2} s; {:.0} ({:.1})",
            sessions.elapsed.as_secs_f64(),
            stats.get("batches").copied().unwrap_or(0) as f64 / sessions.elapsed.as_secs_f64(),
            stats.get("records").copied().unwrap_or(0) as f64
                / stats.get("batches").copied().unwrap_or(0).max(1) as f64
        ),
    ));

    rows
}

fn print_table(rows: &[Row]) {
    let width = |f: fn(&Row) -> usize, title: &str| {
        rows.iter()
            .map(f)
            .max()
            .unwrap_or(0)
            .max(title.chars().count())
    };
    let figure = width(|r| r.figure.chars().count(), "figure");
    let value = width(|r| r.value.chars().count(), "value");
    let target = width(|r| r.target.chars().count(), "target");
    let line = |a: &str, b: &str, c: &str, d: &str| {
        println!(
            "| {a}{} | {b}{} | {c}{} | {d:9} |",
            " ".repeat(figure - a.chars().count()),
            " ".repeat(value - b.chars().count()),
            " ".repeat(target - c.chars().count()),
        );
    };
    println!();
    line("figure", "value", "target", "PASS/MISS");
    println!(
        "|{}|{}|{}|-----------|",
        "-".repeat(figure + 2),
        "-".repeat(value + 2),
        "-".repeat(target + 2)
    );
    for r in rows {
        line(&r.figure, &r.value, r.target, r.verdict);
    }
}

// ---------------------------------------------------------------------------------
// The collector process.

fn collector_binary() -> Result<PathBuf, String> {
    if let Some(binary) = std::env::var_os("JUPYTER_AUDIT_BIN") {
        let binary = PathBuf::from(binary);
        return if binary.is_file() {
            Ok(binary)
        } else {
            Err(format!(
                "JUPYTER_AUDIT_BIN={} is not a file",
                binary.display()
            ))
        };
    }
    // CARGO_TARGET_TMPDIR is <target>/tmp.
    let binary = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap_or(Path::new("target"))
        .join("release/jupyter-audit");
    if !binary.is_file() {
        return Err(format!(
            "{} is missing: run `cargo build --release` first (scripts/bench.sh does), \
             or set JUPYTER_AUDIT_BIN",
            binary.display()
        ));
    }
    let built = binary.metadata().and_then(|m| m.modified()).ok();
    let newest_source = newest_mtime(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    if let (Some(built), Some(source)) = (built, newest_source)
        && source > built
    {
        eprintln!(
            "collector bench: warning: {} is older than the sources; run `cargo build --release`",
            binary.display()
        );
    }
    Ok(binary)
}

fn newest_mtime(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let time = if path.is_dir() {
            newest_mtime(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(time);
    }
    newest
}

struct Collector {
    child: Child,
    socket: PathBuf,
    log: std::thread::JoinHandle<Vec<String>>,
}

impl Collector {
    fn start(binary: &Path, dir: &Path) -> Self {
        let socket = dir.join("c.sock");
        let mut child = Command::new(binary)
            .arg("collector")
            .arg("--store")
            .arg(dir.join("store"))
            .arg("--socket")
            .arg(&socket)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", binary.display()));
        let stderr = child.stderr.take().expect("stderr");
        let log = std::thread::spawn(move || {
            BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
                .collect()
        });
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the collector exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "the collector did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Collector { child, socket, log }
    }

    /// SIGTERM, wait, and the store's counters from the collector's last log line.
    fn stop(mut self) -> HashMap<String, u64> {
        let cpu = thread_cpu(self.child.id());
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let status = self.child.wait().expect("collector exit");
        let lines = self.log.join().unwrap_or_default();
        if !status.success() {
            eprintln!("collector exited with {status}:");
            for line in &lines {
                eprintln!("  {line}");
            }
        }
        let mut stats = HashMap::new();
        if let Some(line) = lines.iter().rev().find(|l| l.contains("collector stopped")) {
            for word in line.split_whitespace() {
                if let Some((key, value)) = word.split_once('=')
                    && let Ok(value) = value.parse()
                {
                    stats.insert(key.to_owned(), value);
                }
            }
        } else {
            eprintln!("collector bench: the collector logged no store counters");
        }
        for (name, seconds) in cpu {
            stats.insert(format!("cpu_ms:{name}"), (seconds * 1000.0) as u64);
        }
        stats
    }
}

// ---------------------------------------------------------------------------------
// 1. Ingest.

struct Ingest {
    acked: u64,
    nacked: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

fn stream_record(session: &str, kernel: &str, sequence: u64) -> Record {
    let value = json!({
        "event": {"action": "stream", "created": "2026-11-21T06:00:00.123456Z", "kind": "event"},
        "jupyter": {
            "session_id": session,
            "kernel_id": kernel,
            "kernel_name": "python3",
            "msg_id": format!("{kernel}_{sequence}"),
            "parent_msg_id": "5f0c5a3e-1b7e4b0a9b0d2c1e_17",
            "channel": "iopub",
            "direction": "from_kernel",
            "stream": "stdout",
            "text": "epoch 17/200  loss=0.04213  accuracy=0.9861  val_loss=0.05127  val_accuracy=0.9824  lr=1.0e-3  elapsed 3.21 s\n",
        }
    });
    let Value::Object(record) = value else {
        unreachable!()
    };
    record
}

async fn ingest(socket: &Path, settings: &Settings) -> Ingest {
    let start = Instant::now();
    let deadline = start + settings.ingest_for;
    let mut tasks = Vec::new();
    for writer in 0..settings.writers {
        let socket = socket.to_owned();
        let window = settings.window;
        tasks.push(tokio::spawn(async move {
            writer_connection(&socket, writer, window, deadline).await
        }));
    }
    let mut result = Ingest {
        acked: 0,
        nacked: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    for task in tasks {
        let (acked, nacked, latencies) = task.await.expect("writer task");
        result.acked += acked;
        result.nacked += nacked;
        result.latencies.extend(latencies);
    }
    result.elapsed = start.elapsed();
    result.latencies.sort_unstable();
    result
}

/// One pipelined connection: up to `window` records unacknowledged. Returns acks,
/// nacks and the latency of each ack.
async fn writer_connection(
    socket: &Path,
    writer: usize,
    window: usize,
    deadline: Instant,
) -> (u64, u64, Vec<Duration>) {
    let stream = UnixStream::connect(socket).await.expect("connect");
    let (read, write) = stream.into_split();
    let mut read = AsyncBufReader::new(read);
    let mut write = BufWriter::new(write);
    write_frame(
        &mut write,
        &ToCollector::Hello {
            hub_token: None,
            version: PROTOCOL_VERSION,
        },
    )
    .await
    .expect("hello");
    write.flush().await.expect("hello");
    match read_frame::<_, FromCollector>(&mut read).await {
        Ok(Some(FromCollector::Hello { .. })) => {}
        other => panic!("unexpected answer to hello: {other:?}"),
    }

    let permits = Arc::new(Semaphore::new(window));
    let sent: Arc<Mutex<VecDeque<(u64, Instant)>>> = Arc::default();
    let reader = {
        let permits = Arc::clone(&permits);
        let sent = Arc::clone(&sent);
        tokio::spawn(async move {
            let (mut acked, mut nacked) = (0u64, 0u64);
            let mut latencies = Vec::with_capacity(200_000);
            loop {
                let id = match read_frame::<_, FromCollector>(&mut read).await {
                    Ok(Some(FromCollector::Ack { id, .. })) => {
                        acked += 1;
                        id
                    }
                    Ok(Some(FromCollector::Nack { id, error, .. })) => {
                        if nacked == 0 {
                            eprintln!("nack: {error}");
                        }
                        nacked += 1;
                        id
                    }
                    Ok(Some(FromCollector::Hello { .. })) => continue,
                    Ok(Some(FromCollector::Refused { reason })) => panic!("refused: {reason}"),
                    // The collector closes once every record is answered.
                    Ok(None) => break,
                    Err(error) => panic!("connection failed: {error}"),
                };
                let now = Instant::now();
                let mut sent = sent.lock().expect("sent");
                while let Some((front, at)) = sent.pop_front() {
                    if front == id {
                        latencies.push(now - at);
                        break;
                    }
                }
                drop(sent);
                permits.add_permits(1);
            }
            (acked, nacked, latencies)
        })
    };

    let session = format!("bench-ingest-{writer}");
    let kernel = uuid::Uuid::new_v4().to_string();
    let mut record = stream_record(&session, &kernel, 0);
    let mut id = 0u64;
    while Instant::now() < deadline {
        // Flush what is buffered before waiting for room in the window.
        let permit = match permits.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                write.flush().await.expect("flush");
                permits.acquire().await.expect("permit")
            }
        };
        permit.forget();
        id += 1;
        if let Some(Value::Object(jupyter)) = record.get_mut("jupyter") {
            jupyter.insert("msg_id".into(), Value::String(format!("{kernel}_{id}")));
        }
        sent.lock().expect("sent").push_back((id, Instant::now()));
        write_frame(
            &mut write,
            // Ingest records are not urgent: nobody waits for one before going on.
            &RecordFrame {
                id,
                record: &record,
                urgent: false,
            },
        )
        .await
        .expect("send");
    }
    // Closing our side makes the collector answer the rest and then close its side.
    write.flush().await.expect("flush");
    write.shutdown().await.expect("shutdown");
    reader.await.expect("reader")
}

// ---------------------------------------------------------------------------------
// 2. Sessions.

struct Sessions {
    sent: HashMap<String, u64>,
    failures: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

fn session_record(session: &str, action: &str, cell: usize, fields: Value) -> Record {
    let mut jupyter = json!({
        "session_id": session,
        "kernel_id": "8e9a3a54-63f4-4a7b-9b8e-2f0d1c6b7a55",
        "kernel_name": "python3",
        "msg_id": format!("{session}-{action}-{cell}"),
        "parent_msg_id": format!("{session}-execute_request-{cell}"),
        "channel": if action == "execute_request" || action == "execute_reply" { "shell" } else { "iopub" },
    });
    if let (Value::Object(jupyter), Value::Object(fields)) = (&mut jupyter, fields) {
        jupyter.extend(fields);
    }
    let value = json!({
        "event": {"action": action, "created": jupyter_audit::audit::now_rfc3339(), "kind": "event"},
        "jupyter": jupyter,
    });
    let Value::Object(record) = value else {
        unreachable!()
    };
    record
}

async fn sessions(socket: &Path, settings: &Settings, pause: Duration) -> Sessions {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for number in 0..settings.sessions {
        let socket = socket.to_owned();
        let cells = settings.cells;
        let outputs = settings.outputs_per_cell;
        tasks.push(tokio::spawn(async move {
            let session = format!("bench-session-{number}-{}", uuid::Uuid::new_v4());
            let context = SessionContext {
                session_id: session.clone(),
                kernel_id: None,
                kernel_name: Some("python3".into()),
            };
            let recorder = RecordBuilder::new(context.clone(), SizePolicy::default());
            let (client, task) = AuditClient::spawn(socket, context, Box::new(recorder));
            let patience = Duration::from_secs(10);
            let (mut sent, mut failures) = (0u64, 0u64);
            let mut latencies = Vec::with_capacity(cells);
            // As the proxy does while its kernel starts: connected before the first cell.
            client.record(session_record(&session, "session_start", 0, json!({})));
            sent += 1;
            if client.flush(patience).await.is_err() {
                failures += 1;
            }
            // Users do not press run in step: a random start, then pauses around `pause`.
            let jitter = |pause: Duration| pause.mul_f64(rand::random_range(0.5..1.5));
            if !pause.is_zero() {
                tokio::time::sleep(jitter(pause)).await;
            }
            for cell in 0..cells {
                let request = session_record(
                    &session,
                    "execute_request",
                    cell,
                    json!({
                        "code": "import numpy as np\nx = np.random.default_rng(7).normal(size=(1000, 3))\nprint(x.mean(axis=0), x.std(axis=0))\n",
                        "cell_id": format!("cell-{cell}"),
                        "silent": false,
                        "store_history": true,
                    }),
                );
                let submitted = Instant::now();
                let outcome = client.submit_durable(request).wait(patience).await;
                latencies.push(submitted.elapsed());
                sent += 1;
                if outcome.is_err() {
                    failures += 1;
                }
                for output in 0..outputs {
                    let (action, fields) = match output {
                        0 => ("execute_input", json!({"execution_count": cell + 1})),
                        o if o + 1 == outputs => (
                            "execute_reply",
                            json!({"status": "ok", "execution_count": cell + 1}),
                        ),
                        _ => (
                            "stream",
                            json!({"stream": "stdout", "text": "[ 0.0123 -0.0311  0.0457] [0.9987 1.0021 0.9964]\n"}),
                        ),
                    };
                    client.record(session_record(&session, action, cell, fields));
                    sent += 1;
                }
                if !pause.is_zero() {
                    tokio::time::sleep(jitter(pause)).await;
                }
            }
            if client.flush(patience).await.is_err() {
                failures += 1;
            }
            drop(client);
            let _ = task.await;
            (session, sent, failures, latencies)
        }));
    }
    let mut result = Sessions {
        sent: HashMap::new(),
        failures: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    for task in tasks {
        let (session, sent, failures, latencies) = task.await.expect("session task");
        result.sent.insert(session, sent);
        result.failures += failures;
        result.latencies.extend(latencies);
    }
    result.elapsed = start.elapsed();
    result.latencies.sort_unstable();
    result
}

fn count_per_session(dir: &Path) -> HashMap<String, u64> {
    let mut counts = HashMap::new();
    for stored in Reader::open(&dir.join("store")).expect("open the store") {
        let stored = stored.expect("stored record");
        if let Some(session) = stored.value["jupyter"]["session_id"].as_str() {
            *counts.entry(session.to_owned()).or_insert(0) += 1;
        }
    }
    counts
}

// ---------------------------------------------------------------------------------
// Machine and disk.

/// Appends `size` bytes and times the fdatasync after each, as the store's writer does.
fn fsync_latency(dir: &Path, count: usize, size: usize) -> (Duration, Duration) {
    let mut file = tempfile::NamedTempFile::new_in(dir).expect("temp file");
    let block = vec![b'x'; size];
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        file.write_all(&block).expect("write");
        file.as_file().sync_data().expect("fdatasync");
        times.push(started.elapsed());
    }
    times.sort_unstable();
    (percentile(&times, 0.5), percentile(&times, 0.99))
}

/// What one pass over the bytes of a big output costs on this machine, for each pass
/// an auditing relay cannot avoid: the HMAC to check the kernel's signature and the one
/// to sign for the frontend, the store's SHA-256 chain, JSON string escaping, and the
/// write into the page cache. Shown as ms per 50 MB, the big-output figure's volume.
fn per_byte_costs(dir: &Path, megabytes: usize) -> Vec<Row> {
    use jupyter_audit::wire::{SignatureScheme, Signer};
    use sha2::{Digest, Sha256};
    let data = vec![b'x'; megabytes << 20];
    let per_50mb = |elapsed: Duration| {
        let ms = elapsed.as_secs_f64() * 1000.0 * 50.0 / megabytes as f64;
        let rate = megabytes as f64 / elapsed.as_secs_f64();
        format!("{ms:.1} ms per 50 MB ({rate:.0} MB/s)")
    };
    let best_of = |f: &mut dyn FnMut()| {
        (0..3)
            .map(|_| {
                let started = Instant::now();
                f();
                started.elapsed()
            })
            .min()
            .unwrap_or_default()
    };
    let signer = Signer::new(b"bench-key", SignatureScheme::Sha256);
    let hmac = best_of(&mut || {
        std::hint::black_box(signer.sign([b"{}", b"{}", b"{}", &data]));
    });
    let sha = best_of(&mut || {
        std::hint::black_box(Sha256::digest(&data));
    });
    let text = String::from_utf8_lossy(&data);
    let escape = best_of(&mut || {
        std::hint::black_box(serde_json::to_vec(&text).map(|v| v.len()).unwrap_or(0));
    });
    let write = best_of(&mut || {
        let mut file = tempfile::NamedTempFile::new_in(dir).expect("temp file");
        for chunk in data.chunks(1 << 20) {
            file.write_all(chunk).expect("write");
        }
    });
    vec![
        row("HMAC-SHA256 (verify or re-sign)", per_50mb(hmac)),
        row("SHA-256 (store chain)", per_50mb(sha)),
        row("JSON string escaping (serde_json)", per_50mb(escape)),
        row("write to a new file (page cache)", per_50mb(write)),
    ]
}

/// CPU seconds (user + system) of each thread of process `pid`, summed by thread name.
fn thread_cpu(pid: u32) -> Vec<(String, f64)> {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let mut by_name: HashMap<String, f64> = HashMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let time = |index: usize| {
            fields
                .get(index)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        *by_name.entry(name).or_insert(0.0) += (time(11) + time(12)) / ticks;
    }
    let mut threads: Vec<_> = by_name.into_iter().collect();
    threads.sort_by(|a, b| b.1.total_cmp(&a.1));
    threads
}

/// "name 1.23 s, …" of the collector's threads, and the bench process's own CPU.
fn cpu_summary(stats: &HashMap<String, u64>, elapsed: Duration) -> String {
    let mut threads: Vec<(&str, u64)> = stats
        .iter()
        .filter_map(|(key, value)| key.strip_prefix("cpu_ms:").map(|name| (name, *value)))
        .collect();
    threads.sort_by_key(|thread| std::cmp::Reverse(thread.1));
    let total: u64 = threads.iter().map(|t| t.1).sum();
    let top: Vec<String> = threads
        .iter()
        .take(3)
        .map(|(name, ms)| format!("{name} {:.2}", *ms as f64 / 1000.0))
        .collect();
    format!(
        "{:.2} s in {:.2} s wall ({})",
        total as f64 / 1000.0,
        elapsed.as_secs_f64(),
        top.join(", ")
    )
}

/// User + system CPU seconds of this (the bench's) process so far.
fn own_cpu() -> f64 {
    thread_cpu(std::process::id()).iter().map(|t| t.1).sum()
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|release| release.trim().to_owned())
        .unwrap_or_default();
    // Other work on the machine skews every figure: say how busy it was.
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default();
    format!("{cpus} CPUs ({model}), Linux {kernel}, load average {load} at start")
}

/// The type and device of the mount holding `path`.
fn filesystem_of(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let device = fields.next()?;
            let point = fields.next()?;
            let kind = fields.next()?;
            path.starts_with(point)
                .then(|| (point.len(), format!("{kind} on {device}")))
        })
        .max()
        .map_or_else(|| "unknown filesystem".into(), |(_, found)| found)
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn micros(duration: Duration) -> String {
    let us = duration.as_secs_f64() * 1e6;
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}
