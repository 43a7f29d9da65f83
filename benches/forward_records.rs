//! Generates stores for the forward benchmark (`scripts/bench.sh --only forward`):
//! `--stores N` stores of `--records M` records each, written through the real store
//! (chained, segmented, checkpointed), shaped like a collector's records of real
//! sessions: `session_start`, kernel info, per cell `execute_request` (with code),
//! `execute_input`, `stream` outputs, now and then an `execute_result` or an `error`,
//! `execute_reply`, and `session_end`; several users per store, several sessions running
//! at once, timestamps spread over a working day.
//!
//! `cargo bench --bench forward_records -- --out DIR [--stores 16] [--records 200000]`
//! writes DIR/store-NN/ and DIR/manifest.json (users, session ids and code markers the
//! queries of benches/forward.py look for). Not a test; not run by `cargo test`.
// A benchmark stops at its first failure, loudly: that is what expect() is for here.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use jupyter_audit::store::{self, StoreConfig};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Users per store (each host has its own).
const USERS: usize = 25;
/// Sessions of one store that run at the same time (their records interleave).
const CONCURRENT: usize = 8;
const CELLS_PER_SESSION: usize = 40;

struct Args {
    out: PathBuf,
    stores: usize,
    records: usize,
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
        out: PathBuf::from(value("--out").expect("--out DIR")),
        stores: value("--stores").map_or(16, |v| v.parse().expect("--stores N")),
        records: value("--records").map_or(200_000, |v| v.parse().expect("--records N")),
    }
}

/// A small deterministic generator (the figures must not depend on a seed per run).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const CODE: &[&str] = &[
    "import pandas as pd\ndf = pd.read_csv('data/sales_{n}.csv')\ndf.head()",
    "import numpy as np\nx = np.random.default_rng({n}).normal(size=(1000, 3))\nprint(x.mean(axis=0), x.std(axis=0))",
    "for epoch in range(10):\n    loss = train_step(model, batch_{n})\n    print(f'epoch {epoch}: loss={loss:.4f}')",
    "def clean(frame):\n    frame = frame.dropna()\n    return frame[frame['amount'] > {n}]\n\nclean(df).describe()",
    "import matplotlib.pyplot as plt\nplt.plot(df['day'], df['revenue_{n}'])\nplt.show()",
    "query = \"SELECT * FROM orders WHERE customer_id = {n}\"\nrows = conn.execute(query).fetchall()\nlen(rows)",
    "model.fit(X_train, y_train)\nscore = model.score(X_test, y_test)\nprint('accuracy', score)",
    "%%time\nresult = expensive_join(left_{n}, right)\nresult.shape",
];

/// One store's simulated sessions.
struct Session {
    id: String,
    kernel: String,
    user: usize,
    pid: u64,
    cell: usize,
    /// How many cells it runs before it ends.
    cells: usize,
    started: bool,
}

struct StoreGen {
    number: usize,
    host: String,
    rng: Rng,
    clock: OffsetDateTime,
    sessions: Vec<Session>,
    session_count: usize,
    markers: Vec<String>,
    session_ids: Vec<(String, String)>,
    /// Every this many sessions, one runs `LONG_SESSION_CELLS` cells (0: never).
    long_every: usize,
}

/// The cells of a long session (the console's benchmark looks one up).
pub const LONG_SESSION_CELLS: usize = 200;

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => unreachable!("an object"),
    }
}

impl StoreGen {
    fn new(number: usize) -> Self {
        StoreGen {
            number,
            host: format!("node-{number:02}"),
            rng: Rng(0x9E37_79B9_7F4A_7C15 ^ (number as u64 + 1)),
            // Each store starts a little later than the one before, so that times of
            // several stores interleave.
            clock: OffsetDateTime::from_unix_timestamp(1_790_000_000 + number as i64 * 7)
                .expect("a time"),
            sessions: Vec::new(),
            session_count: 0,
            markers: Vec::new(),
            session_ids: Vec::new(),
            long_every: 0,
        }
    }

    fn user_name(&self, user: usize) -> String {
        format!("u{:02}{:02}", self.number, user)
    }

