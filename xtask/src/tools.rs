//! Test tools that no distribution package provides, built (or installed
//! from PyPI) by xtask once per machine and cached under
//! `target/xtask-tools/<name>-<version>/`.
//!
//! Each tool is built into a temporary sibling directory and renamed into
//! place only once complete, so the cache directory exists only for a tool
//! that is finished: a build that is interrupted (Ctrl-C, a full disk) leaves
//! at worst a `*.partial-<pid>` directory, which the next build removes. (A
//! finished `bin/tansu` would also do as the marker, since `cargo install`
//! writes the binary last; the rename keeps the rule the same for tools
//! installed otherwise, such as a Python package.) Two xtask runs building at
//! once each build their own copy, and the first to finish wins.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::note;
use crate::system::{ensure_python3, run_shown};

/// The Kafka-protocol broker for the outbox-kafka tests.
pub(crate) const TANSU_VERSION: &str = "0.6.0";

/// The Pulsar-protocol broker for the outbox-pulsar tests: pulsar-lite, a
/// native binary that PyPI ships inside a Python wheel.
pub(crate) const PULSAR_LITE_VERSION: &str = "0.2.0";
/// The official Pulsar client for Python, installed next to pulsar-lite: the
/// outbox-pulsar tests read their messages back with it, through `python3`.
pub(crate) const PULSAR_CLIENT_VERSION: &str = "3.13.0";

/// The pulsar-lite binary, inside the pip target directory.
const PULSAR_LITE_BINARY: &str = "site/pulsar_lite/bin/pulsar-lite";

/// Environment variables pip reads as defaults for its options, removed so
/// that none breaks the `--target` install: PIP_USER conflicts with it, and
/// PIP_REQUIRE_VIRTUALENV refuses to install outside a virtualenv.
const PIP_ENV_VARS: &[&str] = &["PIP_USER", "PIP_REQUIRE_VIRTUALENV"];

/// `cargo install` features for tansu: only the in-memory storage engine
/// (`memory://`, part of `dynostore`), which keeps out PostgreSQL, SQLite,
/// S3 and data-lake dependencies.
const TANSU_INSTALL_ARGS: &[&str] = &[
    "--locked",
    "--no-default-features",
    "--features",
    "dynostore",
];

/// How tansu is compiled; each build has its own directory in the tools cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TansuBuild {
    /// For the tests: compiles in about half the time of a release build, and
    /// is fast enough for them.
    Debug,
    /// For `cargo xtask bench`: the broker shares the machine's two cores with
    /// the relay and the database, and the debug build spends about 1 ms of CPU
    /// on each produce request, which the latency benchmark would measure as
    /// the outbox's.
    Release,
}

impl TansuBuild {
    /// The build's directory in the tools cache, under [`tools_root`].
    pub(crate) fn dir_name(self) -> String {
        match self {
            Self::Debug => format!("tansu-{TANSU_VERSION}"),
            Self::Release => format!("tansu-{TANSU_VERSION}-release"),
        }
    }

    /// The broker's name in benchmark reports.
    pub(crate) fn title(self) -> String {
        match self {
            Self::Debug => format!("tansu {TANSU_VERSION} (debug build)"),
            Self::Release => format!("tansu {TANSU_VERSION} (release build)"),
        }
    }
}

/// The cache of all tools: `target/xtask-tools`.
pub(crate) fn tools_root(workspace_root: &Path) -> PathBuf {
    workspace_root.join("target").join("xtask-tools")
}

