//! Claim latency with a large retained history versus an empty table.
//!
//! Run through `cargo xtask bench`, which starts PostgreSQL and MariaDB and runs this
//! once per server, and once on SQLite files. By hand:
//!
//! ```text
//! cargo run -p outbox-sea-orm --example bench_claim -- \
//!     --database-url postgres://postgres@127.0.0.1:5432/postgres [--finished 1000000]
//! ```
//!
//! Method (docs/storage.md has the numbers):
//!
//! 1. Two fresh databases on the same server, created through the admin URL (SQLite:
//!    two files in the directory of `sqlite:DIR`): A keeps no history, B gets
//!    `--finished` published rows, loaded by one `INSERT … SELECT` per 100 000 rows.
//!    Both are vacuumed/analyzed.
//! 2. Both get the same live backlog, written with the real `enqueue`: `--pending`
//!    messages over `--keys` partition keys (a seeded random key per message). The
//!    history uses `--history-keys` keys, which include the live ones, so the per-key
//!    probe meets published rows of the same key.
//! 3. Rounds alternate A, B, A, B…: each is one `claim(--limit)`, timed alone with
//!    `Instant`, then a `settle` of everything claimed as published (not timed). This
//!    runs until the backlog is drained or `--rounds` rounds are done; the final
//!    claim that finds nothing is not counted.
//! 4. The report gives the median and p90 per database and the ratio B/A of the
//!    medians. The exit code is 1 when that ratio exceeds `--max-ratio` (1.5).
//! 5. With `--purge`, retention on B is timed too: one `purge_finished(cutoff, 1000)`
//!    with the cutoff before every `published_at` (deletes nothing; its plan is
//!    printed, `explain_purge`), then one with it after every `published_at` (deletes
//!    the 1000 earliest published rows).
//!
//! The databases are dropped at the end, also when a step fails.

use chrono::Utc;
use outbox_domain::{OutboxMessage, Payload};
use outbox_ports::{ClaimRequest, Disposition, MessageStore, Settlement};
use outbox_sea_orm::{SeaOrmStore, StoreConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend};
use std::process::ExitCode;
use std::time::{Duration, Instant};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "\
bench_claim: claim latency with N finished rows retained (B) versus none (A)

USAGE:
    bench_claim --database-url URL [OPTIONS]

OPTIONS:
    --database-url URL   admin URL of a PostgreSQL or MySQL/MariaDB server, or
                         sqlite:DIR (also BENCH_DATABASE_URL); two databases (files
                         in DIR) are created and dropped
    --finished N         published rows retained in B        [default: 1000000]
    --pending N          live messages enqueued in A and B   [default: 20000]
    --keys N             partition keys of the live messages [default: 2000]
    --history-keys N     partition keys of the history       [default: 100000]
    --limit N            messages per claim                  [default: 100]
    --rounds N           at most this many rounds            [default: until drained]
    --max-ratio X        fail above this median ratio B/A    [default: 1.5]
    --purge              also time purge_finished(cutoff, 1000) on B, once with
                         nothing to delete (and print its plan) and once with a
                         full batch
    --keep               keep the databases (to look at plans), print their names
";

/// The command line.
#[derive(Debug, Clone)]
struct Args {
    database_url: String,
    finished: u64,
    pending: usize,
    keys: usize,
    history_keys: u64,
    limit: usize,
    rounds: Option<usize>,
    max_ratio: f64,
    purge: bool,
    keep: bool,
}

