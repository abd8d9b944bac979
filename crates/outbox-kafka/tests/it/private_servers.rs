//! Servers a single test owns: a tansu broker ([`PrivateTansu`]) and a PostgreSQL
//! cluster ([`PrivatePostgres`]). A test can stop and restart them without
//! disturbing the shared servers of `cargo xtask test`, which the other tests are
//! using at the same time.
//!
//! The programs come from the variables that `cargo xtask test` (or `cargo xtask
//! backends start`) sets: [`TANSU_VAR`], plus [`POSTGRES_BIN_VAR`] and, when the tests
//! run as root, [`POSTGRES_USER_VAR`]. Each helper signals only the processes it
//! started, by PID, and only while `/proc/<pid>/cmdline` still names the helper's own
//! directory. A helper stops its server when it is dropped. A watchdog shell does the
//! same if the test process dies without unwinding (a nextest timeout, SIGKILL).
//!
//! The helpers block: call them through `tokio::task::block_in_place`.

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{JoinHandle, sleep};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The tansu binary.
pub(crate) const TANSU_VAR: &str = "OUTBOX_TEST_TANSU";
/// The directory holding PostgreSQL's `initdb`, `pg_ctl` and `postgres`.
pub(crate) const POSTGRES_BIN_VAR: &str = "OUTBOX_TEST_POSTGRES_BIN";
/// The OS user PostgreSQL runs as, through `runuser` (set when the tests run as root,
/// since PostgreSQL refuses to run as root); unset: the current user.
pub(crate) const POSTGRES_USER_VAR: &str = "OUTBOX_TEST_POSTGRES_USER";

/// How long a server gets to come up, or to stop before the next signal.
const PATIENCE: Duration = Duration::from_secs(30);

/// Environment variables tansu reads as defaults for its options (as in xtask).
const TANSU_ENV_VARS: &[&str] = &[
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}

/// The value of `var`, which names a program for a private server. When it is unset,
/// the test fails under CI. Outside CI it returns `None`, and the test `case` is
/// skipped with a loud message.
pub(crate) fn program_var(var: &str, case: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) if !value.trim().is_empty() => Some(value),
        _ if in_ci() => panic!(
            "{var} is not set: under CI the private-server tests must run; use `cargo xtask \
             test`, which sets it (see `cargo xtask help`, ENVIRONMENT)"
        ),
        _ => {
            // Written straight to stderr, so the test harness does not capture it.
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED {case}: {var} is not set. Run `cargo xtask test`, or `cargo \
                 xtask backends start` and `source target/xtask-backends/dev/env`. ***\n"
            );
            None
        }
    }
}

/// A port nothing listens on. It is taken from below the ephemeral range, so that no
/// outgoing connection can use it while its server is down.
fn free_port() -> u16 {
    let ephemeral_low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = ephemeral_low / 2;
    if low >= 1024 {
        for _ in 0..200 {
            let offset = (uuid::Uuid::new_v4().as_u128() % u128::from(ephemeral_low - low)) as u16;
            let port = low + offset;
            if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return port;
            }
        }
    }
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

/// A fresh directory under the system's temporary directory, named after `prefix`.
/// Its mode is 0700, and it is owned by `user` when one is given.
fn private_dir(prefix: &str, user: Option<&str>) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
    fs::create_dir(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    if let Some(user) = user {
        run(
            "chown",
            Command::new("chown").arg(format!("{user}:")).arg(&dir),
        );
    }
    dir
}

