//! What every scenario shares: fresh databases, backlog fills, repeated runs, and the
//! section each scenario writes for the report.

use anyhow::{Context, Result, bail};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection};
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The table every scenario measures: the default outbox table.
pub(crate) const TABLE: &str = outbox_migrations::schema::OUTBOX_TABLE;

/// Where a scenario runs and what it writes.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    /// The server's URL (any database on it: scenarios create their own).
    pub(crate) url: String,
    /// Smaller backlogs and fewer runs (`cargo xtask bench --quick`).
    pub(crate) quick: bool,
    /// Where sections, JSON and charts go (`target/bench`).
    pub(crate) out: PathBuf,
}

impl Ctx {
    /// Warm-up and measured runs: a median of 3 after one warm-up, or a single run with
    /// `--quick` (which must finish in under 3 minutes in all).
    pub(crate) fn plan(&self) -> Plan {
        if self.quick {
            Plan { warmup: 0, runs: 1 }
        } else {
            Plan { warmup: 1, runs: 3 }
        }
    }

    /// `full` normally, `quick` with `--quick`.
    pub(crate) fn size(&self, full: u64, quick: u64) -> u64 {
        if self.quick { quick } else { full }
    }

    /// A fresh database called `name` on the server (dropped first if it exists), with
    /// the outbox schema migrated into it.
    pub(crate) async fn fresh_db(&self, name: &str) -> Result<Db> {
        let admin = connect(&self.url, 1).await?;
        admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .with_context(|| format!("could not drop database {name}"))?;
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("could not create database {name}"))?;
        admin.close().await?;
        let url = with_database(&self.url, name)?;
        let conn = connect(&url, 8).await?;
        use outbox_migrations::MigratorTrait;
        outbox_migrations::Migrator::up(&conn, None)
            .await
            .context("could not migrate the bench database")?;
        Ok(Db { url, conn })
    }
}

/// A scenario's own database.
#[derive(Debug, Clone)]
pub(crate) struct Db {
    /// Its URL.
    pub(crate) url: String,
    /// A pool of 8 connections to it, for set-up and checks.
    pub(crate) conn: DatabaseConnection,
}

impl Db {
    /// A separate pool of `max` connections to the same database, as another host's
    /// process would have.
    pub(crate) async fn pool(&self, max: u32) -> Result<DatabaseConnection> {
        connect(&self.url, max).await
    }

    /// Runs statements one by one.
    pub(crate) async fn exec(&self, sql: &str) -> Result<()> {
        self.conn
            .execute_unprepared(sql)
            .await
            .with_context(|| format!("statement failed: {sql}"))?;
        Ok(())
    }

    /// One `i64` from a query's first row and column.
    pub(crate) async fn scalar(&self, sql: &str) -> Result<i64> {
        let row = self
            .conn
            .query_one_raw(sea_orm::Statement::from_string(
                self.conn.get_database_backend(),
                sql.to_owned(),
            ))
            .await
            .with_context(|| format!("query failed: {sql}"))?
            .with_context(|| format!("no row: {sql}"))?;
        Ok(row.try_get_by_index::<i64>(0)?)
    }

    /// Deletes every outbox row and vacuums, so the next run starts from the same table.
    pub(crate) async fn empty_outbox(&self) -> Result<()> {
        self.exec(&format!("TRUNCATE {TABLE}")).await?;
        self.exec(&format!("VACUUM ANALYZE {TABLE}")).await
    }

    /// Writes `n` pending messages spread round-robin over `keys` keys, in one
    /// `INSERT … SELECT` (the backlog a relay then drains). Payload: a small JSON
    /// object (about 90 bytes), the same for the peers. Then `VACUUM ANALYZE`s it
    /// unless `analyze` is false.
    pub(crate) async fn fill_pending(&self, n: u64, keys: u64, analyze: bool) -> Result<()> {
        self.fill(n, keys, "pending", "NULL").await?;
        if analyze {
            self.exec(&format!("VACUUM ANALYZE {TABLE}")).await?;
        }
        Ok(())
    }

    /// Writes `n` published messages: the finished history a retention policy keeps.
    pub(crate) async fn fill_published(&self, n: u64, keys: u64) -> Result<()> {
        // In chunks of 500k rows, so one statement never holds gigabytes of WAL.
        let mut left = n;
        while left > 0 {
            let chunk = left.min(500_000);
            self.fill(chunk, keys, "published", "now()").await?;
            left -= chunk;
        }
        Ok(())
    }

