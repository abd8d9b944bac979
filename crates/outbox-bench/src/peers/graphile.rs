//! graphile-worker 0.17.3 (npm; `cargo xtask bench` installs it): its schema in a fresh
//! database, a backlog added with one `graphile_worker.add_jobs(…)` call, and
//! [`CONSUMERS`] `graphile-worker --once` processes started together, timed until both
//! have exited, as graphile-worker's own performance test does.
//!
//! The files it runs with (configurations, task directory, an empty crontab) are written
//! to `<out>/graphile/`.

use super::CONSUMERS;
use crate::harness::{Ctx, Db, payload_sql};
use anyhow::{Context, Result, bail};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The version the scenario expects (`graphile-worker --version`).
pub(crate) const VERSION: &str = "0.17.3";

/// The task every job names.
pub(crate) const TASK: &str = "noop";

/// The task: a CommonJS module whose default export does nothing.
pub(crate) const NOOP_TASK: &str = "module.exports = async () => {};\n";

/// The batched configuration: the one graphile-worker's performance page
/// (worker.graphile.org/docs/performance) gives for its figures, with batching on: each
/// process locks 500 jobs at a time into a local queue that its 24 concurrent job slots
/// draw from, and completions are flushed in batches (`completeJobBatchDelay: 0`: the
/// completions made until the next timer tick go in one statement, instead of one each).
pub(crate) const BATCHED_CONFIG: &str = r#"// graphile-worker 0.17.3, batched
module.exports = {
  worker: {
    taskDirectory: __dirname + "/tasks",
    crontabFile: __dirname + "/crontab",
    fileExtensions: [".cjs"],
    concurrentJobs: 24,
    maxPoolSize: 25,
    localQueue: { size: 500 },
    completeJobBatchDelay: 0,
    failJobBatchDelay: 0,
  },
};
"#;

/// The unbatched configuration: the same without the batching options (their defaults,
/// -1, turn both off): every job slot fetches its own job and completes it with its own
/// statement.
pub(crate) const UNBATCHED_CONFIG: &str = r#"// graphile-worker 0.17.3, unbatched
module.exports = {
  worker: {
    taskDirectory: __dirname + "/tasks",
    crontabFile: __dirname + "/crontab",
    fileExtensions: [".cjs"],
    concurrentJobs: 24,
    maxPoolSize: 25,
  },
};
"#;

/// The environment each process gets besides `DATABASE_URL`: no log line per completed
/// job (what graphile-worker's performance test sets too).
pub(crate) const ENV: &[(&str, &str)] = &[("NO_LOG_SUCCESS", "1")];

/// A worker run's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// [`BATCHED_CONFIG`].
    Batched,
    /// [`UNBATCHED_CONFIG`].
    Unbatched,
}

impl Mode {
    fn config_file(self) -> &'static str {
        match self {
            Self::Batched => "batched.config.cjs",
            Self::Unbatched => "unbatched.config.cjs",
        }
    }
}

/// graphile-worker set up in a fresh database.
#[derive(Debug)]
pub(crate) struct Graphile {
    bin: PathBuf,
    dir: PathBuf,
    db: Db,
    /// What `graphile-worker --version` printed.
    pub(crate) version: String,
}

impl Graphile {
    /// Writes the configurations and the task directory under `<out>/graphile/`, creates
    /// database `name` and installs graphile-worker's schema in it (`--schema-only`).
    pub(crate) async fn setup(ctx: &Ctx, name: &str, bin: &Path) -> Result<Self> {
        let version = output(Command::new(bin).arg("--version"))
            .with_context(|| format!("could not run {}", bin.display()))?;
        let version = version.trim().to_owned();
        if version != VERSION {
            bail!(
                "{} is graphile-worker {version}; the scenario measures {VERSION}",
                bin.display()
            );
        }
        let dir = ctx.out.join("graphile");
        std::fs::create_dir_all(dir.join("tasks"))
            .with_context(|| format!("could not create {}", dir.display()))?;
        let dir = std::fs::canonicalize(&dir)
            .with_context(|| format!("could not resolve {}", dir.display()))?;
        for (file, text) in [
            (Mode::Batched.config_file(), BATCHED_CONFIG),
            (Mode::Unbatched.config_file(), UNBATCHED_CONFIG),
            ("tasks/noop.cjs", NOOP_TASK),
            ("crontab", ""),
        ] {
            let path = dir.join(file);
            std::fs::write(&path, text)
                .with_context(|| format!("could not write {}", path.display()))?;
        }
        let db = ctx.fresh_db(name).await?;
        let graphile = Self {
            bin: bin.to_owned(),
            dir,
            db,
            version,
        };
        let mut schema = graphile.command(Mode::Batched);
        schema.arg("--schema-only");
        output(&mut schema).context("graphile-worker --schema-only")?;
        Ok(graphile)
    }

