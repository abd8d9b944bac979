//! `cargo xtask`: the single entry point for outbox-rs's own chores.
//!
//! Run `cargo xtask --help` for the list of commands. The alias lives in
//! `.cargo/config.toml`. This crate keeps its dependencies to `anyhow` and the
//! standard library so that it builds in seconds on a fresh clone; every step
//! shells out to `cargo` through [`std::process::Command`], the test
//! databases come from the distribution's packages, the Kafka broker is
//! built once with `cargo install` and the Pulsar broker installed once with
//! pip (see [`backends`] and [`tools`]).

mod backends;
mod graphile;
mod system;
mod tools;

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, Result, bail};

use crate::backends::{Backends, Kind};
use crate::tools::TansuBuild;

const USAGE: &str = "\
cargo xtask: chores for the outbox-rs workspace

USAGE:
    cargo xtask <COMMAND> [ARGS...]

COMMANDS:
    test [--no-backends] [ARGS...]
                    install the build prerequisites of outbox-kafka (cmake,
                    libcurl4-openssl-dev) and outbox-pulsar (protobuf-compiler)
                    when missing, start PostgreSQL, MariaDB, a Kafka broker
                    (tansu) and a Pulsar broker (pulsar-lite) on 127.0.0.1, run
                    the whole workspace test suite, then the doctests, then
                    stop the servers; ARGS go to the test runner (cargo nextest
                    run, or cargo test when nextest is not installed). Missing
                    packages are installed with apt-get when running as root;
                    tansu is built with cargo install on first use (about 5
                    minutes, once per machine, in target/xtask-tools), and
                    pulsar-lite is installed with pulsar-client, the Python
                    client the tests read back with, by python3 -m pip (a few
                    seconds, once per machine, in target/xtask-tools)
        --no-backends   start no servers: the tests that need them skip (or
                        fail, under CI)
    backends start [--dir DIR]
                    start the four servers in DIR (default
                    target/xtask-backends/dev) and leave them running; prints
                    their `export ...` lines (also in DIR/env) for
                    `cargo nextest run -p ...`
    backends stop [--dir DIR]
                    stop the servers `backends start` left in DIR
    ci              cargo fmt --check, cargo clippy -D warnings (installing the
                    build prerequisites first, as `test` does), then `test`
    migrate <up|down|status|fresh> --database-url URL [--steps N] [--routes FILE]
                    apply (up: all, or N), roll back (down: 1, or N), list
                    (status) or roll back all and re-apply (fresh) the outbox-rs
                    schema migrations, through `cargo run -p outbox-cli --
                    migrate`; up and status with --routes also create or check
                    each service's outbox table; fresh touches only the outbox
                    tables, never the application's (`cargo xtask migrate help`)
    bench [--quick] [SCENARIO...] [-- ARGS]
                    build the scenarios with the `bench` profile (optimised),
                    start their servers with the benchmark configuration
                    (PostgreSQL durable: fsync and synchronous commit on; never
                    the servers OUTBOX_TEST_* name), run each scenario, then
                    write the report: docs/benchmarks.md with its charts in
                    docs/bench/ after a complete full run, otherwise
                    target/bench/benchmarks.md; fails if a run fails.
                    SCENARIO (default: all, in this order):
        enqueue         a business transaction alone, with our enqueue, with a
                        hand-written INSERT, and with the bulk path; 8 writers
        drain           drain a 200k backlog, no-op publisher, 1/2/4 relays
        kafka-drain     the same backlog to Kafka (tansu) against raw rdkafka
        latency         commit-to-broker-ack latency on PostgreSQL and tansu
                        with in-process, cross-process (NOTIFY) and no wake-ups,
                        and what NOTIFY costs writers (example bench_latency of
                        outbox-kafka); reports the targets without failing
        history         claim cost and drain rate with 0, 1M and 5M finished
                        rows, and on a table without statistics
        ceiling         plain-SQL UPDATE/DELETE ... RETURNING loops, 2 clients:
                        the database's ceiling, and the relay's share of it
        peers           pgmq (Rust client) and graphile-worker 0.17.3 (npm,
                        installed into target/xtask-tools) on the same backlog
        claim           claim time with 1M finished rows retained versus
                        none, on PostgreSQL and MariaDB (example bench_claim of
                        outbox-sea-orm); fails if the ratio exceeds 1.5
        --quick         smaller backlogs, one measured run each (under 3
                        minutes once built)
                    ARGS go to the one SCENARIO named (`cargo run -p
                    outbox-bench -- SCENARIO --help` lists them)
    help            print this text (also -h, --help)

