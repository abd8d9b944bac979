//! Scenario 1: what enqueueing adds to a business transaction.
//!
//! Eight writers share one pool of eight connections and run transactions back to
//! back for a fixed time, with synchronous commit on. Each transaction writes one
//! business row, and then nothing more ([`Variant::Alone`]), one message through our
//! [`SeaOrmStore::enqueue_in`] ([`Variant::Enqueue`]), the same outbox row through a
//! hand-written prepared `INSERT` ([`Variant::HandWritten`]), or [`BULK`] messages
//! through `enqueue_in` ([`Variant::Bulk`]). The variants are interleaved in every
//! round, so that drift hits them alike.
//!
//! Apart from the timed runs, each variant's transaction is also run through a small
//! counting proxy that reads the PostgreSQL wire protocol, to count its round trips.

use crate::harness::{self, Chart, Ctx, Db, Dist, Section, TABLE, Target, fmt_num, median};
use anyhow::{Context, Result, bail};
use chrono::Utc;
use outbox_domain::{OutboxMessage, Payload};
use outbox_sea_orm::{SeaOrmStore, StoreConfig};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait, Value};
use serde::Serialize;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Concurrent writers, and connections in their pool.
const WRITERS: usize = 8;
/// Messages per transaction of the bulk variant.
const BULK: usize = 10;
/// The scenario's database.
const DATABASE: &str = "bench_enqueue";
/// The business table.
const ORDERS: &str = "bench_orders";
/// Transactions per variant whose round trips are counted (after as many to warm up).
const COUNTED: u64 = 200;

/// The columns our store writes, in its order (`outbox-sea-orm`'s `INSERT_COLUMNS`).
const OUTBOX_COLUMNS: [&str; 17] = [
    "id",
    "service",
    "event_type",
    "topic",
    "partition_key",
    "content_type",
    "payload_json",
    "payload_bytes",
    "headers",
    "trace_context",
    "schema_version",
    "occurred_at",
    "created_at",
    "status",
    "attempts",
    "max_attempts",
    "next_attempt_at",
];

/// What a transaction writes besides its business row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// Nothing.
    Alone,
    /// One message through `enqueue_in`.
    Enqueue,
    /// The same outbox row through one hand-written prepared `INSERT`.
    HandWritten,
    /// [`BULK`] messages through `enqueue_in`.
    Bulk,
}

impl Variant {
    /// Every variant, in the order of a round.
    const ALL: [Variant; 4] = [
        Variant::Alone,
        Variant::Enqueue,
        Variant::HandWritten,
        Variant::Bulk,
    ];

    /// The name in the report.
    fn label(self) -> String {
        match self {
            Variant::Alone => "alone".into(),
            Variant::Enqueue => "enqueue (1 message)".into(),
            Variant::HandWritten => "hand-written INSERT".into(),
            Variant::Bulk => format!("bulk enqueue ({BULK} messages)"),
        }
    }

    /// Outbox messages per transaction.
    fn messages(self) -> u64 {
        match self {
            Variant::Alone => 0,
            Variant::Enqueue | Variant::HandWritten => 1,
            Variant::Bulk => BULK as u64,
        }
    }
}

/// The message a writer enqueues: the payload every scenario uses.
fn message(key: &str, n: u64) -> OutboxMessage {
    OutboxMessage::new(
        "bench",
        "order.placed",
        "orders",
        key,
        Payload::Json(harness::payload(n)),
        Utc::now(),
    )
}