    fn new_session(&mut self) -> Session {
        self.session_count += 1;
        let id = uuid::Uuid::new_v4().to_string();
        let user = self.rng.below(USERS);
        self.session_ids.push((id.clone(), self.user_name(user)));
        Session {
            id,
            kernel: uuid::Uuid::new_v4().to_string(),
            user,
            pid: 10_000 + self.session_count as u64,
            cell: 0,
            cells: if self.long_every > 0 && self.session_count.is_multiple_of(self.long_every) {
                LONG_SESSION_CELLS
            } else {
                CELLS_PER_SESSION
            },
            started: false,
        }
    }

    fn stamp(&mut self, session: &Session, action: &str, jupyter: Value) -> Map<String, Value> {
        self.clock += Duration::from_millis(20 + self.rng.below(60) as u64);
        let now = self.clock.format(&Rfc3339).expect("formatted");
        let mut jupyter = object(jupyter);
        jupyter.insert("session_id".into(), json!(session.id));
        jupyter.insert("kernel_id".into(), json!(session.kernel));
        jupyter.insert("kernel_name".into(), json!("python3-audited"));
        object(json!({
            "@timestamp": now,
            "event": {"action": action, "created": now, "ingested": now, "kind": "event"},
            "group": {"id": (20_000 + session.user).to_string()},
            "host": {"name": self.host},
            "jupyter": jupyter,
            "process": {"pid": session.pid},
            "user": {"id": (20_000 + self.number * 100 + session.user).to_string(), "name": self.user_name(session.user)},
        }))
    }

    /// The records of a session's next step (its start, one cell, or its end).
    fn step(&mut self, session: &mut Session) -> Vec<Map<String, Value>> {
        let msg = |s: &Session, n: usize| format!("{}_{}_{n}", &s.id[..8], s.pid);
        if !session.started {
            session.started = true;
            let start = self.stamp(
                session,
                "session_start",
                json!({"kernel_argv": ["python", "-m", "ipykernel_launcher", "-f", "kernel.json"], "kernel_pid": session.pid + 1, "proxy_pid": session.pid, "proxy_version": "0.1.0", "notebook_path": format!("work/analysis-{}.ipynb", session.pid)}),
            );
            return vec![start];
        }
        if session.cell == session.cells {
            return vec![self.stamp(
                session,
                "session_end",
                json!({"exit_code": 0, "exit_signal": null, "orphaned": false}),
            )];
        }
        session.cell += 1;
        let n = self.rng.below(100_000);
        let code = CODE[self.rng.below(CODE.len())].replace("{n}", &n.to_string());
        if self.rng.below(50) == 0
            && let Some(line) = code.lines().find(|line| line.contains(&n.to_string()))
        {
            // A line of code to search for: it names one cell, or a few.
            self.markers.push(line.to_owned());
        }
        let request_id = msg(session, session.cell * 10);
        let mut records = Vec::new();
        records.push(self.stamp(
            session,
            "execute_request",
            json!({
                "allow_stdin": true, "channel": "shell", "claimed_username": "username",
                "client_session": &session.kernel[..18], "code": code, "from": "frontend",
                "msg_id": request_id,
                "request": {"content": {"allow_stdin": true, "code": code, "silent": false, "stop_on_error": true, "store_history": true, "user_expressions": {}},
                            "header": {"date": "2026-09-21T12:00:00.000000Z", "msg_id": request_id, "msg_type": "execute_request", "session": &session.kernel[..18], "username": "username", "version": "5.4"},
                            "metadata": {"cellId": format!("cell-{}", session.cell)}, "parent_header": {}},
                "silent": false, "stop_on_error": true, "store_history": true,
            }),
        ));
        let child = |this: &mut Self, session: &Session, k: usize, action: &str, extra: Value| {
            let mut fields = object(
                json!({"channel": "iopub", "from": "kernel", "msg_id": msg(session, session.cell * 10 + k), "parent_msg_id": request_id}),
            );
            fields.extend(object(extra));
            this.stamp(session, action, Value::Object(fields))
        };
        records.push(child(
            self,
            session,
            1,
            "execute_input",
            json!({"code": code, "execution_count": session.cell}),
        ));
        for k in 0..1 + self.rng.below(3) {
            let text = format!(
                "epoch {k}: loss={:.4} accuracy={:.4} elapsed {:.2} s\n",
                0.5 / (k + 1) as f64,
                0.9,
                3.21
            );
            records.push(child(
                self,
                session,
                2 + k,
                "stream",
                json!({"stream": "stdout", "text": text}),
            ));
        }
        let failed = self.rng.below(20) == 0;
        if failed {
            records.push(child(self, session, 6, "error", json!({"ename": "KeyError", "evalue": "'amount'", "traceback": "KeyError                                  Traceback (most recent call last)\nCell In[3], line 2\n----> 2 clean(df)\nKeyError: 'amount'"})));
        } else if self.rng.below(3) == 0 {
            records.push(child(
                self,
                session,
                6,
                "execute_result",
                json!({"data": {"text/plain": "(1000, 3)"}, "execution_count": session.cell}),
            ));
        }
        let status = if failed { "error" } else { "ok" };
        records.push(child(self, session, 7, "execute_reply", json!({"channel": "shell", "duration_ms": 12.5, "execution_count": session.cell, "status": status})));
        records
    }