ENVIRONMENT:
    CI              when set (and not \"false\" or \"0\"), `test` uses the nextest
                    profile `ci` instead of `default`
    OUTBOX_TEST_POSTGRES_URL, OUTBOX_TEST_MYSQL_URL
                    the admin URLs the tests create their databases through
    OUTBOX_TEST_KAFKA_BOOTSTRAP
                    the Kafka broker's host:port, for the outbox-kafka tests
    OUTBOX_TEST_PULSAR_URL
                    the Pulsar broker's pulsar://host:port, for the
                    outbox-pulsar tests
    OUTBOX_TEST_PULSAR_PYTHONPATH
                    the PYTHONPATH under which python3 can `import pulsar`
                    (pulsar-client), which those tests read messages back with
    OUTBOX_TEST_POSTGRES_BIN
                    the directory of PostgreSQL's initdb, pg_ctl and postgres,
                    for the outbox-kafka tests that run a private cluster and
                    restart it
    OUTBOX_TEST_POSTGRES_USER
                    the OS user those tests run PostgreSQL as (postgres when
                    xtask runs as root; unset: the current user)
    OUTBOX_TEST_TANSU
                    the tansu binary, for the outbox-kafka tests that run a
                    private Kafka broker and stop it
    `test` and `backends start` set these for the servers they start, and
    start (or build) no server whose variable is already set (for Pulsar, its
    URL: set the PYTHONPATH along with it); they set the last three, unless
    already set, from the programs the servers use, or for a server that runs
    elsewhere from the programs at hand (an installed PostgreSQL, an already
    built tansu). Missing, the tests that need them skip, or fail under CI
";

/// Exit code for commands that exist but cannot run yet, and for usage errors.
const EXIT_UNAVAILABLE: u8 = 2;

/// The `outbox` binary's broker features: off by default (they need cmake and
/// protoc, which `outbox demo` must not), on for the tests and lints, so that
/// `outbox relay` is built, linted and tested against the real brokers; and its
/// `failpoints` feature, for the crash-point matrix (crates/outbox-cli/tests/crash.rs).
const BROKER_FEATURES: &str = "outbox-cli/kafka,outbox-cli/pulsar,outbox-cli/failpoints";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<ExitCode> {
    let Some((command, rest)) = args.split_first() else {
        print!("{USAGE}");
        return Ok(ExitCode::SUCCESS);
    };
    match command.as_str() {
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        "test" => test(rest).map(|()| ExitCode::SUCCESS),
        "backends" => {
            let workspace = Workspace::locate()?;
            backends::command(rest, &workspace.root).map(|()| ExitCode::SUCCESS)
        }
        "ci" => {
            no_extra_args("ci", rest)?;
            ci().map(|()| ExitCode::SUCCESS)
        }
        "migrate" => migrate(rest),
        "bench" => bench(rest).map(|()| ExitCode::SUCCESS),
        other => {
            eprintln!("error: unknown command `{other}`\n\n{USAGE}");
            Ok(ExitCode::from(EXIT_UNAVAILABLE))
        }
    }
}

fn no_extra_args(command: &str, rest: &[String]) -> Result<()> {
    if rest.is_empty() {
        Ok(())
    } else {
        bail!("`cargo xtask {command}` takes no arguments, got {rest:?}")
    }
}

/// `cargo xtask test`: everything a contributor must run before pushing.
fn test(extra_args: &[String]) -> Result<()> {
    let workspace = Workspace::locate()?;
    let args = TestArgs::parse(extra_args);

    // Before anything builds: rdkafka's bundled librdkafka needs CMake and
    // libcurl's headers, outbox-pulsar's build script protoc.
    system::ensure_build_packages()?;

    // Real PostgreSQL and MariaDB servers for the storage tests, a Kafka
    // broker for outbox-kafka's and a Pulsar broker for outbox-pulsar's (with
    // OUTBOX_TEST_PULSAR_PYTHONPATH among the variables). The guard stops
    // them and deletes their directory however this function returns; its
    // watchdog does the same if xtask is killed (Ctrl-C).
    let backends = if args.start_backends {
        Backends::for_tests(&workspace.root, &Kind::ALL)?
    } else {
        Backends::none()
    };

    let mut failures = Vec::new();

    let mut tests = if workspace.has_nextest() {
        let profile = if in_ci() { "ci" } else { "default" };
        let mut cmd = workspace.cargo();
        cmd.args(["nextest", "run", "--workspace", "--all-targets"]);
        cmd.args(["--features", BROKER_FEATURES]);
        cmd.args(["--profile", profile]);
        cmd
    } else {
        println!("[xtask] cargo-nextest is not installed: falling back to `cargo test`");
        let mut cmd = workspace.cargo();
        cmd.args(["test", "--workspace", "--all-targets"]);
        cmd.args(["--features", BROKER_FEATURES]);
        cmd
    };
    tests.args(&args.runner_args);
    tests.envs(backends.env().iter().cloned());
    if let Err(err) = step("tests", &mut tests) {
        failures.push(err);
    }

    // nextest does not run doctests, so they get a step of their own; it
    // also runs under the `cargo test` fallback, which skips them with
    // `--all-targets`.
    let mut doctests = workspace.cargo();
    doctests.args(["test", "--workspace", "--doc"]);
    doctests.envs(backends.env().iter().cloned());
    if let Err(err) = step("doctests", &mut doctests) {
        failures.push(err);
    }

    // Stop the servers before the verdict, so that it comes last.
    drop(backends);

    if failures.is_empty() {
        println!("\n[xtask] all tests passed");
        Ok(())
    } else {
        let summary: Vec<String> = failures.iter().map(|err| format!("  {err:#}")).collect();
        bail!("{} step(s) failed:\n{}", failures.len(), summary.join("\n"))
    }
}

/// The arguments of `cargo xtask test`.
#[derive(Debug, PartialEq, Eq)]
struct TestArgs {
    start_backends: bool,
    /// Everything else, for the test runner.
    runner_args: Vec<String>,
}

impl TestArgs {
    /// Takes out `--no-backends`, before any `--` (what follows `--` belongs
    /// to the test binaries). `-h`/`--help` also starts no server: the
    /// runner only prints its help.
    fn parse(args: &[String]) -> Self {
        let split = args
            .iter()
            .position(|arg| arg == "--")
            .unwrap_or(args.len());
        let (ours, theirs) = args.split_at(split);
        let no_backends = ours.iter().any(|arg| arg == "--no-backends");
        let help = ours.iter().any(|arg| arg == "-h" || arg == "--help");
        let runner_args = ours
            .iter()
            .filter(|arg| *arg != "--no-backends")
            .chain(theirs)
            .cloned()
            .collect();
        Self {
            start_backends: !no_backends && !help,
            runner_args,
        }
    }
}

/// `cargo xtask ci`: what CI runs; stops at the first failing step.
fn ci() -> Result<()> {
    let workspace = Workspace::locate()?;
    // clippy builds outbox-kafka's dependencies, librdkafka included, and
    // runs outbox-pulsar's build script (protoc).
    system::ensure_build_packages()?;

    let mut fmt = workspace.cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    step("rustfmt", &mut fmt)?;

    let mut clippy = workspace.cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--features",
        BROKER_FEATURES,
        "--",
        "-D",
        "warnings",
    ]);
    step("clippy", &mut clippy)?;

    test(&[])
}