/// The hand-written insert of `m`: every column our store writes, bound as it binds
/// them, in one prepared statement.
fn hand_written(m: &OutboxMessage, max_attempts: u32) -> Result<Statement> {
    let (json, bytes) = match &m.payload {
        Payload::Json(v) => (Some(Box::new(v.clone())), None),
        Payload::Bytes { data, .. } => (None, Some(data.clone())),
    };
    let values = vec![
        Value::Uuid(Some(m.id.as_uuid())),
        Value::String(Some(m.service.clone())),
        Value::String(Some(m.event_type.clone())),
        Value::String(Some(m.topic.clone())),
        Value::String(Some(m.partition_key.clone())),
        Value::String(Some(m.payload.content_type().to_owned())),
        Value::Json(json),
        Value::Bytes(bytes),
        Value::Json(Some(Box::new(serde_json::to_value(&m.headers)?))),
        Value::Json(
            m.trace_context
                .as_ref()
                .map(serde_json::to_value)
                .transpose()?
                .map(Box::new),
        ),
        Value::BigInt(Some(i64::from(m.schema_version))),
        Value::ChronoDateTimeUtc(Some(m.occurred_at)),
        Value::ChronoDateTimeUtc(Some(m.created_at)),
        Value::String(Some("pending".into())),
        Value::Int(Some(0)),
        Value::Int(Some(i32::try_from(max_attempts)?)),
        Value::ChronoDateTimeUtc(Some(m.created_at)),
    ];
    let placeholders: Vec<String> = (1..=values.len()).map(|i| format!("${i}")).collect();
    Ok(Statement::from_sql_and_values(
        DbBackend::Postgres,
        format!(
            "INSERT INTO {TABLE} ({}) VALUES ({})",
            OUTBOX_COLUMNS.join(", "),
            placeholders.join(", ")
        ),
        values,
    ))
}

/// One business transaction of `variant` by writer `writer`, its `n`th.
async fn transaction(
    pool: &DatabaseConnection,
    store: &SeaOrmStore,
    variant: Variant,
    writer: usize,
    n: u64,
) -> Result<()> {
    let customer = format!("customer-{writer}-{}", n % 125);
    let txn = pool.begin().await.context("BEGIN")?;
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        format!("INSERT INTO {ORDERS} (customer, amount) VALUES ($1, $2)"),
        [
            Value::String(Some(customer.clone())),
            Value::BigInt(Some(i64::try_from(n % 10_000)?)),
        ],
    ))
    .await
    .context("business INSERT")?;
    match variant {
        Variant::Alone => {}
        Variant::Enqueue => {
            store
                .enqueue_in(&txn, vec![message(&customer, n)])
                .await
                .context("enqueue_in")?;
        }
        Variant::HandWritten => {
            txn.execute_raw(hand_written(
                &message(&customer, n),
                store.config().max_attempts,
            )?)
            .await
            .context("hand-written outbox INSERT")?;
        }
        Variant::Bulk => {
            let batch = (0..BULK as u64)
                .map(|i| message(&customer, n * BULK as u64 + i))
                .collect();
            store
                .enqueue_in(&txn, batch)
                .await
                .context("bulk enqueue_in")?;
        }
    }
    txn.commit().await.context("COMMIT")?;
    Ok(())
}

/// What one timed run of a variant gave.
#[derive(Debug, Clone, Copy, Serialize)]
struct Measured {
    /// Committed transactions.
    committed: u64,
    /// Committed transactions per second.
    tps: f64,
    /// Latency from `BEGIN` to `COMMIT`, per transaction.
    latency: Dist,
}

/// `WRITERS` writers run `variant` back to back for `duration`, from empty tables.
/// Checks that every committed transaction left its business row and its messages.
async fn timed_run(
    db: &Db,
    pool: &DatabaseConnection,
    store: &Arc<SeaOrmStore>,
    variant: Variant,
    duration: Duration,
) -> Result<Measured> {
    db.exec(&format!("TRUNCATE {ORDERS}, {TABLE} RESTART IDENTITY"))
        .await?;
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (pool, store) = (pool.clone(), store.clone());
            tokio::spawn(async move {
                let mut samples = Vec::with_capacity(4_096);
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    transaction(&pool, &store, variant, w, n)
                        .await
                        .with_context(|| format!("writer {w}, transaction {n}"))?;
                    samples.push(t.elapsed());
                    n += 1;
                }
                Ok::<_, anyhow::Error>(samples)
            })
        })
        .collect();
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await.context("a writer panicked")??);
    }
    let elapsed = started.elapsed();
    let committed = samples.len() as u64;
    let orders = db.scalar(&format!("SELECT COUNT(*) FROM {ORDERS}")).await?;
    let messages = db
        .scalar(&format!(
            "SELECT COUNT(*) FROM {TABLE} WHERE status = 'pending'"
        ))
        .await?;
    let want = committed * variant.messages();
    if u64::try_from(orders).ok() != Some(committed) || u64::try_from(messages).ok() != Some(want) {
        bail!(
            "{}: {committed} transactions committed, but the tables hold {orders} business \
             rows (want {committed}) and {messages} messages (want {want})",
            variant.label()
        );
    }
    Ok(Measured {
        committed,
        tps: committed as f64 / elapsed.as_secs_f64(),
        latency: Dist::of(&samples),
    })
}