impl Args {
    fn parse() -> Result<Option<Self>, String> {
        let mut args = Self {
            database_url: std::env::var("BENCH_DATABASE_URL").unwrap_or_default(),
            finished: 1_000_000,
            pending: 20_000,
            keys: 2_000,
            history_keys: 100_000,
            limit: 100,
            rounds: None,
            max_ratio: 1.5,
            purge: false,
            keep: false,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            if flag == "-h" || flag == "--help" {
                return Ok(None);
            }
            if flag == "--keep" {
                args.keep = true;
                continue;
            }
            if flag == "--purge" {
                args.purge = true;
                continue;
            }
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => (flag.clone(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| it.next())
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            fn num<T: std::str::FromStr>(name: &str, v: String) -> Result<T, String> {
                v.replace('_', "")
                    .parse()
                    .map_err(|_| format!("{name}: not a number: {v}"))
            }
            match name.as_str() {
                "--database-url" => args.database_url = value()?,
                "--finished" => args.finished = num(&name, value()?)?,
                "--pending" => args.pending = num(&name, value()?)?,
                "--keys" => args.keys = num(&name, value()?)?,
                "--history-keys" => args.history_keys = num(&name, value()?)?,
                "--limit" => args.limit = num(&name, value()?)?,
                "--rounds" => args.rounds = Some(num(&name, value()?)?),
                "--max-ratio" => args.max_ratio = num(&name, value()?)?,
                _ => return Err(format!("unknown argument `{flag}`")),
            }
        }
        if args.database_url.is_empty() {
            return Err("--database-url is required".into());
        }
        if args.keys == 0 || args.limit == 0 || args.pending == 0 || args.history_keys == 0 {
            return Err("--pending, --keys, --history-keys and --limit must be at least 1".into());
        }
        Ok(Some(args))
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match Args::parse() {
        Ok(Some(args)) => args,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The two databases of a run, dropped through the admin connection at the end.
struct Databases {
    admin: DatabaseConnection,
    backend: DbBackend,
    base_url: String,
    names: Vec<String>,
}

impl Databases {
    async fn create(&mut self, name: String) -> Result<String, BoxError> {
        if self.backend == DbBackend::Sqlite {
            let path = format!("{}/{name}.db", self.base_url);
            self.names.push(path.clone());
            self.drop_all().await;
            return Ok(format!("sqlite://{path}?mode=rwc"));
        }
        self.admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await?;
        self.names.push(name.clone());
        Ok(format!("{}/{name}", self.base_url))
    }

    async fn drop_all(&self) {
        for name in &self.names {
            if self.backend == DbBackend::Sqlite {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{name}{suffix}"));
                }
                continue;
            }
            let sql = match self.backend {
                DbBackend::Postgres => format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                _ => format!("DROP DATABASE IF EXISTS {name}"),
            };
            if let Err(e) = self.admin.execute_unprepared(&sql).await {
                eprintln!("warning: could not drop database {name}: {e}");
            }
        }
    }
}

async fn run(args: &Args) -> Result<bool, BoxError> {
    let (admin, base_url) = match args.database_url.strip_prefix("sqlite:") {
        // The directory of the two files; the admin connection only reports the version.
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            (
                outbox_sea_orm::connect("sqlite::memory:").await?,
                dir.to_owned(),
            )
        }
        None => (
            outbox_sea_orm::connect(&args.database_url).await?,
            args.database_url
                .rsplit_once('/')
                .map(|(base, _)| base.to_owned())
                .ok_or("the database URL has no path")?,
        ),
    };
    let backend = admin.get_database_backend();
    let mut dbs = Databases {
        admin,
        backend,
        base_url,
        names: Vec::new(),
    };
    let outcome = bench(args, &mut dbs).await;
    if args.keep {
        println!("kept databases: {}", dbs.names.join(", "));
    } else {
        dbs.drop_all().await;
    }
    dbs.admin.close().await?;
    outcome
}

/// One side of the comparison.
struct Side {
    label: String,
    store: SeaOrmStore,
    latencies: Vec<Duration>,
    claimed: usize,
    drained: bool,
}

async fn bench(args: &Args, dbs: &mut Databases) -> Result<bool, BoxError> {
    let started = Instant::now();
    let version = server_version(&dbs.admin).await?;
    println!("server: {version}");
    println!(
        "finished rows in B: {} over {} keys ({:.0} per key), live backlog: {} messages \
         over {} keys, claim limit {}",
        args.finished,
        args.history_keys,
        args.finished as f64 / args.history_keys as f64,
        args.pending,
        args.keys,
        args.limit
    );

    let pid = std::process::id();
    let mut sides = Vec::new();
    for (label, history) in [("A empty", 0), ("B history", args.finished)] {
        let suffix = if history == 0 { "empty" } else { "history" };
        let url = dbs.create(format!("bench_claim_{pid}_{suffix}")).await?;
        let db = outbox_sea_orm::connect(&url).await?;
        let store = SeaOrmStore::new(db, StoreConfig::default())?;
        store.create_tables().await?;
        let load = Instant::now();
        load_history(&store, history, args.history_keys).await?;
        analyze(&store, true).await?;
        if history > 0 {
            println!(
                "loaded {history} published rows into B in {:.1}s (with vacuum/analyze)",
                load.elapsed().as_secs_f64()
            );
        }
        sides.push(Side {
            label: label.to_owned(),
            store,
            latencies: Vec::new(),
            claimed: 0,
            drained: false,
        });
    }

    // The same backlog, in the same order, on both sides.
    for side in &sides {
        let t = Instant::now();
        enqueue_backlog(&side.store, args).await?;
        analyze(&side.store, false).await?;
        println!(
            "enqueued {} pending messages into {} in {:.1}s",
            args.pending,
            side.label,
            t.elapsed().as_secs_f64()
        );
    }

    let analyze_plan = dbs.backend == DbBackend::Postgres;
    for side in &sides {
        let plan = side.store.explain_claim(args.limit, analyze_plan).await?;
        let kind = if analyze_plan {
            "EXPLAIN (ANALYZE, BUFFERS)"
        } else {
            "EXPLAIN"
        };
        println!(
            "\n{kind} of the claim's candidate query, {}:\n{plan}",
            side.label
        );
    }

    // Every round claims at least one message until the backlog is drained, so the
    // default bound is never reached.
    let rounds = args.rounds.unwrap_or(args.pending + 1);
    let mut round = 0;
    while round < rounds && sides.iter().any(|s| !s.drained) {
        for side in sides.iter_mut().filter(|s| !s.drained) {
            claim_round(side, args.limit).await?;
        }
        round += 1;
    }
    for side in &sides {
        if side.drained && side.claimed != args.pending {
            return Err(format!(
                "{} drained after {} messages, expected {}",
                side.label, side.claimed, args.pending
            )
            .into());
        }
    }

    if sides.iter().any(|s| s.latencies.is_empty()) {
        return Err("no claim was timed: --rounds must be at least 1".into());
    }
    println!("\nclaim latency (A and B alternating, {round} rounds):");
    println!(
        "{:<12} {:>10} {:>8} {:>9} {:>10} {:>10} {:>10}",
        "database", "history", "claims", "claimed", "median", "p90", "max"
    );
    let mut medians = Vec::new();
    for (side, history) in sides.iter().zip([0, args.finished]) {
        let mut l = side.latencies.clone();
        l.sort();
        let (median, p90, max) = (
            percentile(&l, 50),
            percentile(&l, 90),
            l.last().copied().unwrap_or_default(),
        );
        medians.push(median);
        println!(
            "{:<12} {:>10} {:>8} {:>9} {:>10} {:>10} {:>10}",
            side.label,
            history,
            l.len(),
            side.claimed,
            ms(median),
            ms(p90),
            ms(max)
        );
    }
    let ratio = medians[1].as_secs_f64() / medians[0].as_secs_f64().max(f64::MIN_POSITIVE);
    let pass = ratio <= args.max_ratio;
    println!(
        "ratio B/A of the medians: {ratio:.2} (limit {:.2}): {}",
        args.max_ratio,
        if pass { "ok" } else { "FAILED" }
    );
    if args.purge {
        time_purge(&sides[1], args.finished).await?;
    }
    println!("total {:.1}s", started.elapsed().as_secs_f64());
    for side in &sides {
        side.store.connection().clone().close().await?;
    }
    Ok(pass)
}

/// One timed claim and an untimed settle of everything it took.
async fn claim_round(side: &mut Side, limit: usize) -> Result<(), BoxError> {
    let request = ClaimRequest {
        owner: "bench".into(),
        limit,
        lease_for: Duration::from_secs(60),
        now: Utc::now(),
    };
    let t = Instant::now();
    let claimed = side.store.claim(&request).await?;
    let elapsed = t.elapsed();
    if claimed.is_empty() {
        // The claim that finds the backlog drained is not a sample.
        side.drained = true;
        return Ok(());
    }
    side.latencies.push(elapsed);
    side.claimed += claimed.len();
    let settlements = claimed
        .into_iter()
        .map(|c| Settlement {
            id: c.message.id,
            token: c.lease.token,
            disposition: Disposition::Published,
        })
        .collect();
    let report = side.store.settle(settlements, Utc::now()).await?;
    if !report.lease_lost.is_empty() {
        return Err(format!("{}: lost {} leases", side.label, report.lease_lost.len()).into());
    }
    Ok(())
}

/// Times two retention calls of up to 1000 rows on `side`: first with the cutoff before
/// every `published_at` (nothing to delete, the case of a sweep that has caught up), then
/// after every one (a full batch of the oldest rows). `history` rows were loaded; the
/// side's claims published the rest.
async fn time_purge(side: &Side, history: u64) -> Result<(), BoxError> {
    const BATCH: usize = 1000;
    let full = (BATCH as u64).min(history + side.claimed as u64);
    let cases = [
        ("before all", Utc::now() - chrono::Duration::days(2), 0),
        ("after all", Utc::now() + chrono::Duration::seconds(1), full),
    ];
    for (label, cutoff, expected) in cases {
        let t = Instant::now();
        let deleted = side.store.purge_finished(cutoff, BATCH).await?;
        let elapsed = t.elapsed();
        println!(
            "purge_finished(cutoff {label}, {BATCH}) on {}: deleted {deleted} rows in {}",
            side.label,
            ms(elapsed)
        );
        if deleted != expected {
            return Err(format!("purge deleted {deleted} rows, expected {expected}").into());
        }
        if expected == 0 {
            println!(
                "plan of that purge's pick:\n{}",
                side.store.explain_purge(cutoff, BATCH, true).await?
            );
        }
    }
    Ok(())
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    // Nearest rank.
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.3}ms", d.as_secs_f64() * 1e3)
}

async fn server_version(db: &DatabaseConnection) -> Result<String, BoxError> {
    let sql = match db.get_database_backend() {
        DbBackend::Postgres => "SELECT version() AS v",
        DbBackend::Sqlite => "SELECT 'SQLite ' || sqlite_version() AS v",
        _ => "SELECT VERSION() AS v",
    };
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            sql,
        ))
        .await?
        .ok_or("no version row")?;
    Ok(row.try_get::<String>("", "v")?)
}