/// `cargo xtask migrate ARGS`: `outbox migrate ARGS`, built and run by cargo so that
/// xtask itself needs no database driver. Exits with the CLI's exit code.
fn migrate(args: &[String]) -> Result<ExitCode> {
    let workspace = Workspace::locate()?;
    let mut cmd = migrate_command(&workspace, args);
    let line = command_line(&cmd);
    println!("[xtask] $ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

/// The `cargo run` of `outbox migrate ARGS`. It runs in the caller's directory, so a
/// relative `sqlite:` path means the same as it would to `outbox` itself.
fn migrate_command(workspace: &Workspace, args: &[String]) -> Command {
    let mut cmd = workspace.cargo();
    if let Ok(dir) = std::env::current_dir() {
        cmd.current_dir(dir);
    }
    cmd.arg("run")
        .arg("-q")
        .arg("--manifest-path")
        .arg(workspace.root.join("Cargo.toml"))
        .args(["-p", "outbox-cli", "--", "migrate"])
        .args(args);
    cmd
}

/// `cargo xtask bench`: the benchmark scenarios (see [`Scenario`]), run against
/// servers started for them with the benchmark configuration
/// ([`backends::Profile::Bench`]: PostgreSQL durable, as in production).
///
/// Everything is built with the `bench` profile (optimised, like a release build, so
/// that throughput figures are not those of unoptimised code; it shares
/// `target/release`). Each scenario writes its section of the report under
/// `target/bench`; at the end `outbox-bench report` assembles them into a page:
/// docs/benchmarks.md (and its charts in docs/bench/) after a full run of every
/// scenario, `target/bench/benchmarks.md` otherwise, so a quick or partial run never
/// overwrites the published figures.
fn bench(args: &[String]) -> Result<()> {
    let workspace = Workspace::locate()?;
    let args = BenchArgs::parse(args)?;
    if args.help {
        print!("{USAGE}");
        return Ok(());
    }

    // Build before starting the servers: a compile error starts nothing, and the
    // runs below do not pay for the build. outbox-kafka builds librdkafka with cmake.
    system::ensure_build_packages()?;
    let mut builds: Vec<(&str, Option<&str>)> = Vec::new();
    for scenario in &args.scenarios {
        let target = (scenario.package(), scenario.example());
        if !builds.contains(&target) {
            builds.push(target);
        }
    }
    for (package, example) in &builds {
        let mut build = workspace.cargo();
        build.args(["build", "--profile", "bench", "-p", package]);
        match example {
            Some(example) => build.args(["--example", example]),
            None => build.args(["--features", "kafka"]),
        };
        step(&format!("build {}", example.unwrap_or(package)), &mut build)?;
    }
    let graphile_worker = if args.scenarios.contains(&Scenario::Peers) {
        Some(graphile::ensure_graphile_worker(&tools::tools_root(
            &workspace.root,
        ))?)
    } else {
        None
    };

    let out = workspace.root.join("target/bench");
    fs::create_dir_all(&out).with_context(|| format!("could not create {}", out.display()))?;
    for scenario in &args.scenarios {
        // A section left by an earlier run must not pass for this run's.
        for ext in ["json", "md"] {
            let _ = fs::remove_file(out.join(format!("{}.{ext}", scenario.name())));
        }
    }

    // Every server any scenario needs, in one directory; stopped (and the directory
    // deleted) when the guard drops, as for `test`.
    let kinds: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|kind| args.scenarios.iter().any(|s| s.backends().contains(kind)))
        .collect();
    let backends = Backends::for_bench(&workspace.root, &kinds)?;
    write_bench_env(&out, &args, &backends, graphile_worker.as_deref())?;
    let started = std::time::Instant::now();
    let mut failures = Vec::new();
    let mut timings = Vec::new();
    for scenario in &args.scenarios {
        let scenario_started = std::time::Instant::now();
        let ctx = BenchContext {
            backends: &backends,
            quick: args.quick,
            out: &out,
            graphile_worker: graphile_worker.as_deref(),
            extra: args.extra_for(*scenario),
        };
        match scenario.runs(&ctx) {
            Ok(runs) => {
                for run in runs {
                    let mut cmd = workspace.cargo();
                    cmd.args(["run", "--quiet", "--profile", "bench", "-p"]);
                    cmd.arg(scenario.package());
                    match scenario.example() {
                        Some(example) => cmd.args(["--example", example]),
                        None => cmd.args(["--features", "kafka"]),
                    };
                    cmd.arg("--").args(&run.args);
                    if let Err(err) = step(&run.title, &mut cmd) {
                        failures.push(err);
                    }
                }
            }
            Err(err) => failures.push(err),
        }
        timings.push(format!(
            "{} {:.0}s",
            scenario.name(),
            scenario_started.elapsed().as_secs_f64()
        ));
    }
    let elapsed = started.elapsed();
    drop(backends);

    // The page: the published one only from a complete, full run.
    let complete =
        !args.quick && args.scenarios.len() == Scenario::ALL.len() && failures.is_empty();
    let (page, charts) = if complete {
        (
            workspace.root.join("docs/benchmarks.md"),
            workspace.root.join("docs/bench"),
        )
    } else {
        (out.join("benchmarks.md"), out.join("charts"))
    };
    let mut report = workspace.cargo();
    report.args(["run", "--quiet", "--profile", "bench", "-p", "outbox-bench"]);
    report.args(["--features", "kafka", "--", "report", "--dir"]);
    report
        .arg(&out)
        .arg("--out")
        .arg(&page)
        .arg("--charts")
        .arg(&charts);
    if let Err(err) = step("report", &mut report) {
        failures.push(err);
    }

    if failures.is_empty() {
        println!(
            "\n[xtask] benchmarks passed in {:.0}s ({}; build and server start-up excluded); \
             report: {}",
            elapsed.as_secs_f64(),
            timings.join(", "),
            page.display()
        );
        Ok(())
    } else {
        let summary: Vec<String> = failures.iter().map(|err| format!("  {err:#}")).collect();
        bail!(
            "{} benchmark(s) failed:\n{}",
            failures.len(),
            summary.join("\n")
        )
    }
}

/// Writes `target/bench/env.json`: what the report's "Machine and versions" lists
/// beyond what it reads from the machine itself.
fn write_bench_env(
    out: &Path,
    args: &BenchArgs,
    backends: &Backends,
    graphile_worker: Option<&Path>,
) -> Result<()> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut put = |key: &str, value: String| env.push((key.to_owned(), value));
    let scenarios: Vec<&str> = args.scenarios.iter().map(|s| s.name()).collect();
    put(
        "command",
        format!(
            "cargo xtask bench{} {}",
            if args.quick { " --quick" } else { "" },
            scenarios.join(" ")
        ),
    );
    put("quick", args.quick.to_string());
    for (kind, title) in backends.titles() {
        put(kind.name(), title.clone());
    }
    put(
        "postgresql settings",
        backends::BENCH_POSTGRES_SETTINGS
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    if let Ok(output) = Command::new("rustc").arg("--version").output() {
        put(
            "rustc",
            String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        );
    }
    put(
        "build",
        "cargo profile `bench` (release: opt-level 3, line tables only)".to_owned(),
    );
    if let Some(path) = graphile_worker {
        put(
            "graphile-worker",
            format!("{} ({})", graphile::GRAPHILE_WORKER_VERSION, path.display()),
        );
    }
    let fields: Vec<String> = env
        .iter()
        .map(|(key, value)| format!("  {}: {}", json_string(key), json_string(value)))
        .collect();
    let path = out.join("env.json");
    fs::write(&path, format!("{{\n{}\n}}\n", fields.join(",\n")))
        .with_context(|| format!("could not write {}", path.display()))
}

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    let mut out = String::from('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A benchmark scenario of `cargo xtask bench`: a subcommand of the `outbox-bench`
/// binary (`crates/outbox-bench`) or an example of a workspace crate, the servers it
/// needs, and the runs it makes. A new scenario is a new variant here (and a line in
/// USAGE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    /// 1. Enqueue overhead against a hand-written INSERT, 8 writers.
    Enqueue,
    /// 2. Drain throughput with a no-op publisher, 1, 2 and 4 relays.
    Drain,
    /// 3. Drain throughput to Kafka (tansu) against raw rdkafka.
    KafkaDrain,
    /// 4. Commit-to-broker-ack latency and the cost of NOTIFY, on PostgreSQL and tansu
    ///    (`crates/outbox-kafka/examples/bench_latency/`); reports the targets, never
    ///    fails on them.
    Latency,
    /// 5. Claim cost and drain rate with 0, 1M and 5M finished rows, and on a table
    ///    without statistics.
    History,
    /// 6. The database's ceiling in plain SQL, and the relay's share of it.
    Ceiling,
    /// 7. pgmq and graphile-worker side by side with the relay.
    Peers,
    /// Claim time with 1M finished rows retained versus none, on PostgreSQL and
    /// MariaDB (`crates/outbox-sea-orm/examples/bench_claim.rs`, docs/storage.md);
    /// fails above a ratio of 1.5.
    Claim,
}

impl Scenario {
    /// In the order they run.
    const ALL: [Self; 8] = [
        Self::Enqueue,
        Self::Drain,
        Self::KafkaDrain,
        Self::Latency,
        Self::History,
        Self::Ceiling,
        Self::Peers,
        Self::Claim,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Enqueue => "enqueue",
            Self::Drain => "drain",
            Self::KafkaDrain => "kafka-drain",
            Self::Latency => "latency",
            Self::History => "history",
            Self::Ceiling => "ceiling",
            Self::Peers => "peers",
            Self::Claim => "claim",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    fn package(self) -> &'static str {
        match self {
            Self::Claim => "outbox-sea-orm",
            Self::Latency => "outbox-kafka",
            _ => "outbox-bench",
        }
    }

    /// The example, for the scenarios that are one; the others are subcommands of
    /// `outbox-bench` (built with its `kafka` feature).
    fn example(self) -> Option<&'static str> {
        match self {
            Self::Claim => Some("bench_claim"),
            Self::Latency => Some("bench_latency"),
            _ => None,
        }
    }

    fn backends(self) -> &'static [Kind] {
        match self {
            Self::Claim => &Kind::DATABASES,
            Self::Latency | Self::KafkaDrain => &[Kind::Postgres, Kind::Kafka],
            _ => &[Kind::Postgres],
        }
    }

    /// The runs of the scenario: a title and its arguments each.
    fn runs(self, ctx: &BenchContext<'_>) -> Result<Vec<BenchRun>> {
        let quick = ctx.quick.then(|| "--quick".to_owned());
        match self {
            // Each server, then SQLite files under `target/bench/claim-sqlite`.
            Self::Claim => Kind::DATABASES
                .into_iter()
                .map(|kind| Ok((kind.title().to_owned(), ctx.server(kind)?)))
                .chain(std::iter::once(Ok((
                    "SQLite".to_owned(),
                    format!("sqlite:{}", ctx.out.join("claim-sqlite").display()),
                ))))
                .map(|run: Result<(String, String)>| {
                    let (title, url) = run?;
                    let mut args = vec!["--database-url".to_owned(), url];
                    if ctx.quick {
                        // A twentieth of the history. ARGS come after, so
                        // `-- --finished N` still wins.
                        args.extend(["--finished".to_owned(), "50000".to_owned()]);
                    }
                    args.extend(ctx.extra.iter().cloned());
                    Ok(BenchRun {
                        title: format!("claim benchmark on {title}"),
                        args,
                    })
                })
                .collect(),
            Self::Latency => {
                let broker = if ctx.started(Kind::Kafka) {
                    TansuBuild::Release.title()
                } else {
                    "the Kafka broker at OUTBOX_TEST_KAFKA_BOOTSTRAP".to_owned()
                };
                let mut args = vec![
                    "--database-url".to_owned(),
                    ctx.server(Kind::Postgres)?,
                    "--bootstrap".to_owned(),
                    ctx.server(Kind::Kafka)?,
                    "--out".to_owned(),
                    ctx.out.to_string_lossy().into_owned(),
                    "--broker".to_owned(),
                    broker,
                ];
                if let Some(pid) = ctx.backends.pid(Kind::Kafka) {
                    args.extend(["--broker-pid".to_owned(), pid.to_string()]);
                }
                if ctx.quick {
                    args.extend(["--quick".to_owned(), "--runs".to_owned(), "1".to_owned()]);
                }
                args.extend(ctx.extra.iter().cloned());
                Ok(vec![BenchRun {
                    title: "latency benchmark on PostgreSQL and Kafka".to_owned(),
                    args,
                }])
            }
            _ => {
                let mut args = vec![
                    self.name().to_owned(),
                    "--database-url".to_owned(),
                    ctx.server(Kind::Postgres)?,
                    "--out".to_owned(),
                    ctx.out.to_string_lossy().into_owned(),
                ];
                if self == Self::KafkaDrain {
                    args.extend(["--bootstrap".to_owned(), ctx.server(Kind::Kafka)?]);
                }
                if let (Self::Peers, Some(path)) = (self, ctx.graphile_worker) {
                    args.extend([
                        "--graphile-worker".to_owned(),
                        path.to_string_lossy().into_owned(),
                    ]);
                }
                args.extend(quick);
                args.extend(ctx.extra.iter().cloned());
                Ok(vec![BenchRun {
                    title: format!("{} benchmark", self.name()),
                    args,
                }])
            }
        }
    }
}