/// The tansu binary of `build`, built first if the cache lacks it (with
/// `cargo install` on 2 cores: 4 to 6 minutes for the debug build, about
/// 10 for the release one).
pub(crate) fn ensure_tansu(workspace_root: &Path, build: TansuBuild) -> Result<PathBuf> {
    let dir = tools_root(workspace_root).join(build.dir_name());
    install_once(&dir, Path::new("bin/tansu"), |partial| {
        let (profile, minutes) = match build {
            TansuBuild::Debug => ("a debug build, for the tests", "5"),
            TansuBuild::Release => ("a release build, for the benchmarks", "10"),
        };
        note(&format!(
            "building tansu {TANSU_VERSION} (the Kafka broker; {profile}) with cargo \
             install; this happens once per machine and takes about {minutes} minutes"
        ));
        let mut install = Command::new(crate::cargo_program());
        install.args(["install", "tansu", "--version", TANSU_VERSION]);
        install.args(TANSU_INSTALL_ARGS);
        if build == TansuBuild::Debug {
            install.arg("--debug");
        }
        install.arg("--root").arg(partial);
        run_installer(install)
    })
}

/// Runs an installer (`cargo install`, `pip install`, `npm install`) to completion,
/// failing with its command line. It runs outside the workspace, so that the
/// workspace's `.cargo/config.toml` plays no part, with its stdout sent to stderr, where
/// xtask sends its progress.
pub(crate) fn run_installer(mut install: Command) -> Result<()> {
    install.current_dir(std::env::temp_dir());
    let line = crate::command_line(&install);
    run_shown(install, &line)
}

/// pulsar-lite and pulsar-client, installed by [`ensure_pulsar_lite`].
pub(crate) struct PulsarLite {
    /// The broker's binary.
    pub(crate) binary: PathBuf,
    /// The pip target directory: the `PYTHONPATH` under which `python3` can
    /// `import pulsar`.
    pub(crate) site: PathBuf,
}

/// pulsar-lite and pulsar-client, installed first with `pip install
/// --target` into `site/` if the cache lacks them (a few seconds: both are
/// binary wheels). `python3` must be able to import pulsar-client from there:
/// its wheel holds a native module built for one Python version.
pub(crate) fn ensure_pulsar_lite(workspace_root: &Path) -> Result<PulsarLite> {
    let python = ensure_python3(false)?;
    let name = format!("pulsar-lite-{PULSAR_LITE_VERSION}");
    let dir = tools_root(workspace_root).join(&name);
    let binary = install_once(&dir, Path::new(PULSAR_LITE_BINARY), |partial| {
        let python = ensure_python3(true)?;
        note(&format!(
            "installing pulsar-lite {PULSAR_LITE_VERSION} (the Pulsar broker for the tests) \
             and pulsar-client {PULSAR_CLIENT_VERSION} with pip; this happens once per machine"
        ));
        let mut install = Command::new(&python);
        install.args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
        ]);
        // No `.pyc` files: they would name the temporary directory as their
        // source; Python writes its own on first import.
        install.arg("--no-compile");
        // `--target`, not a virtualenv: a virtualenv names its own path, so
        // it could not be renamed into place.
        install.arg("--target").arg(partial.join("site"));
        install.args([
            format!("pulsar-lite=={PULSAR_LITE_VERSION}"),
            format!("pulsar-client=={PULSAR_CLIENT_VERSION}"),
        ]);
        for var in PIP_ENV_VARS {
            install.env_remove(var);
        }
        // No warning about running as root: nothing is installed system-wide.
        install.env("PIP_ROOT_USER_ACTION", "ignore");
        run_installer(install)?;
        // The wheel marks the binary executable; make sure, since xtask runs
        // it directly rather than through pulsar-lite's Python wrapper.
        let binary = partial.join(PULSAR_LITE_BINARY);
        if binary.is_file() {
            fs::set_permissions(&binary, fs::Permissions::from_mode(0o755))
                .with_context(|| format!("could not make {} executable", binary.display()))?;
        }
        Ok(())
    })?;
    let site = dir.join("site");

    let check = Command::new(&python)
        .args(["-c", "import pulsar"])
        .env("PYTHONPATH", &site)
        .output()
        .with_context(|| format!("could not run {}", python.display()))?;
    if !check.status.success() {
        bail!(
            "{} cannot import pulsar-client from {}, perhaps installed for another Python \
             version; delete {} to reinstall it\n{}",
            python.display(),
            site.display(),
            dir.display(),
            String::from_utf8_lossy(&check.stderr).trim_end()
        );
    }
    Ok(PulsarLite { binary, site })
}

