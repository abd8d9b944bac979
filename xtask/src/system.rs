//! The host system: who we run as, where programs are, and the Debian
//! packages xtask installs with apt-get when they are missing and it runs as
//! root (the test servers' packages, see [`crate::backends`], python3 and pip
//! for [`crate::tools`], and the build prerequisites below).

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};

use crate::note;

/// Set once `apt-get update` has run in this process: the build
/// prerequisites and the server packages may both be missing on a fresh
/// machine, and one update serves both installs.
static APT_UPDATED: AtomicBool = AtomicBool::new(false);

/// Where a multiarch `libcurl4-*-dev` puts curl's main header
/// (`/usr/include/<triple>/curl/curl.h`); `curl/curl.h` directly under
/// `/usr/include` also counts.
const INCLUDE_DIR: &str = "/usr/include";

/// The Debian packages the workspace build needs beyond a C/C++ toolchain
/// (`gcc`, `g++`, `make`): outbox-kafka uses rdkafka's `cmake-build` feature,
/// which compiles the bundled librdkafka with CMake, against libcurl;
/// outbox-pulsar's build script compiles the Pulsar protocol's `.proto` files
/// with `protoc`. Installs the missing ones as root; otherwise fails with the
/// command to run, rather than letting the build fail half-way with a CMake
/// or protoc error.
pub(crate) fn ensure_build_packages() -> Result<()> {
    let mut missing = Vec::new();
    if find_program("cmake").is_none() {
        missing.push("cmake");
    }
    if !has_curl_headers() {
        missing.push("libcurl4-openssl-dev");
    }
    if find_program("protoc").is_none() {
        missing.push("protobuf-compiler");
    }
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(
        &missing,
        "the build prerequisites of outbox-kafka (rdkafka's bundled librdkafka) and \
         outbox-pulsar (protoc)",
        None,
    )?;
    if find_program("cmake").is_none() || !has_curl_headers() || find_program("protoc").is_none() {
        bail!("installed {missing:?}, but cmake, curl/curl.h or protoc is still missing");
    }
    Ok(())
}

/// `python3` (the first on PATH, as the tests will run it), and with `pip`
/// also its pip module: the Pulsar broker and client for the tests come from
/// PyPI (see [`crate::tools`]). Installs python3-pip, which brings python3,
/// as root when either is missing; otherwise fails with the command to run.
pub(crate) fn ensure_python3(pip: bool) -> Result<PathBuf> {
    let usable = |python: &Path| !pip || has_pip(python);
    if let Some(python) = find_program("python3")
        && usable(&python)
    {
        return Ok(python);
    }
    apt_install(
        &["python3-pip"],
        "python3 and pip (for the Pulsar broker pulsar-lite and its Python client)",
        Some("run `cargo xtask test --no-backends` to skip the tests that need them"),
    )?;
    match find_program("python3") {
        Some(python) if usable(&python) => Ok(python),
        Some(python) => bail!(
            "installed python3-pip, but `{} -m pip` still does not run: install pip for \
             that python3, or put Debian's /usr/bin/python3 first on PATH",
            python.display()
        ),
        None => bail!("installed python3-pip, but python3 is still missing"),
    }
}

/// Whether `python -m pip` runs.
fn has_pip(python: &Path) -> bool {
    Command::new(python)
        .args(["-m", "pip", "--version"])
        .stdin(std::process::Stdio::null())
        .output()
        .is_ok_and(|out| out.status.success())
}

fn has_curl_headers() -> bool {
    let include = Path::new(INCLUDE_DIR);
    let multiarch = fs::read_dir(include).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|entry| entry.path().join("curl/curl.h").is_file())
    });
    multiarch || include.join("curl/curl.h").is_file() || dpkg_installed("libcurl4-openssl-dev")
}

/// Whether dpkg lists `package` as installed.
fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", package])
        .output()
        .is_ok_and(|out| {
            out.status.success() && String::from_utf8_lossy(&out.stdout) == "install ok installed"
        })
}

/// Installs `packages` (`what` says what they are for) with apt-get, after an
/// `apt-get update` (once per run). Without root, or without apt-get, fails
/// with the command to run, followed by `alternative` when given.
pub(crate) fn apt_install(packages: &[&str], what: &str, alternative: Option<&str>) -> Result<()> {
    let install = format!(
        "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y \
         --no-install-recommends {}",
        packages.join(" ")
    );
    if !is_root()? {
        let mut message = format!(
            "{what} are not installed; install them as root with\n    sudo sh -c '{install}'"
        );
        if let Some(alternative) = alternative {
            message.push_str(&format!("\nor {alternative}"));
        }
        bail!(message);
    }
    if find_program("apt-get").is_none() {
        bail!("{what} are not installed, and apt-get is not available: install {packages:?}");
    }
    note(&format!("installing {}", packages.join(" ")));
    let _no_services = NoServiceStarts::install();
    if !APT_UPDATED.load(Ordering::Relaxed) {
        run_to_stderr("apt-get", &["update"])?;
        APT_UPDATED.store(true, Ordering::Relaxed);
    }
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend(packages);
    run_to_stderr("apt-get", &args)
}

/// Keeps `apt-get install` from starting the distribution's own PostgreSQL
/// and MariaDB services (on 5432 and 3306): an absent
/// `/usr/sbin/policy-rc.d` is created with `exit 101` and removed on drop.
/// Docker's Debian images already ship one.
struct NoServiceStarts(Option<&'static Path>);

impl NoServiceStarts {
    fn install() -> Self {
        let path = Path::new("/usr/sbin/policy-rc.d");
        if path.exists() {
            return Self(None);
        }
        let written = fs::write(
            path,
            "#!/bin/sh\n# written by cargo xtask for apt-get install\nexit 101\n",
        )
        .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(0o755)));
        match written {
            Ok(()) => Self(Some(path)),
            Err(err) => {
                let _ = fs::remove_file(path);
                eprintln!("[xtask] warning: could not write {}: {err}", path.display());
                Self(None)
            }
        }
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if let Some(path) = self.0 {
            let _ = fs::remove_file(path);
        }
    }
}

/// Runs a command with its output on stderr (stdout stays for the export
/// lines of `cargo xtask backends start`).
fn run_to_stderr(program: &str, args: &[&str]) -> Result<()> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    let line = format!(
        "DEBIAN_FRONTEND=noninteractive {}",
        crate::command_line(&cmd)
    );
    run_shown(cmd, &line)
}

/// Runs `cmd`, shown as `line`, with its stdout sent to stderr where xtask sends its
/// progress; fails naming `line` if it does not start or does not succeed.
pub(crate) fn run_shown(mut cmd: Command, line: &str) -> Result<()> {
    cmd.stdout(std::io::stderr());
    note(&format!("$ {line}"));
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

pub(crate) fn is_root() -> Result<bool> {
    let out = Command::new("id")
        .arg("-u")
        .output()
        .context("could not run `id -u`")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// Looks for a program on PATH, then in the sbin directories non-root PATHs
/// often lack.
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