/// What a scenario's runs are built from.
struct BenchContext<'a> {
    backends: &'a Backends,
    quick: bool,
    /// `target/bench`: where the sections go.
    out: &'a Path,
    /// The installed `graphile-worker` command, for `peers`.
    graphile_worker: Option<&'a Path>,
    /// The ARGS after `--`, when they are this scenario's.
    extra: &'a [String],
}

impl BenchContext<'_> {
    /// The URL (or `host:port`) of a server started here.
    fn server(&self, kind: Kind) -> Result<String> {
        let var = kind.env_var();
        self.backends
            .env()
            .iter()
            .find(|(name, _)| *name == var)
            .map(|(_, url)| url.clone())
            .with_context(|| format!("no server for {}", kind.title()))
    }

    fn started(&self, kind: Kind) -> bool {
        self.backends
            .env()
            .iter()
            .any(|(name, _)| *name == kind.env_var())
    }
}

/// One run of a scenario.
struct BenchRun {
    title: String,
    args: Vec<String>,
}

/// The arguments of `cargo xtask bench [--quick] [SCENARIO...] [-- ARGS]`.
#[derive(Debug, PartialEq, Eq)]
struct BenchArgs {
    quick: bool,
    help: bool,
    /// The scenarios to run, in [`Scenario::ALL`] order; all when none is named.
    scenarios: Vec<Scenario>,
    /// ARGS, for [`Self::extra_for`].
    extra: Vec<String>,
    /// The scenario ARGS go to: the one named.
    extra_target: Option<Scenario>,
}

