//! The console's index on a generated store (issue 14): catch-up rate and the p95 of the
//! queries its pages make.
//!
//! `cargo bench --bench console_index -- [--dir DIR] [--records 1000000] [--runs 200]`
//! writes a store of `--records` records into DIR/store (kept and reused when it is
//! there, with its DIR/manifest.json) with the generator of benches/forward_records.rs
//! (every 25th session runs 200 cells), indexes it from scratch into DIR/index.sqlite,
//! then times: a sessions page (unfiltered, by user, with errors, ended abnormally, a
//! deep page), the cells of a 200-cell session, and code searches (rare markers, and a
//! common term). Prints a table with the targets. Not a test; not run by `cargo test`.
// A benchmark stops at its first failure, loudly: that is what expect() is for here.
#![allow(clippy::expect_used, clippy::unwrap_used)]

#[path = "forward_records.rs"]
#[allow(dead_code)]
mod forward_records;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use jupyter_audit::console::{
    self,
    index::{Index, SessionQuery},
};
use jupyter_audit::review::sessions::{LocalProcesses, SessionKey};
use serde_json::Value;

struct Args {
    dir: PathBuf,
    records: usize,
    runs: usize,
}

fn args() -> Args {
    let argv: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        argv.iter()
            .position(|a| a == name)
            .and_then(|at| argv.get(at + 1))
            .cloned()
    };
    Args {
        dir: value("--dir")
            .map_or_else(|| std::env::temp_dir().join("console-bench"), PathBuf::from),
        records: value("--records").map_or(1_000_000, |v| v.parse().expect("--records N")),
        runs: value("--runs").map_or(200, |v| v.parse().expect("--runs N")),
    }
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let at = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len());
    sorted[at - 1]
}

/// Runs `query` once per input, cycling through `inputs` `runs` times in all; p50, p95.
fn time_query<T>(
    runs: usize,
    inputs: &[T],
    mut query: impl FnMut(&T) -> usize,
) -> (Duration, Duration, usize) {
    let mut times = Vec::with_capacity(runs);
    let mut rows = 0;
    for run in 0..runs {
        let input = &inputs[run % inputs.len()];
        let start = Instant::now();
        rows += query(input);
        times.push(start.elapsed());
    }
    times.sort();
    (
        percentile(&times, 0.5),
        percentile(&times, 0.95),
        rows / runs.max(1),
    )
}

fn ms(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches(" kB")
                        .trim()
                        .parse::<f64>()
                        .ok()
                })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU seconds this process has used (user and system).
fn cpu_seconds() -> f64 {
    let ticks: f64 = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            let after = stat.rsplit_once(')')?.1.to_owned();
            let fields: Vec<&str> = after.split_whitespace().collect();
            Some(fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?)
        })
        .unwrap_or(0.0);
    ticks / 100.0
}

