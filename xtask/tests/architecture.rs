//! Architecture invariants, checked mechanically.
//!
//! Dependencies point one way: domain ← ports ← adapters ← runtime ← cli.
//! These tests read `cargo tree` for the inner crates and fail if an I/O
//! runtime, a database or broker client, or an outer crate shows up among
//! their normal (non-dev, non-build) dependencies, on any target and with
//! every feature enabled.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

/// The domain does no I/O and knows nothing of the layers around it.
#[test]
fn domain_depends_on_no_runtime_database_broker_or_outer_crate() -> Result<()> {
    assert_no_forbidden_dependencies(
        "outbox-domain",
        &[
            "tokio",
            "sea-orm",
            "sea-query",
            "sqlx",
            "rdkafka",
            "pulsar",
            "prost",
            "outbox-ports",
            "outbox-runtime",
        ],
    )
}

/// The port traits stay independent of any technology that implements them.
#[test]
fn ports_depend_on_no_runtime_database_broker_or_runtime_crate() -> Result<()> {
    assert_no_forbidden_dependencies(
        "outbox-ports",
        &[
            "tokio",
            "sea-orm",
            "sqlx",
            "rdkafka",
            "pulsar",
            "prost",
            "outbox-runtime",
        ],
    )
}

/// The runtime drives ports and knows no adapter, so services can swap them.
#[test]
fn runtime_depends_on_no_adapter() -> Result<()> {
    assert_no_forbidden_dependencies(
        "outbox-runtime",
        &[
            "sea-orm",
            "rdkafka",
            "prost",
            "outbox-sea-orm",
            "outbox-kafka",
            "outbox-pulsar",
            "outbox-test-support",
        ],
    )
}

/// Broker adapters know no storage adapter and no runtime (their tests use them).
#[test]
fn broker_adapters_depend_on_no_storage_or_runtime() -> Result<()> {
    for adapter in ["outbox-kafka", "outbox-pulsar"] {
        assert_no_forbidden_dependencies(
            adapter,
            &[
                "sea-orm",
                "outbox-sea-orm",
                "outbox-runtime",
                "outbox-test-support",
            ],
        )?;
    }
    Ok(())
}

fn assert_no_forbidden_dependencies(package: &str, forbidden: &[&str]) -> Result<()> {
    let tree = cargo_tree(package)?;
    // Guard against passing vacuously on empty or unexpected output.
    ensure!(
        package_name(tree.lines().next().unwrap_or_default()) == Some(package),
        "`cargo tree -p {package}` did not start with {package}; output:\n{tree}"
    );
    let found = forbidden_packages(&tree, forbidden);
    if !found.is_empty() {
        bail!(
            "{package} must not depend on {found:?}, even indirectly (dependencies point \
             one way: domain <- ports <- adapters <- runtime <- cli); to see the path, run \
             `cargo tree -p {package} -e normal --all-features --target all -i {}`",
            found[0]
        );
    }
    Ok(())
}

fn cargo_tree(package: &str) -> Result<String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask's manifest directory has no parent")?;
    let output = Command::new(cargo)
        .current_dir(root)
        .args(["tree", "-p", package, "-e", "normal", "--prefix", "none"])
        .args(["--all-features", "--target", "all"])
        .output()
        .context("could not run `cargo tree`")?;
    ensure!(
        output.status.success(),
        "`cargo tree -p {package}` failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).context("`cargo tree` printed invalid UTF-8")
}

/// The package name at the start of a `cargo tree --prefix none` line, e.g.
/// `tokio` for `tokio v1.47.0`. Lines that don't look like a package give `None`.
fn package_name(line: &str) -> Option<&str> {
    let (name, rest) = line.trim().split_once(' ')?;
    rest.starts_with('v').then_some(name)
}

/// The forbidden packages that appear in `cargo tree` output, in order, once each.
/// Names match exactly: `tokio-util` is not `tokio`.
fn forbidden_packages<'a>(tree: &str, forbidden: &[&'a str]) -> Vec<&'a str> {
    let mut found: Vec<&str> = Vec::new();
    for name in tree.lines().filter_map(package_name) {
        let bad = forbidden.iter().copied().find(|&bad| bad == name);
        if let Some(bad) = bad.filter(|bad| !found.contains(bad)) {
            found.push(bad);
        }
    }
    found
}

#[test]
fn package_name_reads_the_first_word_of_a_tree_line() {
    assert_eq!(package_name("tokio v1.47.0"), Some("tokio"));
    assert_eq!(
        package_name("outbox-domain v0.1.0 (/work/main/crates/outbox-domain)"),
        Some("outbox-domain")
    );
    assert_eq!(package_name("syn v2.0.106 (*)"), Some("syn"));
    assert_eq!(package_name(""), None);
    assert_eq!(package_name("warning: something"), None);
}

#[test]
fn forbidden_packages_flags_exact_names_only() {
    let tree = "\
outbox-domain v0.1.0 (/work/main/crates/outbox-domain)
chrono v0.4.42
tokio v1.47.0
tokio-util v0.7.16
sea-orm v2.0.4 (*)
sea-orm-macros v2.0.4 (proc-macro)
tokio v1.47.0 (*)
";
    assert_eq!(
        forbidden_packages(tree, &["tokio", "sea-orm", "sqlx"]),
        vec!["tokio", "sea-orm"]
    );
    assert_eq!(
        forbidden_packages("tokio-util v0.7.16\n", &["tokio"]),
        Vec::<&str>::new()
    );
}