/// Writes `n` published rows with server-side SQL, 100 000 per statement.
async fn load_history(store: &SeaOrmStore, n: u64, keys: u64) -> Result<(), BoxError> {
    const CHUNK: u64 = 100_000;
    let db = store.connection();
    let table = store.config().table.as_str();
    let columns = "id, service, event_type, topic, partition_key, content_type, payload_json, \
                   headers, schema_version, occurred_at, created_at, status, attempts, \
                   max_attempts, next_attempt_at, published_at";
    let mut start = 1;
    while start <= n {
        let end = (start + CHUNK - 1).min(n);
        // Row g was written g ms after a day ago and published 5 ms later.
        let sql = match db.get_database_backend() {
            DbBackend::Postgres => format!(
                "INSERT INTO {table} ({columns}) \
                 SELECT gen_random_uuid(), 'bench', 'order.created', 'orders.events', \
                 'key-' || (g % {keys}), 'application/json', \
                 jsonb_build_object('order', g, 'amount', g % 1000), '{{}}'::jsonb, 1, \
                 t, t, 'published', 1, 10, t, t + interval '5 milliseconds' \
                 FROM (SELECT g, now() - interval '1 day' + g * interval '1 millisecond' AS t \
                 FROM generate_series({start}, {end}) AS g) s"
            ),
            // Ids in UUID form (history rows are never decoded), times in the store's
            // text form with microseconds.
            DbBackend::Sqlite => format!(
                "WITH RECURSIVE g (n) AS (SELECT {start} UNION ALL SELECT n + 1 FROM g \
                 WHERE n < {end}) INSERT INTO {table} ({columns}) \
                 SELECT printf('00000000-0000-4000-8000-%012d', n), 'bench', 'order.created', \
                 'orders.events', 'key-' || (n % {keys}), 'application/json', \
                 json_object('order', n, 'amount', n % 1000), '{{}}', 1, \
                 t, t, 'published', 1, 10, t, t \
                 FROM (SELECT n, strftime('%Y-%m-%dT%H:%M:%S', 'now', '-1 day', \
                 '+' || (n / 1000) || ' seconds') || printf('.%06dZ', (n % 1000) * 1000) AS t \
                 FROM g)"
            ),
            // MariaDB's Sequence engine: `seq_1_to_N` is a table of the numbers 1..N.
            _ => format!(
                "INSERT INTO {table} ({columns}) \
                 SELECT UNHEX(REPLACE(UUID(), '-', '')), 'bench', 'order.created', \
                 'orders.events', CONCAT('key-', seq % {keys}), 'application/json', \
                 JSON_OBJECT('order', seq, 'amount', seq % 1000), '{{}}', 1, \
                 t, t, 'published', 1, 10, t, t + INTERVAL 5000 MICROSECOND \
                 FROM (SELECT seq, UTC_TIMESTAMP(6) - INTERVAL 1 DAY \
                 + INTERVAL seq * 1000 MICROSECOND AS t FROM seq_{start}_to_{end}) s"
            ),
        };
        db.execute_unprepared(&sql).await?;
        start = end + 1;
    }
    Ok(())
}

