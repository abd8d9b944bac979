//! `cargo xtask`: the single entry point for outbox-rs's own chores.
//!
//! Run `cargo xtask --help` for the list of commands. The alias lives in
//! `.cargo/config.toml`. This crate keeps its dependencies to `anyhow` and the
//! standard library so that it builds in seconds on a fresh clone; every step
//! shells out to `cargo` through [`std::process::Command`], and the test
//! servers come from the distribution's packages (see [`backends`]).

mod backends;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, Result, bail};

use crate::backends::Backends;

const USAGE: &str = "\
cargo xtask: chores for the outbox-rs workspace

USAGE:
    cargo xtask <COMMAND> [ARGS...]

COMMANDS:
    test [--no-backends] [ARGS...]
                    start PostgreSQL and MariaDB on 127.0.0.1 (installing them
                    with apt-get first when missing and running as root), run
                    the whole workspace test suite, then the doctests, then stop
                    the servers; ARGS go to the test runner (cargo nextest run,
                    or cargo test when nextest is not installed)
        --no-backends   start no servers: the tests that need them skip (or
                        fail, under CI)
    backends start [--dir DIR]
                    start both servers in DIR (default target/xtask-backends/dev)
                    and leave them running; prints their `export ...` lines
                    (also in DIR/env) for `cargo nextest run -p ...`
    backends stop [--dir DIR]
                    stop the servers `backends start` left in DIR
    ci              cargo fmt --check, cargo clippy -D warnings, then `test`
    migrate         apply the outbox schema migrations (not available yet)
    bench           run the benchmarks (not available yet)
    help            print this text (also -h, --help)

ENVIRONMENT:
    CI              when set (and not \"false\" or \"0\"), `test` uses the nextest
                    profile `ci` instead of `default`
    OUTBOX_TEST_POSTGRES_URL, OUTBOX_TEST_MYSQL_URL
                    the admin URLs the tests create their databases through;
                    `test` sets them for the servers it starts, and starts no
                    server for a variable that is already set
";

/// Exit code for commands that exist but cannot run yet, and for usage errors.
const EXIT_UNAVAILABLE: u8 = 2;

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
        "migrate" => {
            no_extra_args("migrate", rest)?;
            Ok(migrate())
        }
        "bench" => {
            no_extra_args("bench", rest)?;
            Ok(bench())
        }
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

    // Real PostgreSQL and MariaDB servers for the storage tests. The guard
    // stops them and deletes their directory however this function returns;
    // its watchdog does the same if xtask is killed (Ctrl-C).
    let backends = if args.start_backends {
        Backends::for_tests(&workspace.root)?
    } else {
        Backends::none()
    };

    let mut failures = Vec::new();

    let mut tests = if workspace.has_nextest() {
        let profile = if in_ci() { "ci" } else { "default" };
        let mut cmd = workspace.cargo();
        cmd.args(["nextest", "run", "--workspace", "--all-targets"]);
        cmd.args(["--profile", profile]);
        cmd
    } else {
        println!("[xtask] cargo-nextest is not installed: falling back to `cargo test`");
        let mut cmd = workspace.cargo();
        cmd.args(["test", "--workspace", "--all-targets"]);
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

    let mut fmt = workspace.cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    step("rustfmt", &mut fmt)?;

    let mut clippy = workspace.cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    step("clippy", &mut clippy)?;

    test(&[])
}

/// `cargo xtask migrate`: will apply `outbox-migrations` to `DATABASE_URL`.
fn migrate() -> ExitCode {
    // Fill in with the storage adapter (issue 3): read DATABASE_URL and run
    // `outbox_migrations::Migrator::up`, through the CLI binary so that xtask
    // keeps its dependency list short.
    eprintln!(
        "error: the storage adapter (issue 3) has not landed yet: there is no schema to migrate"
    );
    ExitCode::from(EXIT_UNAVAILABLE)
}

/// `cargo xtask bench`: will run the benchmarks.
fn bench() -> ExitCode {
    // Fill in with issue 9: start the backends as `test` does, then run
    // `cargo bench` for the benchmark crate.
    eprintln!("error: benchmarks arrive with issue 9");
    ExitCode::from(EXIT_UNAVAILABLE)
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
        // `cargo run` sets CARGO to the cargo binary that launched us, which
        // keeps the toolchain consistent (e.g. under `cargo +nightly xtask`).
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        Ok(Self { root, cargo })
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
    fn migrate_and_bench_exit_with_code_2() {
        assert_eq!(migrate(), ExitCode::from(EXIT_UNAVAILABLE));
        assert_eq!(bench(), ExitCode::from(EXIT_UNAVAILABLE));
    }
}