impl BenchArgs {
    fn parse(args: &[String]) -> Result<Self> {
        let split = args
            .iter()
            .position(|arg| arg == "--")
            .unwrap_or(args.len());
        let (ours, extra) = (&args[..split], args.get(split + 1..).unwrap_or_default());
        let (mut quick, mut help, mut named) = (false, false, Vec::new());
        for arg in ours {
            match arg.as_str() {
                "--quick" => quick = true,
                "-h" | "--help" => help = true,
                name => match Scenario::from_name(name) {
                    Some(scenario) => named.push(scenario),
                    None => bail!(
                        "`cargo xtask bench`: unknown argument `{name}` (scenarios: {}; \
                         arguments for a scenario's example go after `--`)",
                        Scenario::ALL.map(Scenario::name).join(", ")
                    ),
                },
            }
        }
        if named.len() != 1 && !extra.is_empty() {
            bail!("`cargo xtask bench`: ARGS after `--` need exactly one scenario, got {named:?}");
        }
        let extra_target = named.first().copied();
        let scenarios = Scenario::ALL
            .into_iter()
            .filter(|s| named.is_empty() || named.contains(s))
            .collect();
        Ok(Self {
            quick,
            help,
            scenarios,
            extra: extra.to_vec(),
            extra_target,
        })
    }