/// Runs scenario 1.
pub(crate) async fn run(ctx: &Ctx) -> Result<()> {
    let plan = ctx.plan();
    let duration = Duration::from_secs(ctx.size(10, 1));
    let db = ctx.fresh_db(DATABASE).await?;
    db.exec(&format!(
        "ALTER DATABASE {DATABASE} SET synchronous_commit = on"
    ))
    .await?;
    db.exec(&format!(
        "CREATE TABLE {ORDERS} (id BIGSERIAL PRIMARY KEY, customer TEXT NOT NULL, \
         amount BIGINT NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    ))
    .await?;
    // Connected after the ALTER, so every writer connection has the setting.
    let pool = db.pool(WRITERS as u32).await?;
    let sync_commit = show(&pool, "synchronous_commit").await?;
    if sync_commit != "on" {
        bail!("synchronous_commit is {sync_commit:?} on the writers' connections, not \"on\"");
    }
    let store = Arc::new(SeaOrmStore::new(pool.clone(), StoreConfig::default())?);

    let mut measured: Vec<Vec<Measured>> = vec![Vec::new(); Variant::ALL.len()];
    for round in 0..plan.warmup + plan.runs {
        let warmup = round < plan.warmup;
        for (i, variant) in Variant::ALL.into_iter().enumerate() {
            let m = timed_run(&db, &pool, &store, variant, duration)
                .await
                .with_context(|| format!("enqueue, {}, round {}", variant.label(), round + 1))?;
            eprintln!(
                "  enqueue {} {}: {} TPS, p50 {:.2} ms, p99 {:.2} ms",
                variant.label(),
                if warmup {
                    "warm-up".to_owned()
                } else {
                    format!("run {}", round - plan.warmup + 1)
                },
                fmt_num(m.tps),
                m.latency.p50,
                m.latency.p99
            );
            if !warmup {
                measured[i].push(m);
            }
        }
    }
    pool.close().await?;

    let round_trips = match wire::count_all(&db).await {
        Ok(counts) => Some(counts),
        Err(e) => {
            eprintln!("  enqueue: round trips not counted: {e:#}");
            None
        }
    };

    let tps: Vec<f64> = measured
        .iter()
        .map(|runs| median(&runs.iter().map(|m| m.tps).collect::<Vec<_>>()))
        .collect();
    let p50: Vec<f64> = measured
        .iter()
        .map(|runs| median(&runs.iter().map(|m| m.latency.p50).collect::<Vec<_>>()))
        .collect();
    let p99: Vec<f64> = measured
        .iter()
        .map(|runs| median(&runs.iter().map(|m| m.latency.p99).collect::<Vec<_>>()))
        .collect();
    let alone = tps[0];

    let mut table = String::from(
        "| Variant | TPS (median) | vs alone | messages/s | p50 ms | p99 ms | runs (TPS) |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for (i, variant) in Variant::ALL.into_iter().enumerate() {
        let messages = if variant.messages() == 0 {
            "–".to_owned()
        } else {
            fmt_num(tps[i] * variant.messages() as f64)
        };
        table.push_str(&format!(
            "| {} | {} | {:.2}× | {messages} | {:.2} | {:.2} | {} |\n",
            variant.label(),
            fmt_num(tps[i]),
            tps[i] / alone,
            p50[i],
            p99[i],
            measured[i]
                .iter()
                .map(|m| fmt_num(m.tps))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }

    let mut section = Section::new(
        ctx,
        "enqueue",
        "1. Enqueue overhead (synchronous commit on, 8 writers)",
    );
    section.markdown = format!(
        "{WRITERS} writers share one pool of {WRITERS} connections and run transactions back \
         to back for {secs} s per run, with `synchronous_commit = on` (checked on the \
         writers' connections). Every transaction inserts one row into a business table \
         `{ORDERS}` and then: nothing (*alone*); one message through \
         `SeaOrmStore::enqueue_in` (*enqueue*); the same outbox row through one \
         hand-written prepared `INSERT` of every column our store writes, with bound values \
         (*hand-written*); {BULK} messages through `enqueue_in` (*bulk*). Messages carry \
         the payload of every scenario (about 90 bytes of JSON). TPS counts committed \
         transactions over the wall time of the run; latency is `BEGIN` to `COMMIT` of one \
         transaction. Tables are truncated before every run; the four variants are \
         interleaved in every round; medians of {runs} run(s) after {warmup} warm-up round(s) \
         (latencies: the median of each run's percentile).\n\n{table}\n{trips}",
        secs = duration.as_secs(),
        runs = plan.runs,
        warmup = plan.warmup,
        trips = wire::markdown(round_trips.as_deref()),
    );
    section.targets.push(Target::ratio(
        "enqueue vs hand-written INSERT",
        tps[1],
        tps[2],
        0.9,
        false,
        "TPS",
    ));
    section.targets.push(bulk_target(round_trips.as_deref()));
    let rows: Vec<_> = Variant::ALL
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            json!({
                "variant": v.label(),
                "messages_per_transaction": v.messages(),
                "runs": measured[i],
                "median_tps": tps[i],
                "median_p50_ms": p50[i],
                "median_p99_ms": p99[i],
                "ratio_to_alone": tps[i] / alone,
                "round_trips": round_trips.as_ref().and_then(|c| c.get(i)),
            })
        })
        .collect();
    section.data = json!({
        "writers": WRITERS,
        "seconds_per_run": duration.as_secs(),
        "bulk": BULK,
        "synchronous_commit": sync_commit,
        "plan": plan,
        "variants": rows,
    });
    let groups: Vec<String> = Variant::ALL.iter().map(|v| v.label()).collect();
    section.charts.push(Chart {
        name: "tps".into(),
        title: format!("Business transactions per second, {WRITERS} writers"),
        unit: "TPS".into(),
        groups: groups.clone(),
        series: vec![("TPS".into(), tps)],
    });
    section.charts.push(Chart {
        name: "latency".into(),
        title: "Transaction latency, BEGIN to COMMIT".into(),
        unit: "ms".into(),
        groups,
        series: vec![("p50".into(), p50), ("p99".into(), p99)],
    });
    section.write(&ctx.out)
}

/// The bulk path's target: `BULK` messages in one `INSERT`, with no round trip per
/// message (the bulk transaction makes as many round trips as the one-message one).
fn bulk_target(counts: Option<&[wire::RoundTrips]>) -> Target {
    let what = format!("bulk enqueue: {BULK} messages in one round trip");
    let goal = "1 INSERT, no round trip per message".to_owned();
    let (Some(alone), Some(one), Some(bulk)) = (
        counts.and_then(|c| c.first()),
        counts.and_then(|c| c.get(1)),
        counts.and_then(|c| c.get(3)),
    ) else {
        return Target {
            what,
            goal,
            measured: "not counted".into(),
            met: false,
        };
    };
    let enqueue_in = bulk.total - alone.total;
    Target {
        what,
        goal,
        measured: format!(
            "{:.0} INSERT for {BULK} messages; `enqueue_in` makes {enqueue_in:.0} round trips \
             for {BULK} messages, {:.0} for 1",
            bulk.outbox_statements,
            one.total - alone.total
        ),
        met: (bulk.outbox_statements - 1.0).abs() < 0.01 && (bulk.total - one.total).abs() < 0.01,
    }
}

/// `SHOW name` on `conn`.
async fn show(conn: &DatabaseConnection, name: &str) -> Result<String> {
    let row = conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            format!("SHOW {name}"),
        ))
        .await?
        .with_context(|| format!("SHOW {name} returned no row"))?;
    Ok(row.try_get_by_index::<String>(0)?)
}