    /// The next records of one of the sessions running now.
    fn next_batch(&mut self) -> Vec<Map<String, Value>> {
        while self.sessions.len() < CONCURRENT {
            let session = self.new_session();
            self.sessions.push(session);
        }
        let at = self.rng.below(self.sessions.len());
        let mut session = self.sessions.swap_remove(at);
        let records = self.step(&mut session);
        let ended = records
            .iter()
            .any(|r| r["event"]["action"] == "session_end");
        if !ended {
            self.sessions.push(session);
        }
        records
    }
}

/// Writes store `number` of `records` records into `dir`; every `long_every` sessions
/// one is long (0: none). Returns its manifest.
pub async fn generate(dir: PathBuf, number: usize, records: usize, long_every: usize) -> Value {
    let mut config = StoreConfig::new(&dir);
    config.checkpoint_interval = Duration::from_secs(1);
    let (handle, _) = store::open(config).expect("store opened");
    let mut generator = StoreGen::new(number);
    generator.long_every = long_every;
    let mut written = 0;
    let mut answers = std::collections::VecDeque::new();
    while written < records {
        for record in generator.next_batch() {
            if written == records {
                break;
            }
            answers.push_back(handle.submit(record, false).await);
            written += 1;
            if answers.len() > 8192 {
                answers
                    .pop_front()
                    .expect("queued")
                    .await
                    .expect("answered")
                    .expect("stored");
            }
        }
    }
    for answer in answers {
        answer.await.expect("answered").expect("stored");
    }
    tokio::task::spawn_blocking(move || handle.shutdown_blocking())
        .await
        .expect("joined")
        .expect("shut down");
    json!({
        "dir": dir,
        "host": generator.host,
        "users": (0..USERS).map(|u| generator.user_name(u)).collect::<Vec<_>>(),
        "sessions": generator.session_ids.iter().map(|(id, user)| json!({"id": id, "user": user})).collect::<Vec<_>>(),
        "markers": generator.markers,
    })
}

fn main() {
    let args = args();
    std::fs::create_dir_all(&args.out).expect("out dir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let start = Instant::now();
    let stores = runtime.block_on(async {
        let mut tasks = Vec::new();
        for number in 0..args.stores {
            let dir = args.out.join(format!("store-{number:02}"));
            tasks.push(tokio::spawn(generate(dir, number, args.records, 0)));
        }
        let mut stores = Vec::new();
        for task in tasks {
            stores.push(task.await.expect("generated"));
        }
        stores
    });
    let elapsed = start.elapsed();
    let total = args.stores * args.records;
    std::fs::write(
        args.out.join("manifest.json"),
        serde_json::to_vec_pretty(&json!({"stores": stores})).expect("json"),
    )
    .expect("manifest written");
    println!(
        "generated {total} records in {} stores in {:.1} s ({:.0} records/s)",
        args.stores,
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
}