    /// `graphile-worker --config <mode's file>` with the database and [`ENV`].
    fn command(&self, mode: Mode) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config")
            .arg(self.dir.join(mode.config_file()))
            .current_dir(&self.dir)
            .env("DATABASE_URL", &self.db.url)
            .stdin(Stdio::null());
        for (k, v) in ENV {
            cmd.env(k, v);
        }
        cmd
    }

    /// The statement that adds `n` jobs of task [`TASK`] with the common payload, in one
    /// call of graphile-worker's own bulk function (what `addJobs` calls).
    pub(crate) fn add_jobs_sql(n: u64) -> String {
        format!(
            "SELECT COUNT(*) FROM graphile_worker.add_jobs(ARRAY(\
             SELECT ROW('{TASK}', ({payload})::json, NULL, NULL, NULL, NULL, NULL, NULL)\
             ::graphile_worker.job_spec FROM generate_series(1, {n}) g))",
            payload = payload_sql("g"),
        )
    }

    /// Empties the jobs table, adds `n` jobs and `VACUUM ANALYZE`s it.
    async fn fill(&self, n: u64) -> Result<()> {
        self.db
            .exec("TRUNCATE graphile_worker._private_jobs")
            .await?;
        let added = self.db.scalar(&Self::add_jobs_sql(n)).await?;
        if added != n as i64 {
            bail!("graphile-worker: add_jobs added {added} jobs of {n}");
        }
        self.db
            .exec("VACUUM ANALYZE graphile_worker._private_jobs")
            .await?;
        let queued = self.jobs().await?;
        if queued != n as i64 {
            bail!("graphile-worker: {queued} jobs queued after adding {n}");
        }
        Ok(())
    }

    /// Jobs left in the table (a completed job is deleted; a failed one stays, to retry).
    async fn jobs(&self) -> Result<i64> {
        self.db
            .scalar("SELECT COUNT(*) FROM graphile_worker._private_jobs")
            .await
    }

    /// Adds `n` jobs, then starts [`CONSUMERS`] `--once` processes of `mode` together and
    /// waits for all to exit. Returns events per second over that wall time. Fails if a
    /// process fails or any job is left.
    pub(crate) async fn drain(&self, n: u64, mode: Mode) -> Result<f64> {
        self.fill(n).await?;
        let elapsed = self.run_once(mode).await?;
        let left = self.jobs().await?;
        if left != 0 {
            bail!("graphile-worker: {left} jobs of {n} are left after the run");
        }
        Ok(n as f64 / elapsed.as_secs_f64())
    }

    /// The wall time of [`CONSUMERS`] `--once` processes on an empty table: Node.js
    /// start-up, loading, connecting and exiting, which every [`Self::drain`] includes.
    /// In milliseconds.
    pub(crate) async fn startup_ms(&self) -> Result<f64> {
        self.db
            .exec("TRUNCATE graphile_worker._private_jobs")
            .await?;
        Ok(self.run_once(Mode::Batched).await?.as_secs_f64() * 1e3)
    }

    /// Starts the processes together and waits (polling every millisecond) until all have
    /// exited; kills them after 10 minutes.
    async fn run_once(&self, mode: Mode) -> Result<Duration> {
        let mut logs = Vec::with_capacity(CONSUMERS);
        let mut commands = Vec::with_capacity(CONSUMERS);
        for i in 0..CONSUMERS {
            let log = self.dir.join(format!("worker-{i}.log"));
            let file = File::create(&log)
                .with_context(|| format!("could not create {}", log.display()))?;
            let mut cmd = self.command(mode);
            cmd.arg("--once").stdout(file.try_clone()?).stderr(file);
            logs.push(log);
            commands.push(cmd);
        }
        let started = Instant::now();
        let mut children: Vec<(Child, Option<ExitStatus>)> = Vec::with_capacity(CONSUMERS);
        for cmd in &mut commands {
            let child = match cmd.spawn() {
                Ok(child) => child,
                Err(err) => {
                    kill(&mut children);
                    return Err(err)
                        .with_context(|| format!("could not start {}", self.bin.display()));
                }
            };
            children.push((child, None));
        }
        let deadline = started + Duration::from_secs(600);
        let elapsed = loop {
            for (child, status) in &mut children {
                if status.is_none() {
                    *status = child.try_wait()?;
                }
            }
            if children.iter().all(|(_, s)| s.is_some()) {
                break started.elapsed();
            }
            if Instant::now() > deadline {
                kill(&mut children);
                bail!("graphile-worker --once still ran after 10 minutes");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        for ((_, status), log) in children.iter().zip(&logs) {
            if let Some(status) = status
                && !status.success()
            {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                bail!(
                    "graphile-worker --once ({mode:?}) failed ({status}); its output ({}):\n{}",
                    log.display(),
                    tail(&text, 40)
                );
            }
        }
        Ok(elapsed)
    }
}

/// Kills (by their own handles) the processes still running.
fn kill(children: &mut [(Child, Option<ExitStatus>)]) {
    for (child, status) in children {
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `cmd` to completion; its stdout, or an error with its output.
fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .context("could not start graphile-worker")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "graphile-worker failed ({}):\n{}{}",
            out.status,
            tail(&stdout, 20),
            tail(&String::from_utf8_lossy(&out.stderr), 20)
        );
    }
    Ok(stdout)
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let mut out = all[all.len().saturating_sub(lines)..].join("\n");
    out.push('\n');
    out
}