/// Round trips counted on the wire: a proxy between one connection and the server
/// reads the client's side of the PostgreSQL protocol. Every round trip ends with a
/// message the client then waits on: a simple `Query`, or a `Sync` (closing a prepared
/// statement's `Parse`/`Bind`/`Execute`, or alone: the pool's ping before it hands out
/// a connection).
mod wire {
    use super::{COUNTED, Variant, transaction};
    use crate::harness::{self, Db};
    use anyhow::{Context, Result, bail};
    use outbox_sea_orm::{SeaOrmStore, StoreConfig};
    use serde::Serialize;
    use std::io::{ErrorKind, Read, Write};
    use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::thread;
    use std::time::Duration;

    /// Round trips of one variant's transaction, averaged over [`COUNTED`] of them.
    #[derive(Debug, Clone, Copy, Default, Serialize)]
    pub(super) struct RoundTrips {
        /// All of them.
        pub(super) total: f64,
        /// Simple-protocol statements: `BEGIN`, `SAVEPOINT`, `RELEASE`, `COMMIT`.
        pub(super) simple: f64,
        /// Prepared statements executed (`Bind`/`Execute`, then `Sync`).
        pub(super) prepared: f64,
        /// Of which `INSERT`s into the outbox table.
        pub(super) outbox_statements: f64,
        /// The pool's pings (a `Sync` alone) before it hands out a connection.
        pub(super) pings: f64,
        /// Statements parsed (prepared anew) per transaction: 0 once the per-connection
        /// statement cache is warm.
        pub(super) parses: f64,
    }