    async fn fill(&self, n: u64, keys: u64, status: &str, published_at: &str) -> Result<()> {
        if keys == 0 {
            bail!("a backlog needs at least one key");
        }
        self.exec(&format!(
            "INSERT INTO {TABLE} (id, service, event_type, topic, partition_key, content_type, \
             payload_json, headers, schema_version, occurred_at, created_at, status, attempts, \
             max_attempts, next_attempt_at, published_at) \
             SELECT {id}, 'bench', 'bench.event', 'bench', 'key-' || (g % {keys}), \
             'application/json', {payload}, '{{}}'::jsonb, 1, now(), now(), '{status}', 0, 10, \
             now(), {published_at} FROM generate_series(1, {n}) g",
            id = UUID_V7_SQL,
            payload = payload_sql("g"),
        ))
        .await
    }
}

/// A time-ordered UUID (version 7 layout: milliseconds since the epoch, then random
/// bits) in SQL, as `MessageId::new_v7` makes them: consecutive rows' ids sit side by
/// side in the `id` index, as the library's do. (Random version-4 ids would scatter
/// every update's index entry over the whole index, a cost users of the library do not
/// pay.) PostgreSQL 15 has no `uuidv7()`.
const UUID_V7_SQL: &str = "(lpad(to_hex(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint), \
    12, '0') || '7' || substr(md5(random()::text), 1, 3) || '8' || \
    substr(md5(random()::text), 1, 15))::uuid";

/// The payload every scenario and peer writes, as SQL over the integer `n`: about
/// 90 bytes of JSON.
pub(crate) fn payload_sql(n: &str) -> String {
    format!("jsonb_build_object('n', {n}, 'order', 'order-' || {n}, 'pad', repeat('x', 48))")
}

/// The same payload as a JSON value.
pub(crate) fn payload(n: u64) -> Value {
    serde_json::json!({ "n": n, "order": format!("order-{n}"), "pad": "x".repeat(48) })
}

/// A pool of at most `max` connections to `url`.
pub(crate) async fn connect(url: &str, max: u32) -> Result<DatabaseConnection> {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(max)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(10))
        // As `outbox_sea_orm::connect` does: no ping on every checkout.
        .test_before_acquire_if_idle_for(Duration::from_secs(30))
        .sqlx_logging(false);
    Database::connect(options)
        .await
        .with_context(|| format!("could not connect to {url}"))
}

/// `url` with its database (path) replaced by `name`.
pub(crate) fn with_database(url: &str, name: &str) -> Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").context("a database URL has a scheme")? + 3;
    let path_start = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{name}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

/// How many times a scenario runs a measurement.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Plan {
    /// Runs thrown away first.
    pub(crate) warmup: usize,
    /// Runs measured; the report gives their median.
    pub(crate) runs: usize,
}

impl Plan {
    /// Runs `run` `warmup + runs` times (its argument says whether the run is a
    /// warm-up) and returns the measured runs' results, in order.
    pub(crate) async fn measure<T, F, Fut>(&self, label: &str, mut run: F) -> Result<Vec<T>>
    where
        T: Headline,
        F: FnMut(bool) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        for _ in 0..self.warmup {
            run(true)
                .await
                .with_context(|| format!("{label}: warm-up"))?;
        }
        let mut values = Vec::with_capacity(self.runs);
        for i in 0..self.runs {
            let v = run(false)
                .await
                .with_context(|| format!("{label}: run {}", i + 1))?;
            eprintln!("  {label}: run {}: {}", i + 1, fmt_num(v.headline()));
            values.push(v);
        }
        Ok(values)
    }
}

/// The one figure of a run that progress lines show.
pub(crate) trait Headline {
    /// E.g. events per second.
    fn headline(&self) -> f64;
}

impl Headline for f64 {
    fn headline(&self) -> f64 {
        *self
    }
}

/// The median of `values` (the mean of the middle two for an even count).
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Latency percentiles in milliseconds (nearest rank).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Dist {
    /// Samples.
    pub(crate) count: usize,
    /// Median.
    pub(crate) p50: f64,
    /// 99th percentile.
    pub(crate) p99: f64,
    /// 99.9th percentile.
    pub(crate) p999: f64,
}

impl Dist {
    /// Of `samples`, each a duration.
    pub(crate) fn of(samples: &[Duration]) -> Self {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let at = |p: f64| {
            if ms.is_empty() {
                return f64::NAN;
            }
            // Less a hair: 99.9 / 100 × 1000 is 999.0000000000001 in floating point.
            let rank = ((p / 100.0) * ms.len() as f64 - 1e-9).ceil() as usize;
            ms[rank.clamp(1, ms.len()) - 1]
        };
        Self {
            count: ms.len(),
            p50: at(50.0),
            p99: at(99.0),
            p999: at(99.9),
        }
    }
}

/// A target of issue 9 and whether this run met it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Target {
    /// What is compared, e.g. "drain vs pgmq".
    pub(crate) what: String,
    /// The goal, e.g. "≥ 1.2×".
    pub(crate) goal: String,
    /// What was measured, e.g. "1.31× (86 412 / 65 900 events/s)".
    pub(crate) measured: String,
    /// Whether the goal is met.
    pub(crate) met: bool,
}