/// Runs `cmd` to completion; panics with its output if it fails.
fn run(name: &str, cmd: &mut Command) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{name}: cannot start {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{name}: {cmd:?} failed ({})\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether `pid` is alive with `dir` on its command line: still our process, not one
/// that reused its PID. A zombie's command line is empty, so a zombie counts as gone.
fn process_matches(pid: u32, dir: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = dir.as_os_str().as_encoded_bytes();
    cmdline.windows(needle.len()).any(|w| w == needle)
}

/// Sends each signal of `signals` to `pid` while it is still ours, and waits up to
/// `wait` after each one. Returns whether the process is gone.
fn stop_pid(pid: u32, dir: &Path, signals: &[(Signal, Duration)]) -> bool {
    for &(signal, wait) in signals {
        if !process_matches(pid, dir) {
            return true;
        }
        let Ok(raw) = i32::try_from(pid) else {
            return false;
        };
        let _ = kill(Pid::from_raw(raw), signal);
        let deadline = Instant::now() + wait;
        while process_matches(pid, dir) && Instant::now() < deadline {
            sleep(Duration::from_millis(20));
        }
    }
    !process_matches(pid, dir)
}

fn wait_for_port(port: u16, what: &str, log: &Path) {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + PATIENCE;
    while TcpStream::connect_timeout(&address, Duration::from_millis(500)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not accept a connection on {address} within {PATIENCE:?}\n{}",
            fs::read_to_string(log).unwrap_or_default()
        );
        sleep(Duration::from_millis(20));
    }
}

/// A shell in its own process group, which outlives the test process. When the test
/// process dies, the shell sees end-of-file on its stdin. It then sends SIGKILL to
/// the PIDs that the files listed in `pid_files` name (first line of each), provided
/// they still run with the directory on their command line, and deletes the
/// directory. [`Watchdog::disarm`] makes it exit without doing anything.
struct Watchdog {
    child: Child,
    stdin: Option<ChildStdin>,
}

const WATCHDOG_SCRIPT: &str = r#"
dir=$1; shift
while read -r line; do [ "$line" = done ] && exit 0; done
for file in "$@"; do
    pid=$(head -n 1 "$file" 2>/dev/null)
    [ -n "$pid" ] && grep -qsF -- "$dir" "/proc/$pid/cmdline" && kill -s KILL "$pid"
done
sleep 1
rm -rf -- "$dir"
"#;

impl Watchdog {
    fn spawn(dir: &Path, pid_files: &[PathBuf]) -> Self {
        let mut child = Command::new("sh")
            .args(["-c", WATCHDOG_SCRIPT, "outbox-test-watchdog"])
            .arg(dir)
            .args(pid_files)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("a watchdog shell");
        let stdin = child.stdin.take();
        Self { child, stdin }
    }

    fn disarm(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "done");
        }
        let _ = self.child.wait();
    }
}

/// A tansu broker (in-memory storage) that one test stops and restarts.
///
/// Clients reach it through a *front* port, which is also the address the broker
/// advertises. The front is a small TCP forwarder that the helper closes while the
/// broker is down. tansu keeps its topics in memory, so a restart loses them. A
/// real broker keeps its topics across a restart, and a client that found the topic
/// missing would fail its messages as `UnknownTopic` (permanent). To avoid that,
/// [`restart`](Self::restart) re-creates the topics by talking to tansu's own port
/// directly, with `tansu topic create`, and opens the front only after that. While
/// the front is closed, connecting to it is refused, as with a stopped broker.
pub(crate) struct PrivateTansu {
    binary: PathBuf,
    dir: PathBuf,
    front: u16,
    back: u16,
    child: Option<Child>,
    /// The front, while it is open.
    open_front: Option<Front>,
    watchdog: Watchdog,
}

impl PrivateTansu {
    /// Starts tansu (the binary at `binary`) in a fresh temporary directory and opens
    /// its front.
    pub(crate) fn start(binary: &str) -> Self {
        let dir = private_dir("outbox-tansu", None);
        // tansu loads a `.env` from its working directory or the nearest parent that
        // has one; an empty one keeps any other out.
        fs::write(dir.join(".env"), "").unwrap();
        // Run through a symlink in `dir`, so that the broker's command line names
        // `dir` (what `process_matches` checks).
        let link = dir.join("tansu");
        std::os::unix::fs::symlink(binary, &link).unwrap();
        let watchdog = Watchdog::spawn(&dir, &[dir.join("tansu.pid")]);
        let front = free_port();
        let back = std::iter::repeat_with(free_port)
            .find(|&port| port != front)
            .expect("a second free port");
        let mut tansu = Self {
            binary: link,
            front,
            back,
            dir,
            child: None,
            open_front: None,
            watchdog,
        };
        tansu.spawn();
        tansu.open_front = Some(Front::open(tansu.front, tansu.back));
        tansu
    }