fn main() {
    let args = args();
    let store = args.dir.join("store");
    let manifest_path = args.dir.join("manifest.json");
    std::fs::create_dir_all(&args.dir).expect("bench dir");
    println!(
        "machine: {} cores, load average before {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load()
    );
    if !manifest_path.exists() {
        let _ = std::fs::remove_dir_all(&store);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let start = Instant::now();
        let manifest = runtime.block_on(forward_records::generate(
            store.clone(),
            0,
            args.records,
            25,
        ));
        std::fs::write(&manifest_path, serde_json::to_vec(&manifest).expect("json"))
            .expect("manifest");
        println!(
            "generated {} records in {:.1} s",
            args.records,
            start.elapsed().as_secs_f64()
        );
    }
    let manifest: Value = serde_json::from_slice(&std::fs::read(&manifest_path).expect("manifest"))
        .expect("manifest json");

    let index_path = args.dir.join("index.sqlite");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", index_path.display()));
    }
    let liveness = LocalProcesses::default();
    let mut index = Index::open(&index_path).expect("index opened");
    let start = Instant::now();
    let cpu = cpu_seconds();
    let caught = index.catch_up(&store, &liveness).expect("caught up");
    let elapsed = start.elapsed();
    let cpu = cpu_seconds() - cpu;
    let rate = caught.records as f64 / elapsed.as_secs_f64();
    let start = Instant::now();
    let again = index.catch_up(&store, &liveness).expect("caught up again");
    let idle = start.elapsed();
    assert_eq!(again.records, 0);
    // The database and its write-ahead log (not yet checkpointed into it).
    let index_mb = ["", "-wal"]
        .iter()
        .filter_map(|suffix| std::fs::metadata(format!("{}{suffix}", index_path.display())).ok())
        .map(|m| m.len())
        .sum::<u64>() as f64
        / (1 << 20) as f64;

    let mut rows: Vec<(String, String, String, &str)> = Vec::new();
    rows.push((
        "index catch-up from scratch".into(),
        format!(
            "{} records in {:.2} s",
            caught.records,
            elapsed.as_secs_f64()
        ),
        format!("{rate:.0} records/s"),
        ">= 100000 records/s",
    ));
    rows.push((
        "index catch-up per CPU second".into(),
        format!("{cpu:.2} CPU s"),
        format!("{:.0} records/s", caught.records as f64 / cpu.max(0.01)),
        "",
    ));
    rows.push((
        "catch-up with nothing new".into(),
        String::new(),
        ms(idle),
        "",
    ));

    let users: Vec<String> = manifest["users"]
        .as_array()
        .expect("users")
        .iter()
        .filter_map(|u| u.as_str().map(str::to_owned))
        .collect();
    let page = |query: SessionQuery| index.sessions(&query).expect("sessions page");
    // A deep page: the cursor after 20 pages.
    let mut deep = None;
    for _ in 0..20 {
        deep = page(SessionQuery {
            limit: 50,
            after: deep,
            ..Default::default()
        })
        .next;
    }
    let queries: Vec<(&str, SessionQuery)> = vec![
        (
            "sessions page",
            SessionQuery {
                limit: 50,
                ..Default::default()
            },
        ),
        (
            "sessions page, one user",
            SessionQuery {
                user: users.first().cloned(),
                limit: 50,
                ..Default::default()
            },
        ),
        (
            "sessions page, with errors",
            SessionQuery {
                with_errors: true,
                limit: 50,
                ..Default::default()
            },
        ),
        (
            "sessions page, ended abnormally",
            SessionQuery {
                ended_abnormally: true,
                limit: 50,
                ..Default::default()
            },
        ),
        (
            "sessions page, notebook part",
            SessionQuery {
                notebook: Some("analysis-1".into()),
                limit: 50,
                ..Default::default()
            },
        ),
        (
            "sessions page 21",
            SessionQuery {
                limit: 50,
                after: deep,
                ..Default::default()
            },
        ),
    ];
    let mut worst_page = Duration::ZERO;
    for (name, query) in &queries {
        let (p50, p95, shown) = time_query(args.runs, std::slice::from_ref(query), |q| {
            page(q.clone()).sessions.len()
        });
        worst_page = worst_page.max(p95);
        rows.push((
            name.to_string(),
            format!("{shown} rows, p50 {}", ms(p50)),
            format!("p95 {}", ms(p95)),
            "p95 <= 150 ms",
        ));
    }

    let mut long = Vec::new();
    let mut after = None;
    loop {
        let page = page(SessionQuery {
            limit: 500,
            after,
            ..Default::default()
        });
        long.extend(
            page.sessions
                .iter()
                .filter(|s| s.cells >= forward_records::LONG_SESSION_CELLS as u64)
                .map(|s| s.id),
        );
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert!(!long.is_empty(), "the store has a 200-cell session");
    let (p50, p95, cells) = time_query(args.runs, &long, |id| {
        index.session(*id).expect("session").expect("there");
        index.cells(*id).expect("cells").len()
    });
    rows.push((
        "a 200-cell session (row and cells)".into(),
        format!("{cells} cells, p50 {}", ms(p50)),
        format!("p95 {}", ms(p95)),
        "p95 <= 150 ms",
    ));

    // The session page as an auditor sees it: its row and cells from the index, its
    // outputs read from the store, code and outputs rendered to HTML.
    let (p50, p95, bytes) = time_query(args.runs.min(40), &long, |id| {
        let session = index.session(*id).expect("session").expect("there");
        let cells = index.cells(*id).expect("cells");
        let key = SessionKey {
            session_id: session.session_id.clone(),
            user_id: session.user_id.clone(),
        };
        let first = cells.iter().map(|c| c.first_sequence).min().unwrap_or(1);
        let source = console::ConsoleSource::Store(store.clone());
        let outputs = console::outputs::read(&source, "", &key, first, session.last_sequence)
            .expect("outputs");
        let frame = |sequence: u64| format!("/p/session/{id}/output/{sequence}");
        let mut html = String::new();
        for cell in &cells {
            html.push_str(&console::render::code::to_html(
                cell.code.as_deref().unwrap_or(""),
            ));
            for output in outputs.by_request.get(&cell.msg_id).into_iter().flatten() {
                html.push_str(&console::render::output::render(output, &frame).into_string());
            }
        }
        html.len()
    });
    rows.push((
        "a 200-cell session page with outputs (index, store, HTML)".into(),
        format!("{bytes} bytes of HTML, p50 {}", ms(p50)),
        format!("p95 {}", ms(p95)),
        "p95 <= 150 ms",
    ));

    let markers: Vec<String> = manifest["markers"]
        .as_array()
        .expect("markers")
        .iter()
        .filter_map(|m| m.as_str().map(str::to_owned))
        .collect();
    let (p50, p95, hits) = time_query(args.runs, &markers, |marker| {
        index
            .search_code(
                marker,
                None,
                50,
                &jupyter_audit::console::index::Visibility::All,
            )
            .expect("search")
            .len()
    });
    rows.push((
        format!("code search, a rare line ({} markers)", markers.len()),
        format!("{hits} hits, p50 {}", ms(p50)),
        format!("p95 {}", ms(p95)),
        "p95 <= 500 ms",
    ));
    let common = ["read_csv", "print(", "model.fit", "SELECT * FROM"];
    let (p50, p95, hits) = time_query(args.runs, &common, |term| {
        index
            .search_code(
                term,
                None,
                50,
                &jupyter_audit::console::index::Visibility::All,
            )
            .expect("search")
            .len()
    });
    rows.push((
        "code search, a common term (first 50)".into(),
        format!("{hits} hits, p50 {}", ms(p50)),
        format!("p95 {}", ms(p95)),
        "p95 <= 500 ms",
    ));

    rows.push((
        "index size".into(),
        String::new(),
        format!("{index_mb:.0} MiB"),
        "",
    ));
    rows.push((
        "peak RSS of this process".into(),
        String::new(),
        format!("{:.0} MB", peak_rss_mb()),
        "",
    ));
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    for (name, detail, value, target) in &rows {
        println!("{name:<width$}  {value:>22}  {target:<20}  {detail}");
    }
    println!("load average after: {}", load());
}