/// Fresh planner statistics; with `vacuum` on PostgreSQL also a vacuum, which sets the
/// visibility map as autovacuum would have in steady state.
async fn analyze(store: &SeaOrmStore, vacuum: bool) -> Result<(), BoxError> {
    let db = store.connection();
    let table = store.config().table.as_str();
    match db.get_database_backend() {
        DbBackend::Postgres if vacuum => {
            db.execute_unprepared(&format!("VACUUM ANALYZE {table}"))
                .await?;
        }
        DbBackend::Postgres => {
            db.execute_unprepared(&format!("ANALYZE {table}")).await?;
        }
        DbBackend::Sqlite => {
            db.execute_unprepared(&format!("ANALYZE {table}")).await?;
        }
        backend => {
            // ANALYZE TABLE answers with a result set.
            db.query_all_raw(sea_orm::Statement::from_string(
                backend,
                format!("ANALYZE TABLE {table}"),
            ))
            .await?;
        }
    }
    Ok(())
}

/// `args.pending` messages over `args.keys` keys, in chunks of 500, with the store's own
/// `enqueue`. The key sequence comes from a fixed seed: the same on both sides.
async fn enqueue_backlog(store: &SeaOrmStore, args: &Args) -> Result<(), BoxError> {
    let mut rng = StdRng::seed_from_u64(42);
    let mut remaining = args.pending;
    let mut n = 0u64;
    while remaining > 0 {
        let chunk = remaining.min(500);
        let now = Utc::now();
        let messages = (0..chunk)
            .map(|_| {
                n += 1;
                let key = rng.random_range(0..args.keys);
                OutboxMessage::new(
                    "bench",
                    "order.created",
                    "orders.events",
                    format!("key-{key}"),
                    Payload::Json(serde_json::json!({"order": n, "amount": n % 1000})),
                    now,
                )
            })
            .collect();
        store.enqueue(messages).await?;
        remaining -= chunk;
    }
    Ok(())
}