    /// `host:port` for `bootstrap.servers`.
    pub(crate) fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.front)
    }

    /// Closes the front (cutting every client connection) and stops the broker:
    /// SIGTERM, then SIGKILL after 10 s. Its topics and messages are gone.
    pub(crate) fn stop(&mut self) {
        // Closing the front first: no client reaches the broker from now on.
        self.open_front = None;
        if let Some(mut child) = self.child.take() {
            let stopped = stop_pid(
                child.id(),
                &self.dir,
                &[
                    (Signal::SIGTERM, Duration::from_secs(10)),
                    (Signal::SIGKILL, Duration::from_secs(5)),
                ],
            );
            assert!(stopped, "tansu (pid {}) did not stop", child.id());
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same ports. It creates `topics` (name and
    /// partition count) before any client can reach it, then opens the front.
    pub(crate) fn restart(&mut self, topics: &[(&str, u32)]) {
        assert!(self.child.is_none(), "restart a stopped broker");
        self.spawn();
        for (topic, partitions) in topics {
            run(
                "tansu topic create",
                Command::new(&self.binary)
                    .args(["topic", "create", topic])
                    .arg(format!("--partitions={partitions}"))
                    .arg(format!("--broker=tcp://127.0.0.1:{}", self.back))
                    .env("RUST_LOG", "warn")
                    .current_dir(&self.dir),
            );
        }
        self.open_front = Some(Front::open(self.front, self.back));
    }

    fn spawn(&mut self) {
        let log_path = self.dir.join("server.log");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let mut cmd = Command::new(&self.binary);
        cmd.arg("broker")
            .arg(format!("--listener-url=tcp://127.0.0.1:{}", self.back))
            .arg(format!(
                "--advertised-listener-url=tcp://127.0.0.1:{}",
                self.front
            ))
            .arg("--storage-engine=memory://tansu/");
        for var in TANSU_ENV_VARS {
            cmd.env_remove(var);
        }
        // Warnings and errors only: at `info` tansu logs every span of every request.
        cmd.env("RUST_LOG", "warn").env("NO_COLOR", "1");
        cmd.current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        fs::write(self.dir.join("tansu.pid"), format!("{}\n", child.id())).unwrap();
        self.child = Some(child);
        wait_for_port(self.back, "tansu", &log_path);
    }
}

impl Drop for PrivateTansu {
    fn drop(&mut self) {
        // Closing the front first: no client reaches the broker from now on.
        self.open_front = None;
        if let Some(mut child) = self.child.take() {
            stop_pid(
                child.id(),
                &self.dir,
                &[(Signal::SIGKILL, Duration::from_secs(5))],
            );
            let _ = child.wait();
        }
        self.watchdog.disarm();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The front of a [`PrivateTansu`]: a TCP forwarder from 127.0.0.1:`front` to
/// 127.0.0.1:`back`, on plain threads, so it does not depend on the test's runtime.
struct Front {
    closed: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    /// Both ends of every forwarded connection, shut down on close.
    streams: Arc<Mutex<Vec<TcpStream>>>,
}

impl Front {
    fn open(front: u16, back: u16) -> Self {
        // The port was ours a moment ago; a client connection in TIME_WAIT does not
        // stop a listener from binding it (std sets SO_REUSEADDR).
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, front))
            .unwrap_or_else(|e| panic!("cannot listen on 127.0.0.1:{front} again: {e}"));
        listener.set_nonblocking(true).unwrap();
        let closed = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let (closed, streams) = (Arc::clone(&closed), Arc::clone(&streams));
            std::thread::spawn(move || accept_loop(&listener, back, &closed, &streams))
        };
        Self {
            closed,
            acceptor: Some(acceptor),
            streams,
        }
    }
}

impl Drop for Front {
    /// Stops accepting (the port refuses connections from now on) and cuts every
    /// forwarded connection.
    fn drop(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for stream in self
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(
    listener: &TcpListener,
    back: u16,
    closed: &AtomicBool,
    streams: &Mutex<Vec<TcpStream>>,
) {
    while !closed.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(_) => {
                sleep(Duration::from_millis(2));
                continue;
            }
        };
        let _ = client.set_nonblocking(false);
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, back));
        let Ok(server) = TcpStream::connect_timeout(&address, Duration::from_secs(1)) else {
            continue; // the client sees its connection closed
        };
        let _ = (client.set_nodelay(true), server.set_nodelay(true));
        let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        {
            let mut all = streams.lock().unwrap_or_else(PoisonError::into_inner);
            let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) else {
                continue;
            };
            all.extend([c, s]);
        }
        std::thread::spawn(move || pump(client, server));
        std::thread::spawn(move || pump(server2, client2));
    }
}

