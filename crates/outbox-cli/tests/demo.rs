//! `outbox demo` runs end to end and reports what actually happened.

#![allow(clippy::unwrap_used)] // a test should panic on an unexpected error

use std::process::Command;

fn demo(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_outbox"))
        .arg("demo")
        .args(args)
        .output()
        .expect("run outbox demo");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn demo_delivers_every_event_once_in_key_order() {
    let (ok, stdout, stderr) = demo(&[
        "--orders",
        "300",
        "--customers",
        "7",
        "--fail-every",
        "5",
        "--redeliver-every",
        "10",
        "--no-progress",
    ]);
    assert!(ok, "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("events written        900"), "{stdout}");
    assert!(stdout.contains("consumed (effects)    900"), "{stdout}");
    assert!(
        stdout.contains("duplicates absorbed   90 "),
        "every 10th of 900 deliveries is redelivered: {stdout}"
    );
    assert!(
        stdout.contains("per-key order         verified for 7 customers"),
        "{stdout}"
    );
    assert!(stdout.contains("lost events           0"), "{stdout}");
    let retries: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("publish retries"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("retry count");
    assert!(
        retries > 0,
        "a broker failing every 5th publish causes retries: {stdout}"
    );
}

#[test]
fn demo_rejects_settings_that_cannot_finish() {
    let (ok, _, stderr) = demo(&["--fail-every", "1"]);
    assert!(!ok);
    assert!(
        stderr.contains("--fail-every 1 would fail every publish forever"),
        "{stderr}"
    );
    let (ok, _, stderr) = demo(&["--orders", "0"]);
    assert!(!ok);
    assert!(stderr.contains("must be at least 1"), "{stderr}");
}