/// Returns `dir/binary`, first running `build` on a fresh temporary
/// directory and renaming it to `dir` when `dir/binary` does not exist.
pub(crate) fn install_once(
    dir: &Path,
    binary: &Path,
    build: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let installed = dir.join(binary);
    if installed.is_file() {
        return Ok(installed);
    }
    let parent = dir.parent().context("a tool directory has no parent")?;
    let name = dir
        .file_name()
        .context("a tool directory has no name")?
        .to_string_lossy();
    fs::create_dir_all(parent).with_context(|| format!("could not create {}", parent.display()))?;
    remove_abandoned_builds(parent, &name);

    let started = Instant::now();
    let partial = parent.join(format!("{name}.partial-{}", std::process::id()));
    if partial.exists() {
        fs::remove_dir_all(&partial)
            .with_context(|| format!("could not remove {}", partial.display()))?;
    }
    fs::create_dir(&partial).with_context(|| format!("could not create {}", partial.display()))?;
    if let Err(err) = build(&partial) {
        let _ = fs::remove_dir_all(&partial);
        return Err(err);
    }
    if !partial.join(binary).is_file() {
        let _ = fs::remove_dir_all(&partial);
        bail!("the build of {name} left no {}", binary.display());
    }

    if dir.exists() && !installed.is_file() {
        // Not ours, and incomplete: e.g. a `cargo install --root` straight
        // into the cache that was interrupted.
        fs::remove_dir_all(dir).with_context(|| format!("could not remove {}", dir.display()))?;
    }
    match fs::rename(&partial, dir) {
        Ok(()) => {}
        // Another run finished first: keep its copy.
        Err(_) if installed.is_file() => {
            let _ = fs::remove_dir_all(&partial);
        }
        Err(err) => {
            return Err(err).with_context(|| {
                format!(
                    "could not rename {} to {}",
                    partial.display(),
                    dir.display()
                )
            });
        }
    }
    note(&format!(
        "{name} built in {:.0}s, cached in {}",
        started.elapsed().as_secs_f64(),
        dir.display()
    ));
    Ok(installed)
}

/// Removes the `<name>.partial-<pid>` directories of builds whose process is
/// gone.
fn remove_abandoned_builds(parent: &Path, name: &str) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    let prefix = format!("{name}.partial-");
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name
            .to_str()
            .and_then(|file_name| file_name.strip_prefix(&prefix))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists();
        if !alive {
            note(&format!(
                "removing the abandoned build {}",
                entry.path().display()
            ));
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-tools-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn install_once_builds_only_when_the_binary_is_missing() {
        let root = scratch("once");
        let dir = root.join("tool-1.0");
        let binary = Path::new("bin/tool");
        let mut builds = 0;
        for _ in 0..2 {
            let path = install_once(&dir, binary, |partial| {
                builds += 1;
                assert!(!partial.starts_with(&dir));
                fs::create_dir_all(partial.join("bin"))?;
                Ok(fs::write(partial.join(binary), "")?)
            })
            .unwrap();
            assert_eq!(path, dir.join(binary));
        }
        assert_eq!(builds, 1);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_failed_build_leaves_nothing_behind() {
        let root = scratch("failed");
        let dir = root.join("tool-1.0");
        let result = install_once(&dir, Path::new("bin/tool"), |partial| {
            fs::write(partial.join("half"), "")?;
            bail!("interrupted")
        });
        assert!(result.is_err());
        assert_eq!(fs::read_dir(&root).unwrap().count(), 0);
        fs::remove_dir_all(&root).unwrap();
    }
}