/// Copies `from` to `to` until either side closes, then shuts both down.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// A PostgreSQL cluster of its own (`initdb` into a temporary directory) on a
/// private port of 127.0.0.1, with its Unix socket in that directory.
pub(crate) struct PrivatePostgres {
    bin: PathBuf,
    user: Option<String>,
    dir: PathBuf,
    port: u16,
    watchdog: Watchdog,
}

impl PrivatePostgres {
    /// Creates and starts a cluster with the programs in `bin`, run as `user` (through
    /// `runuser`) when given.
    pub(crate) fn start(bin: &str, user: Option<String>) -> Self {
        let dir = private_dir("outbox-pg", user.as_deref());
        let watchdog = Watchdog::spawn(&dir, &[dir.join("data/postmaster.pid")]);
        let pg = Self {
            bin: PathBuf::from(bin),
            user,
            port: free_port(),
            dir,
            watchdog,
        };
        let mut initdb = pg.command("initdb");
        initdb.arg("-D").arg(pg.data());
        initdb.args(["-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"]);
        initdb.arg("--no-locale");
        run("initdb", &mut initdb);
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off",
            pg.port,
            pg.dir.display()
        );
        let mut pg_ctl = pg.pg_ctl();
        pg_ctl.args(["-o", &options, "start"]);
        run("pg_ctl start", &mut pg_ctl);
        pg
    }

    /// The URL of the `postgres` database, as the `postgres` superuser.
    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The postmaster's PID, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        let text = fs::read_to_string(self.data().join("postmaster.pid")).ok()?;
        let pid = text.lines().next()?.trim().parse().ok()?;
        process_matches(pid, &self.data()).then_some(pid)
    }

    /// `pg_ctl restart -m fast`: disconnects every client, shuts down cleanly and
    /// starts again with the same options. Returns once the server accepts
    /// connections again.
    pub(crate) fn restart(&self) {
        let mut pg_ctl = self.pg_ctl();
        pg_ctl.args(["-m", "fast", "restart"]);
        run("pg_ctl restart", &mut pg_ctl);
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `pg_ctl -D <data> -l <log> -w -t 30`.
    fn pg_ctl(&self) -> Command {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D").arg(self.data());
        cmd.arg("-l").arg(self.dir.join("server.log"));
        cmd.args(["-w", "-t", &PATIENCE.as_secs().to_string()]);
        cmd
    }

    /// `program` of the PostgreSQL binaries, run as the configured user, in `dir`.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut cmd = match &self.user {
            Some(user) => {
                let mut cmd = Command::new("runuser");
                cmd.args(["-u", user, "--"]).arg(path);
                cmd
            }
            None => Command::new(path),
        };
        cmd.current_dir(&self.dir);
        cmd
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            // Fast shutdown, then immediate, then SIGKILL.
            stop_pid(
                pid,
                &self.data(),
                &[
                    (Signal::SIGINT, Duration::from_secs(5)),
                    (Signal::SIGQUIT, Duration::from_secs(5)),
                    (Signal::SIGKILL, Duration::from_secs(5)),
                ],
            );
        }
        self.watchdog.disarm();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