    /// Counts of client messages since the proxy started.
    #[derive(Debug, Default)]
    struct Counts {
        simple: AtomicU64,
        prepared: AtomicU64,
        outbox: AtomicU64,
        pings: AtomicU64,
        parses: AtomicU64,
    }

    impl Counts {
        fn snapshot(&self) -> [u64; 5] {
            [
                &self.simple,
                &self.prepared,
                &self.outbox,
                &self.pings,
                &self.parses,
            ]
            .map(|c| c.load(Ordering::SeqCst))
        }
    }

    /// The client side of one connection, message by message.
    #[derive(Debug, Default)]
    struct Parser {
        /// Bytes not yet making a whole message.
        buf: Vec<u8>,
        /// Past the start-up messages (which have no type byte).
        started: bool,
        /// Messages since the last `Sync` or `Query`.
        pending: bool,
        /// Whether a statement since the last `Sync` inserts into the outbox table
        /// (seen in its `Parse`, or known from an earlier one of the same name).
        outbox: bool,
        /// Names of prepared statements that insert into the outbox table.
        outbox_names: Vec<Vec<u8>>,
    }

    impl Parser {
        /// Reads `bytes`, counting every whole message.
        fn feed(&mut self, bytes: &[u8], counts: &Counts) {
            self.buf.extend_from_slice(bytes);
            let mut at = 0;
            loop {
                let rest = &self.buf[at..];
                if !self.started {
                    // Length (4 bytes, itself included), then a request code.
                    let Some(len) = be32(rest, 0) else { break };
                    let Some(code) = be32(rest, 4) else { break };
                    if rest.len() < len {
                        break;
                    }
                    // SSLRequest and GSSENCRequest come before the StartupMessage.
                    self.started = code != 80_877_103 && code != 80_877_104;
                    at += len;
                } else {
                    // A type byte, then a length (4 bytes, itself included).
                    let Some(len) = be32(rest, 1) else { break };
                    if rest.len() < 1 + len {
                        break;
                    }
                    let body = rest[5..1 + len].to_vec();
                    self.message(rest[0], &body, counts);
                    at += 1 + len;
                }
            }
            self.buf.drain(..at);
        }