    /// The ARGS of `scenario`'s example.
    fn extra_for(&self, scenario: Scenario) -> &[String] {
        if Some(scenario) == self.extra_target {
            &self.extra
        } else {
            &[]
        }
    }
}

/// Where the workspace lives and which `cargo` drives it.
struct Workspace {
    root: PathBuf,
    cargo: OsString,
}

impl Workspace {
    fn locate() -> Result<Self> {
        // xtask always runs from its own source tree: the workspace root is
        // the parent of this crate's manifest directory.
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask's manifest directory has no parent")?
            .to_path_buf();
        Ok(Self {
            root,
            cargo: cargo_program(),
        })
    }

    fn cargo(&self) -> Command {
        let mut cmd = Command::new(&self.cargo);
        cmd.current_dir(&self.root);
        cmd
    }

    fn has_nextest(&self) -> bool {
        self.cargo()
            .args(["nextest", "--version"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }
}

/// The cargo to run: `cargo run` sets CARGO to the cargo binary that launched
/// us, which keeps the toolchain consistent (e.g. under `cargo +nightly xtask`).
fn cargo_program() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// Progress and advice, on stderr (`backends start` keeps stdout for its
/// export lines).
fn note(message: &str) {
    eprintln!("[xtask] {message}");
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| !matches!(value.as_str(), "" | "0" | "false"))
}

/// Runs one step with a header, and turns a non-zero exit into an error.
fn step(name: &str, cmd: &mut Command) -> Result<()> {
    let line = command_line(cmd);
    println!("\n[xtask] ==> {name}\n[xtask] $ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("{name}: could not start `{line}`"))?;
    if status.success() {
        Ok(())
    } else {
        bail!("{name}: `{line}` failed ({status})")
    }
}

fn command_line(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program())
        .file_name()
        .unwrap_or(cmd.get_program())
        .to_string_lossy()
        .into_owned();
    std::iter::once(program)
        .chain(cmd.get_args().map(|arg| arg.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_shows_the_program_name_and_arguments() {
        let mut cmd = Command::new("/usr/local/bin/cargo");
        cmd.args(["fmt", "--all"]);
        assert_eq!(command_line(&cmd), "cargo fmt --all");
    }

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|arg| (*arg).to_owned()).collect()
    }

    #[test]
    fn test_args_take_out_no_backends_before_the_double_dash() {
        assert_eq!(
            TestArgs::parse(&strings(&["-p", "outbox-core", "--no-backends"])),
            TestArgs {
                start_backends: false,
                runner_args: strings(&["-p", "outbox-core"]),
            }
        );
        assert_eq!(
            TestArgs::parse(&strings(&["--", "--no-backends"])),
            TestArgs {
                start_backends: true,
                runner_args: strings(&["--", "--no-backends"]),
            }
        );
        assert!(TestArgs::parse(&[]).start_backends);
        assert!(!TestArgs::parse(&strings(&["--help"])).start_backends);
    }

    #[test]
    fn migrate_passes_its_arguments_to_outbox_migrate() {
        let workspace = Workspace {
            root: PathBuf::from("/src/outbox-rs"),
            cargo: "cargo".into(),
        };
        let cmd = migrate_command(
            &workspace,
            &strings(&["up", "--steps", "1", "--database-url", "sqlite:app.db"]),
        );
        assert_eq!(
            command_line(&cmd),
            "cargo run -q --manifest-path /src/outbox-rs/Cargo.toml -p outbox-cli -- \
             migrate up --steps 1 --database-url sqlite:app.db"
        );
    }

    #[test]
    fn bench_args_pick_scenarios_and_route_args_after_the_double_dash() {
        let all = BenchArgs::parse(&[]).unwrap();
        assert_eq!(all.scenarios, Scenario::ALL);
        assert!(!all.quick);

        let args = BenchArgs::parse(&strings(&[
            "--quick",
            "claim",
            "--",
            "--finished",
            "200000",
        ]))
        .unwrap();
        assert!(args.quick);
        assert_eq!(args.scenarios, [Scenario::Claim]);
        assert_eq!(
            args.extra_for(Scenario::Claim),
            &strings(&["--finished", "200000"])[..]
        );
        assert!(args.extra_for(Scenario::Latency).is_empty());
        // ARGS without a scenario have no scenario to go to.
        assert!(BenchArgs::parse(&strings(&["--", "--finished", "1"])).is_err());

        let args = BenchArgs::parse(&strings(&["latency", "--", "--runs", "5"])).unwrap();
        assert_eq!(args.scenarios, [Scenario::Latency]);
        assert_eq!(
            args.extra_for(Scenario::Latency),
            &strings(&["--runs", "5"])[..]
        );

        assert!(BenchArgs::parse(&strings(&["--finished", "1"])).is_err());
        assert!(BenchArgs::parse(&strings(&["claim", "latency", "--", "-x"])).is_err());
        assert!(BenchArgs::parse(&strings(&["--help"])).unwrap().help);
    }
}
