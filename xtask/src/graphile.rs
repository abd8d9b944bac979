//! graphile-worker, the Node.js job queue that the `peers` benchmark scenario measures
//! beside outbox-rs: installed with npm once per machine, pinned to one version.
//!
//! As with the tools of [`crate::tools`], npm installs into a temporary sibling
//! directory (`<name>.partial-<pid>`) that is renamed into place once complete, so the
//! cache directory exists only for a finished install. npm's `.bin` links are relative,
//! so the rename keeps them working.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::note;
use crate::system::find_program;

/// The graphile-worker version the `peers` scenario measures (the one of issue 9's
/// reference figures).
pub(crate) const GRAPHILE_WORKER_VERSION: &str = "0.17.3";

/// The command, inside the npm prefix.
const GRAPHILE_WORKER_BIN: &str = "node_modules/.bin/graphile-worker";

/// The `graphile-worker` command, installed first with `npm install` into
/// `<tools_dir>/graphile-worker-0.17.3` if that lacks it (a few seconds). Fails, saying
/// how to install them, without `node` or `npm`.
pub(crate) fn ensure_graphile_worker(tools_dir: &Path) -> Result<PathBuf> {
    let name = format!("graphile-worker-{GRAPHILE_WORKER_VERSION}");
    let dir = tools_dir.join(&name);
    let bin = dir.join(GRAPHILE_WORKER_BIN);
    if bin.is_file() {
        return Ok(bin);
    }
    let missing: Vec<&str> = ["node", "npm"]
        .into_iter()
        .filter(|program| find_program(program).is_none())
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} missing: graphile-worker {GRAPHILE_WORKER_VERSION}, a peer of the `peers` \
             benchmark scenario, is a Node.js package installed with npm; install Node.js \
             and npm with `apt-get install nodejs npm`",
            missing.join(" and ")
        );
    }

    // Installed as the tools of `crate::tools` are: into a temporary sibling directory
    // renamed into place once complete.
    let bin = crate::tools::install_once(&dir, Path::new(GRAPHILE_WORKER_BIN), npm_install)?;
    check_version(&bin)?;
    Ok(bin)
}

/// `npm install --prefix <prefix> graphile-worker@<version>`.
fn npm_install(prefix: &Path) -> Result<()> {
    note(&format!(
        "installing graphile-worker {GRAPHILE_WORKER_VERSION} (a peer of the `peers` \
         benchmark) with npm; this happens once per machine"
    ));
    let mut install = Command::new("npm");
    install
        .arg("install")
        .arg("--prefix")
        .arg(prefix)
        .args(["--no-audit", "--no-fund"])
        .arg(format!("graphile-worker@{GRAPHILE_WORKER_VERSION}"));
    // No check for a newer npm.
    install.env("npm_config_update_notifier", "false");
    crate::tools::run_installer(install)
}

/// Fails unless `bin --version` prints [`GRAPHILE_WORKER_VERSION`].
fn check_version(bin: &Path) -> Result<()> {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .with_context(|| format!("could not run {}", bin.display()))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || version != GRAPHILE_WORKER_VERSION {
        bail!(
            "{} --version printed {version:?} ({}), not {GRAPHILE_WORKER_VERSION}",
            bin.display(),
            out.status
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn an_installed_command_is_returned_as_it_is() {
        let tools = std::env::temp_dir().join(format!("xtask-graphile-{}", std::process::id()));
        let bin = tools
            .join(format!("graphile-worker-{GRAPHILE_WORKER_VERSION}"))
            .join(GRAPHILE_WORKER_BIN);
        fs::create_dir_all(bin.parent().unwrap()).unwrap();
        fs::write(&bin, "").unwrap();
        assert_eq!(ensure_graphile_worker(&tools).unwrap(), bin);
        fs::remove_dir_all(&tools).unwrap();
    }
}