        fn message(&mut self, kind: u8, body: &[u8], counts: &Counts) {
            let mut parts = body.split(|b| *b == 0);
            match kind {
                b'Q' => {
                    counts.simple.fetch_add(1, Ordering::SeqCst);
                    self.pending = false;
                }
                b'S' => {
                    let counter = if self.pending {
                        &counts.prepared
                    } else {
                        &counts.pings
                    };
                    counter.fetch_add(1, Ordering::SeqCst);
                    if self.outbox {
                        counts.outbox.fetch_add(1, Ordering::SeqCst);
                    }
                    self.pending = false;
                    self.outbox = false;
                }
                b'P' => {
                    counts.parses.fetch_add(1, Ordering::SeqCst);
                    let name = parts.next().unwrap_or_default().to_vec();
                    let sql = String::from_utf8_lossy(parts.next().unwrap_or_default());
                    if is_outbox_insert(&sql) {
                        self.outbox = true;
                        if !name.is_empty() {
                            self.outbox_names.push(name);
                        }
                    }
                    self.pending = true;
                }
                b'B' => {
                    // Portal name, then statement name.
                    let _portal = parts.next();
                    let name = parts.next().unwrap_or_default();
                    if self.outbox_names.iter().any(|n| n == name) {
                        self.outbox = true;
                    }
                    self.pending = true;
                }
                b'X' => {}
                _ => self.pending = true,
            }
        }
    }

    /// Whether `sql` inserts into the outbox table: a plain `INSERT`, or the store's
    /// `WITH v (…) AS (VALUES …) INSERT INTO outbox_messages …` on PostgreSQL.
    fn is_outbox_insert(sql: &str) -> bool {
        let sql = sql.trim_start().to_ascii_lowercase();
        let insert = format!("insert into {} ", harness::TABLE);
        sql.starts_with(&insert)
            || (sql.starts_with("with ") && sql.contains(&format!(") {insert}")))
    }

    /// The big-endian `u32` at `at`, as a length.
    fn be32(bytes: &[u8], at: usize) -> Option<usize> {
        let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        usize::try_from(u32::from_be_bytes(b)).ok()
    }

    /// A TCP proxy to the server that counts the client's messages.
    struct Proxy {
        addr: SocketAddr,
        counts: Arc<Counts>,
        stop: Arc<AtomicBool>,
    }