impl Target {
    /// A ratio target: `ours / baseline ≥ at_least` (or ≤ `at_most` with `lower_is_better`).
    pub(crate) fn ratio(
        what: &str,
        ours: f64,
        baseline: f64,
        bound: f64,
        lower_is_better: bool,
        unit: &str,
    ) -> Self {
        let ratio = ours / baseline;
        let met = if lower_is_better {
            ratio <= bound
        } else {
            ratio >= bound
        };
        Self {
            what: what.to_owned(),
            goal: format!("{} {bound}×", if lower_is_better { "≤" } else { "≥" }),
            measured: format!(
                "{ratio:.2}× ({} / {} {unit})",
                fmt_num(ours),
                fmt_num(baseline)
            ),
            met,
        }
    }
}

/// A chart of a section, drawn as SVG by [`crate::svg`].
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Chart {
    /// File name stem: the SVG is `<section>-<name>.svg`.
    pub(crate) name: String,
    /// Title above the chart.
    pub(crate) title: String,
    /// Unit of the value axis, e.g. "events/s" or "ms".
    pub(crate) unit: String,
    /// The categories along the axis, e.g. "1 relay", "2 relays".
    pub(crate) groups: Vec<String>,
    /// One bar per group per series: (series name, one value per group).
    pub(crate) series: Vec<(String, Vec<f64>)>,
}

/// What a scenario reports: its part of docs/benchmarks.md, its figures as JSON, the
/// targets it checks and its charts. Written to `<out>/<name>.json` and
/// `<out>/<name>.md` (charts: `<out>/<name>-<chart>.svg`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Section {
    /// Scenario name, e.g. "drain".
    pub(crate) name: String,
    /// Heading, e.g. "2. Drain throughput, no-op publisher".
    pub(crate) title: String,
    /// Whether this came from a `--quick` run.
    pub(crate) quick: bool,
    /// When the run ended (RFC 3339).
    pub(crate) finished_at: String,
    /// The body of the section, in markdown (without its heading or charts).
    #[serde(skip)]
    pub(crate) markdown: String,
    /// Every figure, for regression tracking.
    pub(crate) data: Value,
    /// The targets checked.
    pub(crate) targets: Vec<Target>,
    /// The charts.
    pub(crate) charts: Vec<Chart>,
}

impl Section {
    /// An empty section of scenario `name`.
    pub(crate) fn new(ctx: &Ctx, name: &str, title: &str) -> Self {
        Self {
            name: name.to_owned(),
            title: title.to_owned(),
            quick: ctx.quick,
            finished_at: String::new(),
            markdown: String::new(),
            data: Value::Null,
            targets: Vec::new(),
            charts: Vec::new(),
        }
    }

    /// Writes the JSON, the markdown and the charts under `out`, and prints the
    /// markdown.
    pub(crate) fn write(mut self, out: &Path) -> Result<()> {
        self.finished_at = chrono::Utc::now().to_rfc3339();
        std::fs::create_dir_all(out)
            .with_context(|| format!("could not create {}", out.display()))?;
        let json = serde_json::to_string_pretty(&self)?;
        write(&out.join(format!("{}.json", self.name)), &json)?;
        let mut md = self.markdown.clone();
        if !self.targets.is_empty() {
            md.push_str("\n| Target | Goal | Measured | Met |\n|---|---|---|---|\n");
            for t in &self.targets {
                md.push_str(&format!(
                    "| {} | {} | {} | {} |\n",
                    t.what,
                    t.goal,
                    t.measured,
                    if t.met { "yes" } else { "**no**" }
                ));
            }
        }
        write(&out.join(format!("{}.md", self.name)), &md)?;
        for chart in &self.charts {
            let svg = crate::svg::render(chart);
            write(&out.join(format!("{}-{}.svg", self.name, chart.name)), &svg)?;
        }
        println!("\n## {}\n\n{md}", self.title);
        Ok(())
    }
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("could not write {}", path.display()))
}

/// `12345.6` → `12 346`: whole numbers with thin spaces between thousands.
pub(crate) fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    if v.abs() < 100.0 {
        return format!("{v:.1}");
    }
    let s = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    if v < 0.0 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_their_database_replaced() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "b").ok(),
            Some("postgres://postgres@127.0.0.1:5432/b".to_owned())
        );
        assert_eq!(
            with_database("postgres://u@h:1?sslmode=disable", "b").ok(),
            Some("postgres://u@h:1/b?sslmode=disable".to_owned())
        );
    }

    #[test]
    fn medians_and_numbers() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(fmt_num(1234567.0), "1 234 567");
        assert_eq!(fmt_num(999.4), "999");
        assert_eq!(fmt_num(12.34), "12.3");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples: Vec<Duration> = (1..=1000).map(Duration::from_millis).collect();
        let d = Dist::of(&samples);
        assert_eq!((d.p50, d.p99, d.p999), (500.0, 990.0, 999.0));
    }
}