    impl Proxy {
        fn start(upstream: SocketAddr) -> Result<Self> {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            listener.set_nonblocking(true)?;
            let addr = listener.local_addr()?;
            let counts = Arc::new(Counts::default());
            let stop = Arc::new(AtomicBool::new(false));
            let (c, s) = (counts.clone(), stop.clone());
            thread::spawn(move || {
                while !s.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            if let Err(e) = pump(client, upstream, c.clone()) {
                                eprintln!("  round-trip proxy: {e:#}");
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(5));
                        }
                        Err(_) => break,
                    }
                }
            });
            Ok(Self { addr, counts, stop })
        }
    }

    impl Drop for Proxy {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
        }
    }

    /// Relays one client connection to `upstream`, counting what the client sends.
    fn pump(client: TcpStream, upstream: SocketAddr, counts: Arc<Counts>) -> Result<()> {
        client.set_nonblocking(false)?;
        let server = TcpStream::connect(upstream)?;
        for s in [&client, &server] {
            s.set_nodelay(true)?;
        }
        let (mut from_server, mut to_client) = (server.try_clone()?, client.try_clone()?);
        thread::spawn(move || {
            let _ = std::io::copy(&mut from_server, &mut to_client);
            let _ = to_client.shutdown(Shutdown::Both);
        });
        let (mut from_client, mut to_server) = (client, server);
        thread::spawn(move || {
            let mut parser = Parser::default();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match from_client.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        parser.feed(&buf[..n], &counts);
                        if to_server.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = to_server.shutdown(Shutdown::Both);
        });
        Ok(())
    }

    /// The server's address in `url` (`scheme://[user[:password]@]host[:port]/…`), and
    /// `url` pointed at `local` instead, without TLS (the proxy reads plain text).
    fn redirect(url: &str, local: SocketAddr) -> Result<(SocketAddr, String)> {
        let start = url.find("://").context("a database URL has a scheme")? + 3;
        let end = url[start..]
            .find(['/', '?'])
            .map_or(url.len(), |i| start + i);
        let authority = &url[start..end];
        let host_at = authority.rfind('@').map_or(0, |i| i + 1);
        let host = &authority[host_at..];
        if host.is_empty() {
            bail!("the database URL names no host (a Unix socket?)");
        }
        let with_port = if host.ends_with(']') || !host.contains(':') {
            format!("{host}:5432")
        } else {
            host.to_owned()
        };
        let upstream = with_port
            .to_socket_addrs()?
            .next()
            .with_context(|| format!("{with_port} resolves to no address"))?;
        let mut proxied = format!("{}{local}{}", &url[..start + host_at], &url[end..]);
        proxied.push_str(if proxied.contains('?') { "&" } else { "?" });
        proxied.push_str("sslmode=disable");
        Ok((upstream, proxied))
    }

    /// Counts the round trips of every variant's transaction, one connection through
    /// the proxy, after as many transactions to warm the statement cache.
    pub(super) async fn count_all(db: &Db) -> Result<Vec<RoundTrips>> {
        let mut out = Vec::new();
        for variant in Variant::ALL {
            // A proxy per variant: its counts are this variant's alone.
            let (upstream, _) = redirect(&db.url, SocketAddr::from(([127, 0, 0, 1], 0)))?;
            let proxy = Proxy::start(upstream)?;
            let (_, url) = redirect(&db.url, proxy.addr)?;
            let pool = harness::connect(&url, 1).await?;
            let store = SeaOrmStore::new(pool.clone(), StoreConfig::default())?;
            for n in 0..COUNTED {
                transaction(&pool, &store, variant, 0, n).await?;
            }
            let before = proxy.counts.snapshot();
            for n in COUNTED..2 * COUNTED {
                transaction(&pool, &store, variant, 0, n).await?;
            }
            let after = proxy.counts.snapshot();
            pool.close().await?;
            let per = |i: usize| (after[i] - before[i]) as f64 / COUNTED as f64;
            let (simple, prepared, pings) = (per(0), per(1), per(3));
            out.push(RoundTrips {
                total: simple + prepared + pings,
                simple,
                prepared,
                outbox_statements: per(2),
                pings,
                parses: per(4),
            });
        }
        Ok(out)
    }

    /// The paragraph of the report on round trips.
    pub(super) fn markdown(counts: Option<&[RoundTrips]>) -> String {
        let Some(counts) = counts else {
            return "Round trips per transaction: not counted in this run (see the log).\n".into();
        };
        let mut out = format!(
            "Round trips per transaction, counted on the wire: one connection through a \
             proxy that reads the client's side of the protocol, over {COUNTED} transactions \
             of each variant after {COUNTED} to warm the statement cache. A round trip ends \
             with a simple-protocol `Query` (`BEGIN`, `SAVEPOINT`, `RELEASE SAVEPOINT`, \
             `COMMIT`) or a `Sync` (a prepared statement's `Bind`/`Execute`; a `Sync` alone \
             is the pool's ping before it hands out a connection).\n\n\
             | Variant | round trips | simple (BEGIN, SAVEPOINT, …) | prepared | of which outbox INSERT | pool ping | new prepares |\n\
             |---|---|---|---|---|---|---|\n"
        );
        for (v, c) in Variant::ALL.into_iter().zip(counts) {
            out.push_str(&format!(
                "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
                v.label(),
                c.total,
                c.simple,
                c.prepared,
                c.outbox_statements,
                c.pings,
                c.parses
            ));
        }
        // Pings make the averages differ by a fraction; a savepoint costs whole trips.
        if let (Some(e), Some(h)) = (counts.get(1), counts.get(2))
            && e.total - h.total >= 0.5
        {
            out.push_str(&format!(
                "\n`enqueue_in` costs {:.0} more round trip(s) than the hand-written INSERT: \
                 on PostgreSQL it wraps its INSERT in a savepoint (`SAVEPOINT` … \
                 `RELEASE SAVEPOINT`), so that a duplicate id leaves the caller's transaction \
                 usable.\n",
                e.total - h.total
            ));
        }
        out
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn typed(kind: u8, body: &[u8]) -> Vec<u8> {
            let mut m = vec![kind];
            m.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
            m.extend_from_slice(body);
            m
        }

        fn untyped(code: u32, rest: &[u8]) -> Vec<u8> {
            let mut m = u32::try_from(rest.len() + 8)
                .unwrap()
                .to_be_bytes()
                .to_vec();
            m.extend_from_slice(&code.to_be_bytes());
            m.extend_from_slice(rest);
            m
        }

        #[test]
        fn the_parser_counts_round_trips_across_split_reads() {
            let mut stream = untyped(80_877_103, b"");
            stream.extend(untyped(196_608, b"user\0postgres\0\0"));
            stream.extend(typed(b'S', b"")); // a ping
            stream.extend(typed(b'Q', b"BEGIN\0"));
            stream.extend(typed(
                b'P',
                b"sqlx_s_1\0INSERT INTO outbox_messages (id) VALUES ($1)\0\0\0",
            ));
            stream.extend(typed(b'D', b"Ssqlx_s_1\0"));
            stream.extend(typed(b'S', b""));
            stream.extend(typed(b'B', b"\0sqlx_s_1\0\0\0\0\0\0\0"));
            stream.extend(typed(b'E', b"\0\0\0\0\0"));
            stream.extend(typed(b'S', b""));
            stream.extend(typed(b'B', b"\0sqlx_s_2\0\0\0\0\0\0\0"));
            stream.extend(typed(b'E', b"\0\0\0\0\0"));
            stream.extend(typed(b'S', b""));
            stream.extend(typed(b'Q', b"COMMIT\0"));
            let counts = Counts::default();
            let mut parser = Parser::default();
            for chunk in stream.chunks(3) {
                parser.feed(chunk, &counts);
            }
            // simple, prepared, outbox, pings, parses
            assert_eq!(counts.snapshot(), [2, 3, 2, 1, 1]);
            assert!(parser.buf.is_empty());
        }

        #[test]
        fn urls_are_pointed_at_the_proxy() {
            let local: SocketAddr = "127.0.0.1:4000".parse().unwrap();
            let (up, url) = redirect("postgres://u:p@127.0.0.1:55434/db?x=1", local).unwrap();
            assert_eq!(up, "127.0.0.1:55434".parse().unwrap());
            assert_eq!(url, "postgres://u:p@127.0.0.1:4000/db?x=1&sslmode=disable");
            let (up, url) = redirect("postgres://127.0.0.1/db", local).unwrap();
            assert_eq!(up.port(), 5432);
            assert_eq!(url, "postgres://127.0.0.1:4000/db?sslmode=disable");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hand_written_insert_binds_every_column() {
        let m = message("k", 1);
        let s = hand_written(&m, 10).unwrap();
        assert_eq!(
            s.values.as_ref().map(|v| v.0.len()),
            Some(OUTBOX_COLUMNS.len())
        );
        assert!(
            s.sql
                .starts_with("INSERT INTO outbox_messages (id, service, event_type")
        );
        assert!(s.sql.ends_with("$16, $17)"));
    }
}
