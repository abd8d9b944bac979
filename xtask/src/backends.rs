//! Real PostgreSQL and MariaDB servers and Kafka- and Pulsar-protocol brokers
//! for the tests, on 127.0.0.1.
//!
//! `cargo xtask test` starts them in a fresh `target/xtask-backends/test-<pid>`
//! directory and stops them (and deletes the directory) when the tests end,
//! through the [`Backends`] drop guard. `cargo xtask backends start|stop`
//! starts them in `target/xtask-backends/dev` (or `--dir DIR`) and leaves them
//! running for `cargo nextest run -p ...`, until `backends stop`.
//!
//! The database servers come from the distribution's packages (`apt-get
//! install` when they are missing and we are root). When we are root,
//! PostgreSQL runs as the `postgres` user and MariaDB as `mysql`; otherwise
//! both run as the current user. The Kafka broker is tansu, built once per
//! machine with `cargo install`; it keeps its data in memory. The Pulsar
//! broker is pulsar-lite, installed once per machine from PyPI with the
//! Python client the tests read messages back with (see [`crate::tools`]);
//! it keeps its data in a RocksDB store in its directory. Both brokers run as
//! the current user. Teardown signals exactly the PIDs recorded at start-up,
//! and only while `/proc/<pid>/cmdline` still names the server's data
//! directory, so a recycled PID is never hit. Layout of a backends directory:
//!
//! ```text
//! postgres/data/           initdb's cluster
//! postgres/.s.PGSQL.<port> Unix socket
//! postgres/server.log
//! mariadb/data/            mariadb-install-db's data directory
//! mariadb/mysqld.sock      Unix socket (xtask's own admin connection)
//! mariadb/server.log
//! kafka/tansu              symlink to the cached tansu binary, run through
//!                          it so that its command line names this directory
//! kafka/.env               empty: keeps tansu from loading a `.env` above
//! kafka/server.log
//! pulsar/pulsar-lite       symlink to the cached pulsar-lite binary, run
//!                          through it for the same reason
//! pulsar/cfg.toml          its configuration: data path, no metrics endpoint
//! pulsar/data.rocksdb/     its store (pulsar-lite appends `.rocksdb` to the
//!                          configured `pulsar/data`)
//! pulsar/server.log
//! pids                     `<server> <pid> <data dir>`, one line per server
//!                          (for a broker, `<data dir>` is `kafka/` or
//!                          `pulsar/`)
//! env                      `export OUTBOX_TEST_...=...` lines: the servers'
//!                          addresses, and the programs the tests run
//!                          private servers with (PostgreSQL's, tansu)
//! ```

use std::fs;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::note;
use crate::system::{apt_install, find_program, is_root};
use crate::tools::{PULSAR_LITE_VERSION, PulsarLite, TansuBuild, ensure_pulsar_lite, ensure_tansu};

/// The admin URL of the PostgreSQL server, read by the tests.
pub(crate) const POSTGRES_URL_VAR: &str = "OUTBOX_TEST_POSTGRES_URL";
/// The admin URL of the MariaDB server, read by the tests.
pub(crate) const MYSQL_URL_VAR: &str = "OUTBOX_TEST_MYSQL_URL";
/// The Kafka broker's `host:port`, read by the tests.
pub(crate) const KAFKA_BOOTSTRAP_VAR: &str = "OUTBOX_TEST_KAFKA_BOOTSTRAP";
/// The Pulsar broker's `pulsar://host:port` URL, read by the tests.
pub(crate) const PULSAR_URL_VAR: &str = "OUTBOX_TEST_PULSAR_URL";
/// The `PYTHONPATH` under which `python3` can `import pulsar` (the official
/// client), set along with [`PULSAR_URL_VAR`]: the tests read messages back
/// with it.
pub(crate) const PULSAR_PYTHONPATH_VAR: &str = "OUTBOX_TEST_PULSAR_PYTHONPATH";
/// The directory holding PostgreSQL's `initdb`, `pg_ctl` and `postgres`, for
/// the tests that run a private cluster of their own (and restart it).
pub(crate) const POSTGRES_BIN_VAR: &str = "OUTBOX_TEST_POSTGRES_BIN";
/// The OS user those tests run PostgreSQL as, set when xtask runs as root
/// (PostgreSQL refuses to run as root).
pub(crate) const POSTGRES_USER_VAR: &str = "OUTBOX_TEST_POSTGRES_USER";
/// The tansu binary, for the tests that run a private Kafka broker of their
/// own (and stop it).
pub(crate) const TANSU_VAR: &str = "OUTBOX_TEST_TANSU";

/// The MariaDB account the tests use over TCP; it holds every privilege.
const MYSQL_USER: &str = "outbox";
const MYSQL_PASSWORD: &str = "outbox";

const PIDS_FILE: &str = "pids";
const ENV_FILE: &str = "env";
/// `sun_path` holds 108 bytes, the terminating NUL included.
const MAX_SOCKET_PATH: usize = 107;
/// How long MariaDB gets to answer `mariadb-admin ping`.
const MARIADB_START_TIMEOUT: Duration = Duration::from_secs(30);
/// `pg_ctl start -w -t <seconds>`.
const POSTGRES_START_TIMEOUT_SECS: &str = "30";
/// How long tansu gets to accept a TCP connection (it takes well under a
/// second).
const KAFKA_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Environment variables tansu reads as defaults for its options (`.env`
/// files included), removed so that none reaches the broker from the
/// caller's environment: with OTEL_EXPORTER_OTLP_ENDPOINT, for one, it would
/// start exporting metrics.
const TANSU_ENV_VARS: &[&str] = &[
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];
/// How long pulsar-lite gets to accept a TCP connection (it takes well under
/// a second).
const PULSAR_START_TIMEOUT: Duration = Duration::from_secs(30);
/// pulsar-lite's configuration file, in its directory.
const PULSAR_CONFIG_FILE: &str = "cfg.toml";

/// One of the servers xtask knows how to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Postgres,
    Mariadb,
    /// A Kafka-protocol broker: tansu.
    Kafka,
    /// A Pulsar-protocol broker: pulsar-lite.
    Pulsar,
}

impl Kind {
    /// Everything `cargo xtask test` and `backends start` run.
    pub(crate) const ALL: [Self; 4] = [Self::Postgres, Self::Mariadb, Self::Kafka, Self::Pulsar];
    /// The SQL databases (`cargo xtask bench`).
    pub(crate) const DATABASES: [Self; 2] = [Self::Postgres, Self::Mariadb];

    /// The name in the pids file, and the server's subdirectory.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Mariadb => "mariadb",
            Self::Kafka => "kafka",
            Self::Pulsar => "pulsar",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }

    pub(crate) fn title(self) -> &'static str {
        match self {
            Self::Postgres => "PostgreSQL",
            Self::Mariadb => "MariaDB",
            Self::Kafka => "Kafka (tansu)",
            Self::Pulsar => "Pulsar (pulsar-lite)",
        }
    }

    pub(crate) fn env_var(self) -> &'static str {
        match self {
            Self::Postgres => POSTGRES_URL_VAR,
            Self::Mariadb => MYSQL_URL_VAR,
            Self::Kafka => KAFKA_BOOTSTRAP_VAR,
            Self::Pulsar => PULSAR_URL_VAR,
        }
    }

    /// The OS user the server runs as when xtask runs as root; `None`: it
    /// runs as whoever runs xtask (the brokers' data is thrown away, and
    /// neither refuses root, unlike the databases).
    fn os_user(self) -> Option<&'static str> {
        match self {
            Self::Postgres => Some("postgres"),
            Self::Mariadb => Some("mysql"),
            Self::Kafka | Self::Pulsar => None,
        }
    }

    /// Signals for a clean stop, each with how long to wait before the next.
    /// PostgreSQL: fast shutdown, then immediate, then SIGKILL. MariaDB:
    /// normal shutdown, then SIGKILL. tansu: SIGTERM, on which it gives open
    /// connections up to 5 s to finish, then SIGKILL. pulsar-lite: SIGTERM,
    /// on which it exits at once, then SIGKILL.
    fn stop_signals(self) -> &'static [(&'static str, u64)] {
        match self {
            Self::Postgres => &[("INT", 10), ("QUIT", 5), ("KILL", 5)],
            Self::Mariadb => &[("TERM", 30), ("KILL", 5)],
            Self::Kafka | Self::Pulsar => &[("TERM", 10), ("KILL", 5)],
        }
    }

    /// The signal the watchdog sends when xtask dies mid-run: the data is
    /// thrown away, so there is nothing to shut down cleanly.
    fn watchdog_signal(self) -> &'static str {
        match self {
            // SIGQUIT is PostgreSQL's immediate shutdown: the postmaster takes
            // its backends down with it, which SIGKILL would not do.
            Self::Postgres => "QUIT",
            Self::Mariadb | Self::Kafka | Self::Pulsar => "KILL",
        }
    }
}

/// The servers xtask has started, stopped again when this guard drops unless
/// [`Backends::keep_running`] disarmed it.
pub(crate) struct Backends {
    dir: PathBuf,
    /// How the servers are configured: for tests, or for benchmarks.
    profile: Profile,
    /// The workspace's root, for the tools cache.
    workspace_root: PathBuf,
    root: bool,
    servers: Vec<Server>,
    env: Vec<(&'static str, String)>,
    /// Each started server's title with its version.
    titles: Vec<(Kind, String)>,
    on_drop: OnDrop,
    watchdog: Option<Watchdog>,
}

/// How xtask configures the servers it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Profile {
    /// `test` and `backends start`: PostgreSQL without fsync or synchronous commit
    /// (the data is thrown away; durability would only slow the tests down).
    Test,
    /// `bench`: PostgreSQL durable, as in production ([`BENCH_POSTGRES_SETTINGS`]).
    Bench,
}

impl Profile {
    /// The tansu build the profile's broker runs.
    fn tansu_build(self) -> TansuBuild {
        match self {
            Self::Test => TansuBuild::Debug,
            Self::Bench => TansuBuild::Release,
        }
    }
}

/// The PostgreSQL settings of `cargo xtask bench`, beyond initdb's defaults: durable
/// commits (fsync, synchronous commit and full-page writes on, as in production), a
/// buffer cache large enough for every benchmark table, and checkpoints spaced so that
/// none falls in the middle of a measured run by size. docs/benchmarks.md lists them.
pub(crate) const BENCH_POSTGRES_SETTINGS: &[(&str, &str)] = &[
    ("fsync", "on"),
    ("synchronous_commit", "on"),
    ("full_page_writes", "on"),
    ("shared_buffers", "1GB"),
    ("max_wal_size", "8GB"),
    ("checkpoint_timeout", "30min"),
    ("max_connections", "300"),
    // The drain scenario reads where the relay's database time goes from it.
    ("shared_preload_libraries", "pg_stat_statements"),
    ("track_io_timing", "on"),
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum OnDrop {
    /// `cargo xtask test`: stop the servers and delete the directory.
    StopAndRemove,
    /// `cargo xtask backends start` failed half-way: stop what started, keep
    /// the logs.
    Stop,
    /// `cargo xtask backends start` succeeded: leave everything running.
    Nothing,
}

struct Server {
    kind: Kind,
    pid: u32,
    data_dir: PathBuf,
    /// MariaDB and the brokers in this process's run; PostgreSQL is pg_ctl's
    /// child.
    child: Option<Child>,
}

/// A line of the pids file.
#[derive(Debug, PartialEq, Eq)]
struct PidEntry {
    kind: Kind,
    pid: u32,
    data_dir: PathBuf,
}

impl Backends {
    /// No servers: `cargo xtask test --no-backends`.
    pub(crate) fn none() -> Self {
        Self {
            dir: PathBuf::new(),
            profile: Profile::Test,
            workspace_root: PathBuf::new(),
            root: false,
            servers: Vec::new(),
            env: Vec::new(),
            titles: Vec::new(),
            on_drop: OnDrop::Nothing,
            watchdog: None,
        }
    }

    /// Starts the servers of `wanted` (for `cargo xtask test`, or `bench`) in a
    /// fresh directory under `target/xtask-backends/`. A server whose variable
    /// is already set is not started: the tests use the one the variable names.
    pub(crate) fn for_tests(workspace_root: &Path, wanted: &[Kind]) -> Result<Self> {
        Self::start_fresh(workspace_root, wanted, Profile::Test)
    }

    /// Starts the servers of `wanted` for `cargo xtask bench`, configured with
    /// [`Profile::Bench`], always its own: servers named by `OUTBOX_TEST_*` variables
    /// are not used, since their configuration is unknown.
    pub(crate) fn for_bench(workspace_root: &Path, wanted: &[Kind]) -> Result<Self> {
        Self::start_fresh(workspace_root, wanted, Profile::Bench)
    }

    fn start_fresh(workspace_root: &Path, wanted: &[Kind], profile: Profile) -> Result<Self> {
        let mut kinds = Vec::new();
        for &kind in wanted {
            match std::env::var(kind.env_var()) {
                Ok(url) if !url.is_empty() && profile == Profile::Test => note(&format!(
                    "{} is set: the tests use {url}; not starting {}",
                    kind.env_var(),
                    kind.title()
                )),
                _ => kinds.push(kind),
            }
        }
        // The programs of the private-server tests, for the servers that run
        // elsewhere: only when already at hand (nothing is installed or built
        // for them).
        let external: Vec<Kind> = wanted
            .iter()
            .filter(|kind| !kinds.contains(kind))
            .copied()
            .collect();
        if kinds.is_empty() {
            let mut backends = Self::none();
            backends.root = is_root()?;
            backends.export_programs_at_hand(&external, workspace_root);
            return Ok(backends);
        }

        let parent = backends_root(workspace_root);
        sweep_stale_test_dirs(&parent);
        let dir = parent.join(format!("test-{}", std::process::id()));
        if dir.exists() {
            // Left by an earlier process with our PID: its servers are gone
            // (sweep_stale_test_dirs stopped them), its files are not.
            fs::remove_dir_all(&dir)
                .with_context(|| format!("could not remove stale {}", dir.display()))?;
        }
        create_dir(&dir)?;
        let mut backends = Self::new(dir, workspace_root, OnDrop::StopAndRemove)?;
        backends.profile = profile;
        backends.watchdog = Some(Watchdog::spawn(&backends.dir)?);
        backends.start(&kinds)?;
        backends.export_programs_at_hand(&external, workspace_root);
        Ok(backends)
    }

    fn new(dir: PathBuf, workspace_root: &Path, on_drop: OnDrop) -> Result<Self> {
        Ok(Self {
            dir,
            profile: Profile::Test,
            workspace_root: workspace_root.to_path_buf(),
            root: is_root()?,
            servers: Vec::new(),
            env: Vec::new(),
            titles: Vec::new(),
            on_drop,
            watchdog: None,
        })
    }

    /// The `OUTBOX_TEST_*` variables for the servers started here.
    pub(crate) fn env(&self) -> &[(&'static str, String)] {
        &self.env
    }

    /// Disarms the drop guard: the servers outlive this process.
    fn keep_running(mut self) {
        self.on_drop = OnDrop::Nothing;
    }

    fn start(&mut self, kinds: &[Kind]) -> Result<()> {
        let tools = Tools::ensure_installed(kinds, &self.workspace_root, self.profile)?;
        let titles: Vec<&str> = kinds.iter().map(|kind| kind.title()).collect();
        note(&format!(
            "starting {} in {}",
            join_words(&titles),
            self.dir.display()
        ));
        // Hold every port until all are chosen, so no two servers get the
        // same one; the servers bind them a moment later.
        let listeners = kinds
            .iter()
            .map(|_| TcpListener::bind(("127.0.0.1", 0)))
            .collect::<std::io::Result<Vec<_>>>()
            .context("could not find a free port on 127.0.0.1")?;
        let ports = listeners
            .iter()
            .map(|listener| listener.local_addr().map(|addr| addr.port()))
            .collect::<std::io::Result<Vec<_>>>()?;
        drop(listeners);

        for (&kind, port) in kinds.iter().zip(ports) {
            match kind {
                Kind::Postgres => self.start_postgres(tools.postgres()?, port)?,
                Kind::Mariadb => self.start_mariadb(tools.mariadb()?, port)?,
                Kind::Kafka => self.start_kafka(tools.tansu()?, port)?,
                Kind::Pulsar => self.start_pulsar(tools.pulsar()?, port)?,
            }
        }
        self.export_programs(kinds, &tools);
        Ok(())
    }

    /// Sets [`POSTGRES_BIN_VAR`] (with [`POSTGRES_USER_VAR`] when root) for
    /// [`Kind::Postgres`] and [`TANSU_VAR`] for [`Kind::Kafka`] among `kinds`,
    /// from `tools`, unless the caller's environment already sets them.
    fn export_programs(&mut self, kinds: &[Kind], tools: &Tools) {
        let mut env = Vec::new();
        if kinds.contains(&Kind::Postgres)
            && let Some(pg) = &tools.postgres
        {
            env.push((POSTGRES_BIN_VAR, pg.bin.to_string_lossy().into_owned()));
            if let Some(user) = self.os_user(Kind::Postgres) {
                env.push((POSTGRES_USER_VAR, user.to_owned()));
            }
        }
        if kinds.contains(&Kind::Kafka)
            && let Some(tansu) = &tools.tansu
        {
            env.push((TANSU_VAR, tansu.to_string_lossy().into_owned()));
        }
        for (var, value) in env {
            if std::env::var_os(var).is_none_or(|given| given.is_empty()) {
                self.env.push((var, value));
            }
        }
    }

    /// [`Self::export_programs`] for servers xtask does not start: PostgreSQL's
    /// programs if installed, tansu if already built.
    fn export_programs_at_hand(&mut self, kinds: &[Kind], workspace_root: &Path) {
        let mut tools = Tools::find();
        // Where `ensure_tansu` caches the binary; not built here, since the
        // shared broker runs elsewhere.
        let cached = crate::tools::tools_root(workspace_root)
            .join(TansuBuild::Debug.dir_name())
            .join("bin")
            .join("tansu");
        tools.tansu = cached.is_file().then_some(cached);
        self.export_programs(kinds, &tools);
        for (kind, var) in [(Kind::Postgres, POSTGRES_BIN_VAR), (Kind::Kafka, TANSU_VAR)] {
            if kinds.contains(&kind)
                && std::env::var_os(var).is_none_or(|given| given.is_empty())
                && !self.env.iter().any(|(name, _)| *name == var)
            {
                note(&format!(
                    "{var} is not set and the program is not at hand: the tests with a \
                     private {} skip (or fail, under CI); set it",
                    kind.title()
                ));
            }
        }
    }

    fn start_postgres(&mut self, pg: &PostgresTools, port: u16) -> Result<()> {
        let started = Instant::now();
        let user = self.os_user(Kind::Postgres);
        let home = self.dir.join(Kind::Postgres.name());
        prepare_server_dir(&home, user)?;
        check_socket_path(&home.join(format!(".s.PGSQL.{port}")))?;
        let data = home.join("data");
        let log = home.join("server.log");

        let mut initdb = run_as(user, &pg.bin.join("initdb"));
        initdb.arg("-D").arg(&data);
        initdb.args(["-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"]);
        // The C locale: the same collation on every machine.
        initdb.arg("--no-locale");
        initdb.current_dir(&home);
        run_captured("initdb", &mut initdb, None)?;

        let settings: String = match self.profile {
            Profile::Test => "-c max_connections=300 -c fsync=off -c synchronous_commit=off \
                              -c full_page_writes=off"
                .to_owned(),
            Profile::Bench => BENCH_POSTGRES_SETTINGS
                .iter()
                .map(|(name, value)| format!("-c {name}={value}"))
                .collect::<Vec<_>>()
                .join(" "),
        };
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} {settings}",
            shell_quote(&home.to_string_lossy())
        );
        let mut pg_ctl = run_as(user, &pg.bin.join("pg_ctl"));
        pg_ctl.arg("-D").arg(&data).arg("-l").arg(&log);
        pg_ctl.args([
            "-w",
            "-t",
            POSTGRES_START_TIMEOUT_SECS,
            "-o",
            &options,
            "start",
        ]);
        pg_ctl.current_dir(&home);
        let outcome = run_captured("pg_ctl start", &mut pg_ctl, Some(&log));

        // Record the postmaster even when pg_ctl gave up waiting on it, so
        // the guard stops it.
        if let Some(pid) = read_postmaster_pid(&data)
            && process_matches(pid, &data)
        {
            self.record(Server {
                kind: Kind::Postgres,
                pid,
                data_dir: data.clone(),
                child: None,
            })?;
        }
        outcome?;
        if !self.servers.iter().any(|s| s.kind == Kind::Postgres) {
            bail!(
                "pg_ctl reported success but no postmaster runs for {}\n{}",
                data.display(),
                log_tail(&log)
            );
        }
        self.ready(
            Kind::Postgres,
            &format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            &format!("PostgreSQL {}", pg.version),
            port,
            started,
        )
    }

    fn start_mariadb(&mut self, tools: &MariadbTools, port: u16) -> Result<()> {
        let started = Instant::now();
        let user = self.os_user(Kind::Mariadb);
        let home = self.dir.join(Kind::Mariadb.name());
        prepare_server_dir(&home, user)?;
        let socket = home.join("mysqld.sock");
        check_socket_path(&socket)?;
        let data = home.join("data");
        let log = home.join("server.log");

        // Options both the bootstrap and the server get.
        let common = [
            "--no-defaults".to_owned(),
            format!("--datadir={}", data.display()),
            // A 16 MiB redo log instead of 96 MiB: quicker to create, and the
            // tests never fill it.
            "--innodb-log-file-size=16M".to_owned(),
            "--skip-name-resolve".to_owned(),
            // No fsync at all (the data is thrown away). Without it, every
            // DDL statement syncs the atomic-DDL and Aria logs: the bootstrap
            // alone makes ~1000 fdatasync calls, 4 s on a busy disk instead
            // of 0.7 s, and the tests create a database each.
            "--debug-no-sync".to_owned(),
        ];
        let user_arg = user.map(|user| format!("--user={user}"));

        let mut install = Command::new(&tools.install_db);
        install.args(&common).args(&user_arg);
        install.args(["--auth-root-authentication-method=normal", "--skip-test-db"]);
        install.current_dir(&home);
        run_captured("mariadb-install-db", &mut install, None)?;

        let mut server = Command::new(&tools.server);
        server.args(&common).args(&user_arg);
        server.arg(format!("--socket={}", socket.display()));
        server.args(["--bind-address=127.0.0.1", &format!("--port={port}")]);
        server.args([
            "--max-connections=500",
            "--innodb-flush-log-at-trx-commit=0",
            "--innodb-buffer-pool-size=256M",
            "--skip-log-bin",
            // Debian's packaged configuration sets these; --no-defaults
            // would otherwise leave 10.11's latin1.
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_general_ci",
        ]);
        server.current_dir(&home);
        self.spawn(Kind::Mariadb, server, &data, &log)?;

        self.wait_until_up(
            Kind::Mariadb,
            started,
            MARIADB_START_TIMEOUT,
            "answer `mariadb-admin ping`",
            &log,
            || {
                let mut ping = Command::new(&tools.admin);
                ping.args(["--no-defaults", "--connect-timeout=1", "-u", "root"]);
                ping.arg(format!("--socket={}", socket.display()))
                    .arg("ping");
                ping.output().is_ok_and(|out| out.status.success())
            },
        )?;

        let mut sql = String::new();
        for host in ["127.0.0.1", "localhost"] {
            let account = format!("'{MYSQL_USER}'@'{host}'");
            sql.push_str(&format!(
                "CREATE USER {account} IDENTIFIED BY '{MYSQL_PASSWORD}'; \
                 GRANT ALL PRIVILEGES ON *.* TO {account} WITH GRANT OPTION; "
            ));
        }
        let mut client = Command::new(&tools.client);
        client.args(["--no-defaults", "-u", "root"]);
        client.arg(format!("--socket={}", socket.display()));
        client.args(["-e", &sql]);
        run_captured("create the MariaDB user", &mut client, Some(&log))?;

        self.ready(
            Kind::Mariadb,
            &format!("mysql://{MYSQL_USER}:{MYSQL_PASSWORD}@127.0.0.1:{port}/mysql"),
            &format!("MariaDB {}", tools.version()),
            port,
            started,
        )
    }

    /// tansu, in memory, listening on (and advertising) 127.0.0.1:`port`.
    fn start_kafka(&mut self, tansu: &Path, port: u16) -> Result<()> {
        let started = Instant::now();
        let home = self.dir.join(Kind::Kafka.name());
        prepare_server_dir(&home, self.os_user(Kind::Kafka))?;
        // tansu loads a `.env` from its working directory or the nearest
        // parent that has one; an empty one here keeps the workspace's (or
        // anyone's above it) out.
        fs::write(home.join(".env"), "")?;
        // Run through a symlink in `home`: it becomes argv[0], so the
        // broker's command line names `home`, which is what stop_server and
        // the watchdog check before signalling a PID.
        let link = home.join("tansu");
        std::os::unix::fs::symlink(tansu, &link)
            .with_context(|| format!("could not create {}", link.display()))?;
        let log = home.join("server.log");

        // tansu binds the host of --listener-url as given (0.0.0.0 by
        // default), and opens no other port unless given an OTLP endpoint.
        let url = format!("tcp://127.0.0.1:{port}");
        let mut broker = Command::new(&link);
        broker.args(["broker", "--listener-url", &url]);
        broker.args(["--advertised-listener-url", &url]);
        broker.args(["--storage-engine", "memory://tansu/"]);
        for var in TANSU_ENV_VARS {
            broker.env_remove(var);
        }
        // Warnings and errors only: at `info`, tansu logs every span of every
        // request (some 80 lines for an ApiVersions). No ANSI colours in the
        // log file.
        broker.env("RUST_LOG", "warn").env("NO_COLOR", "1");
        broker.current_dir(&home);
        self.spawn(Kind::Kafka, broker, &home, &log)?;

        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        self.wait_until_up(
            Kind::Kafka,
            started,
            KAFKA_START_TIMEOUT,
            &format!("accept a connection on {address}"),
            &log,
            || TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_ok(),
        )?;
        self.ready(
            Kind::Kafka,
            &address.to_string(),
            &self.profile.tansu_build().title(),
            port,
            started,
        )
    }

    /// pulsar-lite, listening on 127.0.0.1:`port`, with its store in its
    /// directory. Also sets [`PULSAR_PYTHONPATH_VAR`].
    fn start_pulsar(&mut self, pulsar: &PulsarLite, port: u16) -> Result<()> {
        let started = Instant::now();
        let home = self.dir.join(Kind::Pulsar.name());
        prepare_server_dir(&home, self.os_user(Kind::Pulsar))?;
        // As for tansu: the command line names `home` through argv[0] (and
        // the configuration's path).
        let link = home.join("pulsar-lite");
        std::os::unix::fs::symlink(&pulsar.binary, &link)
            .with_context(|| format!("could not create {}", link.display()))?;
        let log = home.join("server.log");

        // pulsar-lite reads its settings from this file only (RUST_LOG plays
        // no part). Without `[metrics] enabled = false` it would also open a
        // Prometheus endpoint; at `info`, it logs every acknowledgement.
        let config = home.join(PULSAR_CONFIG_FILE);
        fs::write(&config, pulsar_config(&home.join("data"))?)
            .with_context(|| format!("could not write {}", config.display()))?;

        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut broker = Command::new(&link);
        broker.arg("--config").arg(&config);
        broker.args(["--addr", &address.to_string()]);
        broker.current_dir(&home);
        self.spawn(Kind::Pulsar, broker, &home, &log)?;

        self.wait_until_up(
            Kind::Pulsar,
            started,
            PULSAR_START_TIMEOUT,
            &format!("accept a connection on {address}"),
            &log,
            || TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_ok(),
        )?;
        self.ready(
            Kind::Pulsar,
            &format!("pulsar://{address}"),
            &format!("pulsar-lite {PULSAR_LITE_VERSION}"),
            port,
            started,
        )?;
        self.env.push((
            PULSAR_PYTHONPATH_VAR,
            pulsar.site.to_string_lossy().into_owned(),
        ));
        Ok(())
    }

    /// The OS user to run `kind` as: none unless we are root.
    fn os_user(&self, kind: Kind) -> Option<&'static str> {
        if self.root { kind.os_user() } else { None }
    }

    /// Starts a server that stays in the foreground, as xtask's child, with
    /// its output in `log`, and records it. `cmd` must name `data_dir` on the
    /// command line (see [`process_matches`]).
    fn spawn(&mut self, kind: Kind, mut cmd: Command, data_dir: &Path, log: &Path) -> Result<()> {
        let log_file =
            fs::File::create(log).with_context(|| format!("could not create {}", log.display()))?;
        cmd.stdin(Stdio::null());
        cmd.stdout(log_file.try_clone()?).stderr(log_file);
        // Its own process group: Ctrl-C in the terminal reaches xtask (whose
        // watchdog or guard stops the server), not the server itself, and a
        // server from `backends start` outlives xtask.
        cmd.process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("could not start `{}`", crate::command_line(&cmd)))?;
        self.record(Server {
            kind,
            pid: child.id(),
            data_dir: data_dir.to_path_buf(),
            child: Some(child),
        })
    }

    /// Polls `probe` until it succeeds; fails if the server (started by
    /// [`Self::spawn`]) exits, or `timeout` after `started`. `what` completes
    /// "did not ... within N s".
    fn wait_until_up(
        &mut self,
        kind: Kind,
        started: Instant,
        timeout: Duration,
        what: &str,
        log: &Path,
        mut probe: impl FnMut() -> bool,
    ) -> Result<()> {
        let deadline = started + timeout;
        loop {
            if probe() {
                return Ok(());
            }
            if let Some(server) = self.servers.iter_mut().rfind(|server| server.kind == kind)
                && let Some(child) = server.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!(
                    "{} exited during start-up ({status})\n{}",
                    kind.title(),
                    log_tail(log)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not {what} within {}s\n{}",
                    kind.title(),
                    timeout.as_secs(),
                    log_tail(log)
                );
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// Announces a server that is up, and sets its variable to `value`.
    fn ready(
        &mut self,
        kind: Kind,
        value: &str,
        title: &str,
        port: u16,
        started: Instant,
    ) -> Result<()> {
        note(&format!(
            "{title} ready on 127.0.0.1:{port} in {}",
            seconds(started.elapsed())
        ));
        self.env.push((kind.env_var(), value.to_owned()));
        self.titles.push((kind, title.to_owned()));
        Ok(())
    }

    /// The process id of the server of `kind` started here, if any.
    pub(crate) fn pid(&self, kind: Kind) -> Option<u32> {
        self.servers.iter().find(|s| s.kind == kind).map(|s| s.pid)
    }

    /// What each server started here is, with its version (e.g. "PostgreSQL 15.18").
    pub(crate) fn titles(&self) -> &[(Kind, String)] {
        &self.titles
    }

    /// Adds a started server to the pids file and to the watchdog's list.
    fn record(&mut self, server: Server) -> Result<()> {
        if let Some(watchdog) = self.watchdog.as_mut() {
            watchdog.watch(server.kind, server.pid);
        }
        self.servers.push(server);
        let entries: Vec<PidEntry> = self
            .servers
            .iter()
            .map(|server| PidEntry {
                kind: server.kind,
                pid: server.pid,
                data_dir: server.data_dir.clone(),
            })
            .collect();
        let path = self.dir.join(PIDS_FILE);
        fs::write(&path, format_pids(&entries))
            .with_context(|| format!("could not write {}", path.display()))
    }

    fn write_env_file(&self) -> Result<PathBuf> {
        let path = self.dir.join(ENV_FILE);
        fs::write(&path, format_env(&self.env))
            .with_context(|| format!("could not write {}", path.display()))?;
        Ok(path)
    }

    /// Stops every server, newest first; reports the first failure after
    /// trying them all.
    fn stop_all(&mut self) -> Result<()> {
        let mut first_error = None;
        while let Some(mut server) = self.servers.pop() {
            if let Err(err) = stop_server(server.kind, server.pid, &server.data_dir) {
                first_error.get_or_insert(err);
            }
            if let Some(child) = server.child.as_mut() {
                // Reap it; it is gone, or stop_server reported why not.
                let _ = child.try_wait();
            }
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        if self.on_drop == OnDrop::Nothing {
            return;
        }
        let result = self.stop_all();
        if let Err(err) = &result {
            eprintln!("[xtask] warning: {err:#}");
        }
        if let Some(watchdog) = self.watchdog.take() {
            // After a failed stop, let the watchdog have a go with SIGKILL.
            watchdog.finish(result.is_ok());
        }
        if self.on_drop == OnDrop::StopAndRemove && result.is_ok() {
            if let Err(err) = fs::remove_dir_all(&self.dir) {
                eprintln!(
                    "[xtask] warning: could not remove {}: {err}",
                    self.dir.display()
                );
            }
        } else if self.on_drop == OnDrop::Stop && result.is_ok() {
            // Kept after a failed stop, for `cargo xtask backends stop`.
            let _ = fs::remove_file(self.dir.join(PIDS_FILE));
        }
    }
}

/// `cargo xtask backends start|stop [--dir DIR]`.
pub(crate) fn command(args: &[String], workspace_root: &Path) -> Result<()> {
    let (action, rest) = args
        .split_first()
        .context("`cargo xtask backends` needs `start` or `stop` (see `cargo xtask help`)")?;
    let default_dir = backends_root(workspace_root).join("dev");
    let dir = match rest {
        [] => default_dir.clone(),
        [flag, dir] if flag == "--dir" => std::path::absolute(dir)?,
        [flag] if flag.starts_with("--dir=") => std::path::absolute(&flag["--dir=".len()..])?,
        _ => bail!("`cargo xtask backends {action}` takes only `--dir DIR`, got {rest:?}"),
    };
    // How to name this directory in the advice we print.
    let dir_flag = if dir == default_dir {
        String::new()
    } else {
        format!(" --dir {}", shell_quote(&dir.to_string_lossy()))
    };
    match action.as_str() {
        "start" => start_dev(&dir, &dir_flag, workspace_root),
        "stop" => stop_dev(&dir),
        other => bail!("unknown `cargo xtask backends` action `{other}`: use `start` or `stop`"),
    }
}

fn start_dev(dir: &Path, dir_flag: &str, workspace_root: &Path) -> Result<()> {
    let live = live_entries(dir)?;
    if !live.is_empty() {
        let list: Vec<String> = live
            .iter()
            .map(|entry| format!("{} (pid {}) is", entry.kind.title(), entry.pid))
            .collect();
        bail!(
            "{} already running in {}; use {} or stop {} with `cargo xtask backends stop{dir_flag}`",
            join_words(&list.iter().map(String::as_str).collect::<Vec<_>>()),
            dir.display(),
            dir.join(ENV_FILE).display(),
            if live.len() == 1 { "it" } else { "them" },
        );
    }
    if dir.exists() {
        let names = fs::read_dir(dir)
            .with_context(|| format!("could not list {}", dir.display()))?
            .map(|entry| entry.map(|entry| entry.file_name().to_string_lossy().into_owned()))
            .collect::<std::io::Result<Vec<_>>>()?;
        if !looks_like_backends_dir(&names) {
            bail!(
                "{} holds files xtask did not write; pick another --dir",
                dir.display()
            );
        }
        fs::remove_dir_all(dir).with_context(|| format!("could not empty {}", dir.display()))?;
    }
    create_dir(dir)?;

    let mut backends = Backends::new(dir.to_path_buf(), workspace_root, OnDrop::Stop)?;
    backends.start(&Kind::ALL)?;
    let env_file = backends.write_env_file()?;
    // stdout carries only the export lines, so that
    // `eval "$(cargo xtask backends start)"` works.
    print!("{}", format_env(backends.env()));
    note(&format!(
        "the servers keep running; `source {}` to use them, \
         `cargo xtask backends stop{dir_flag}` to stop them",
        env_file.display()
    ));
    backends.keep_running();
    Ok(())
}

fn stop_dev(dir: &Path) -> Result<()> {
    let pids = dir.join(PIDS_FILE);
    if !pids.exists() {
        note(&format!(
            "nothing to stop: {} does not exist",
            pids.display()
        ));
        return Ok(());
    }
    let entries = read_pids(&pids)?;
    let mut first_error = None;
    for entry in entries.iter().rev() {
        if let Err(err) = stop_server(entry.kind, entry.pid, &entry.data_dir) {
            eprintln!("[xtask] error: {err:#}");
            first_error.get_or_insert(err);
        }
    }
    if let Some(err) = first_error {
        return Err(err.context(format!("{} is kept; run this again", pids.display())));
    }
    fs::remove_file(&pids)?;
    let _ = fs::remove_file(dir.join(ENV_FILE));
    note(&format!(
        "stopped; the data and logs stay in {} until the next start",
        dir.display()
    ));
    Ok(())
}

/// Stops one server by PID, escalating signals, and only while the PID is
/// still that server.
fn stop_server(kind: Kind, pid: u32, data_dir: &Path) -> Result<()> {
    let started = Instant::now();
    if !process_matches(pid, data_dir) {
        note(&format!("{} (pid {pid}) had already stopped", kind.title()));
        return Ok(());
    }
    for &(signal, wait_secs) in kind.stop_signals() {
        // A failure here means the process went away meanwhile; the check
        // below tells.
        let _ = Command::new("kill")
            .args(["-s", signal, &pid.to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(wait_secs);
        while process_matches(pid, data_dir) && Instant::now() < deadline {
            sleep(Duration::from_millis(50));
        }
        if !process_matches(pid, data_dir) {
            note(&format!(
                "{} (pid {pid}) stopped in {}",
                kind.title(),
                seconds(started.elapsed())
            ));
            return Ok(());
        }
    }
    bail!(
        "{} (pid {pid}) is still running after SIGKILL",
        kind.title()
    )
}

/// Entries of `dir/pids` whose process still runs.
fn live_entries(dir: &Path) -> Result<Vec<PidEntry>> {
    let path = dir.join(PIDS_FILE);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut entries = read_pids(&path)?;
    entries.retain(|entry| process_matches(entry.pid, &entry.data_dir));
    Ok(entries)
}

/// Stops the servers and removes the directories of `cargo xtask test` runs
/// that died without cleaning up (SIGKILL, a crash, a reboot), whatever the
/// watchdog did not already handle.
fn sweep_stale_test_dirs(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(owner) = name
            .to_str()
            .and_then(|name| name.strip_prefix("test-"))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        // A directory named after our own PID belongs to an earlier process.
        if owner != std::process::id() && process_state(owner).is_some_and(|state| state != 'Z') {
            continue; // another `cargo xtask test` is running
        }
        let dir = entry.path();
        if let Ok(live) = live_entries(&dir) {
            for server in live {
                if let Err(err) = stop_server(server.kind, server.pid, &server.data_dir) {
                    eprintln!("[xtask] warning: {err:#}");
                }
            }
        }
        note(&format!("removing stale {}", dir.display()));
        if let Err(err) = fs::remove_dir_all(&dir) {
            eprintln!("[xtask] warning: could not remove {}: {err}", dir.display());
        }
    }
}

/// Kills the test servers if xtask dies without stopping them (Ctrl-C
/// kills xtask outright: it has no signal handler). A `sh` in its own process
/// group reads `<signal> <pid>` lines on a pipe that only xtask holds: `done`
/// means xtask cleaned up itself; end-of-file means xtask is gone, so it
/// signals the servers that still run from this directory and deletes it.
struct Watchdog {
    child: Child,
    stdin: Option<ChildStdin>,
}

const WATCHDOG_SCRIPT: &str = r#"
dir=$1
watched=
while read -r signal pid; do
    [ "$signal" = done ] && exit 0
    watched="$watched $signal:$pid"
done
for entry in $watched; do
    pid=${entry#*:}
    grep -qsF -- "$dir" "/proc/$pid/cmdline" && kill -s "${entry%%:*}" "$pid"
done
for _ in $(seq 100); do
    alive=
    for entry in $watched; do
        grep -qsF -- "$dir" "/proc/${entry#*:}/cmdline" && alive=yes
    done
    [ -z "$alive" ] && break
    sleep 0.1
done
rm -rf -- "$dir"
"#;

impl Watchdog {
    fn spawn(dir: &Path) -> Result<Self> {
        let mut child = Command::new("sh")
            .args(["-c", WATCHDOG_SCRIPT, "xtask-watchdog"])
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("could not start the watchdog shell")?;
        let stdin = child.stdin.take();
        Ok(Self { child, stdin })
    }

    fn watch(&mut self, kind: Kind, pid: u32) {
        if let Some(stdin) = self.stdin.as_mut()
            && writeln!(stdin, "{} {pid}", kind.watchdog_signal()).is_err()
        {
            eprintln!(
                "[xtask] warning: the watchdog is gone; Ctrl-C would leave pid {pid} running"
            );
        }
    }

    /// `clean`: the servers are stopped, so the watchdog just exits; else
    /// end-of-file makes it kill what still runs and delete the directory.
    fn finish(mut self, clean: bool) {
        if let Some(mut stdin) = self.stdin.take()
            && clean
        {
            let _ = writeln!(stdin, "done");
        }
        let _ = self.child.wait();
    }
}

/// Where the server programs live.
struct Tools {
    postgres: Option<PostgresTools>,
    mariadb: Option<MariadbTools>,
    /// Set by [`Tools::ensure_installed`] when asked for [`Kind::Kafka`].
    tansu: Option<PathBuf>,
    /// Set by [`Tools::ensure_installed`] when asked for [`Kind::Pulsar`].
    pulsar: Option<PulsarLite>,
}

struct PostgresTools {
    /// `/usr/lib/postgresql/<version>/bin`
    bin: PathBuf,
    version: String,
}

struct MariadbTools {
    server: PathBuf,
    install_db: PathBuf,
    admin: PathBuf,
    client: PathBuf,
}

impl MariadbTools {
    /// `10.11.6`, from `mariadbd --version`; empty when that fails.
    fn version(&self) -> String {
        Command::new(&self.server)
            .arg("--version")
            .output()
            .ok()
            .and_then(|out| {
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                let after = text.split(" Ver ").nth(1)?;
                let version = after.split(['-', ' ']).next()?;
                Some(version.to_owned())
            })
            .unwrap_or_default()
    }
}

impl Tools {
    fn find() -> Self {
        let postgres = fs::read_dir("/usr/lib/postgresql").ok().and_then(|dir| {
            let names = dir
                .flatten()
                .filter(|entry| {
                    let bin = entry.path().join("bin");
                    bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()
                })
                .map(|entry| entry.file_name().to_string_lossy().into_owned());
            let version = highest_version(names)?;
            Some(PostgresTools {
                bin: Path::new("/usr/lib/postgresql").join(&version).join("bin"),
                version,
            })
        });
        let mariadb = (|| {
            Some(MariadbTools {
                server: find_program("mariadbd")?,
                install_db: find_program("mariadb-install-db")?,
                admin: find_program("mariadb-admin")?,
                client: find_program("mariadb")?,
            })
        })();
        Self {
            postgres,
            mariadb,
            tansu: None,
            pulsar: None,
        }
    }

    /// Packages to install for `kinds`; Debian names.
    fn missing_packages(&self, kinds: &[Kind]) -> Vec<&'static str> {
        let mut packages = Vec::new();
        if kinds.contains(&Kind::Postgres) && self.postgres.is_none() {
            packages.push("postgresql");
        }
        if kinds.contains(&Kind::Mariadb) && self.mariadb.is_none() {
            packages.extend(["mariadb-server", "mariadb-client"]);
        }
        packages
    }

    /// Finds the programs `kinds` need: the databases' packages are
    /// installed with apt-get first when they are missing and we are root;
    /// tansu is built, and pulsar-lite installed, into the tools cache when
    /// they are not there yet.
    fn ensure_installed(kinds: &[Kind], workspace_root: &Path, profile: Profile) -> Result<Self> {
        let mut tools = Self::find();
        let missing = tools.missing_packages(kinds);
        if !missing.is_empty() {
            apt_install(
                &missing,
                "the test servers",
                Some("run `cargo xtask test --no-backends` to skip the tests that need them"),
            )?;
            tools = Self::find();
            let still = tools.missing_packages(kinds);
            if !still.is_empty() {
                bail!("installed {missing:?}, but the programs of {still:?} are still missing");
            }
        }
        if kinds.contains(&Kind::Kafka) {
            tools.tansu = Some(ensure_tansu(workspace_root, profile.tansu_build())?);
        }
        if kinds.contains(&Kind::Pulsar) {
            tools.pulsar = Some(ensure_pulsar_lite(workspace_root)?);
        }
        Ok(tools)
    }

    fn postgres(&self) -> Result<&PostgresTools> {
        self.postgres
            .as_ref()
            .context("PostgreSQL's programs are missing")
    }

    fn mariadb(&self) -> Result<&MariadbTools> {
        self.mariadb
            .as_ref()
            .context("MariaDB's programs are missing")
    }

    fn tansu(&self) -> Result<&Path> {
        self.tansu.as_deref().context("tansu is missing")
    }

    fn pulsar(&self) -> Result<&PulsarLite> {
        self.pulsar.as_ref().context("pulsar-lite is missing")
    }
}

fn backends_root(workspace_root: &Path) -> PathBuf {
    workspace_root.join("target").join("xtask-backends")
}

/// `a`, `a and b`, `a, b and c`.
fn join_words(words: &[&str]) -> String {
    match words {
        [init @ .., last] if !init.is_empty() => format!("{} and {last}", init.join(", ")),
        _ => words.concat(),
    }
}

fn seconds(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

/// `(uid, gid)` of a local user, through `id`.
fn user_ids(user: &str) -> Result<(u32, u32)> {
    let id = |flag: &str| -> Result<u32> {
        let out = Command::new("id").args([flag, user]).output()?;
        if !out.status.success() {
            bail!("no such user (`id {flag} {user}` failed)");
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    Ok((id("-u")?, id("-g")?))
}

/// Creates `dir` (0755, so the servers' users can reach their own
/// subdirectories).
fn create_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Creates a server's directory, 0700 and owned by `user` when given.
fn prepare_server_dir(dir: &Path, user: Option<&str>) -> Result<()> {
    fs::create_dir(dir).with_context(|| format!("could not create {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    let Some(user) = user else {
        return Ok(());
    };
    let (uid, gid) = user_ids(user)?;
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))
        .with_context(|| format!("could not chown {} to {user}", dir.display()))?;
    let reachable = Command::new("runuser")
        .args(["-u", user, "--", "test", "-w"])
        .arg(dir)
        .status()
        .is_ok_and(|status| status.success());
    if !reachable {
        bail!(
            "the `{user}` user cannot write to {}: every parent directory must be \
             world-searchable (chmod o+x)",
            dir.display()
        );
    }
    Ok(())
}

fn check_socket_path(path: &Path) -> Result<()> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        bail!(
            "the socket path {} is {len} bytes, more than Unix sockets allow \
             ({MAX_SOCKET_PATH}); move the workspace or pass a shorter --dir",
            path.display()
        );
    }
    Ok(())
}

/// `program`, run as `user` through runuser when given.
fn run_as(user: Option<&str>, program: &Path) -> Command {
    match user {
        Some(user) => {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", user, "--"]).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// Runs a set-up command quietly; on failure, the error carries its output
/// and the tail of `log`.
fn run_captured(name: &str, cmd: &mut Command, log: Option<&Path>) -> Result<()> {
    let line = crate::command_line(cmd);
    let out = cmd
        .output()
        .with_context(|| format!("{name}: could not start `{line}`"))?;
    if out.status.success() {
        return Ok(());
    }
    let mut message = format!("{name}: `{line}` failed ({})", out.status);
    for stream in [&out.stdout, &out.stderr] {
        let text = String::from_utf8_lossy(stream);
        if !text.trim().is_empty() {
            message.push_str(&format!("\n{}", tail(&text, 20)));
        }
    }
    if let Some(log) = log {
        message.push_str(&format!("\n{}", log_tail(log)));
    }
    bail!(message)
}

fn log_tail(log: &Path) -> String {
    match fs::read(log) {
        Ok(bytes) => format!(
            "last lines of {}:\n{}",
            log.display(),
            tail(&String::from_utf8_lossy(&bytes), 20)
        ),
        Err(err) => format!("(no log: {}: {err})", log.display()),
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The first line of `postmaster.pid`.
fn read_postmaster_pid(data_dir: &Path) -> Option<u32> {
    let text = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// Whether `pid` runs with `data_dir` on its command line: the server we
/// started, not a process that got its PID later. Zombies have an empty
/// command line, so they count as stopped.
fn process_matches(pid: u32, data_dir: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = data_dir.as_os_str().as_encoded_bytes();
    !needle.is_empty() && cmdline.windows(needle.len()).any(|window| window == needle)
}

/// The state letter of `/proc/<pid>/stat` (`R`, `S`, `Z`...), if it exists.
fn process_state(pid: u32) -> Option<char> {
    parse_stat_state(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `1234 (name with) spaces) S 1 ...` -> `S`: the state follows the last `)`.
fn parse_stat_state(stat: &str) -> Option<char> {
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// The highest of version-named directories (`9.6`, `15`, `16`).
fn highest_version(names: impl Iterator<Item = String>) -> Option<String> {
    names
        .filter_map(|name| {
            let parts = name
                .split('.')
                .map(|part| part.parse::<u32>().ok())
                .collect::<Option<Vec<u32>>>()?;
            Some((parts, name))
        })
        .max()
        .map(|(_, name)| name)
}

/// Quotes `value` for a POSIX shell, leaving plain words alone.
fn shell_quote(value: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "@%+=:,./_-".contains(c);
    if !value.is_empty() && value.chars().all(plain) {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}

/// pulsar-lite's configuration: its store at `db_path` (to which it appends
/// `.rocksdb`), no metrics endpoint, warnings and errors only.
fn pulsar_config(db_path: &Path) -> Result<String> {
    let db_path = db_path
        .to_str()
        .with_context(|| format!("{} is not UTF-8", db_path.display()))?;
    Ok(format!(
        "db_path = {}\nlog_level = \"warn\"\n\n[metrics]\nenabled = false\n",
        toml_string(db_path)
    ))
}

/// `value` as a TOML basic string.
fn toml_string(value: &str) -> String {
    let mut quoted = String::from('"');
    for c in value.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if c.is_control() => quoted.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

fn format_env(env: &[(&str, String)]) -> String {
    env.iter()
        .map(|(var, value)| format!("export {var}={}\n", shell_quote(value)))
        .collect()
}

fn format_pids(entries: &[PidEntry]) -> String {
    let mut text = String::from("# servers started by `cargo xtask`: <server> <pid> <data dir>\n");
    for entry in entries {
        text.push_str(&format!(
            "{} {} {}\n",
            entry.kind.name(),
            entry.pid,
            entry.data_dir.display()
        ));
    }
    text
}

fn read_pids(path: &Path) -> Result<Vec<PidEntry>> {
    let text =
        fs::read_to_string(path).with_context(|| format!("could not read {}", path.display()))?;
    parse_pids(&text).with_context(|| format!("in {}", path.display()))
}

fn parse_pids(text: &str) -> Result<Vec<PidEntry>> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|(index, line)| {
            let mut fields = line.splitn(3, ' ');
            let (Some(kind), Some(pid), Some(data_dir)) =
                (fields.next(), fields.next(), fields.next())
            else {
                bail!("line {}: expected `<server> <pid> <data dir>`", index + 1);
            };
            Ok(PidEntry {
                kind: Kind::from_name(kind)
                    .with_context(|| format!("line {}: unknown server `{kind}`", index + 1))?,
                pid: pid
                    .parse()
                    .with_context(|| format!("line {}: bad pid `{pid}`", index + 1))?,
                data_dir: PathBuf::from(data_dir),
            })
        })
        .collect()
}

/// Whether a directory holds only what `backends start` writes, so that
/// wiping it cannot destroy anything else.
fn looks_like_backends_dir(names: &[String]) -> bool {
    names.iter().all(|name| {
        [PIDS_FILE, ENV_FILE].contains(&name.as_str())
            || Kind::ALL.iter().any(|kind| kind.name() == name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_lines_export_plain_urls_unquoted() {
        let env = [
            (
                POSTGRES_URL_VAR,
                "postgres://postgres@127.0.0.1:5432/postgres".to_owned(),
            ),
            (
                MYSQL_URL_VAR,
                "mysql://outbox:outbox@127.0.0.1:3306/mysql".to_owned(),
            ),
        ];
        assert_eq!(
            format_env(&env),
            "export OUTBOX_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres\n\
             export OUTBOX_TEST_MYSQL_URL=mysql://outbox:outbox@127.0.0.1:3306/mysql\n"
        );
    }

    #[test]
    fn shell_quote_wraps_anything_unusual() {
        assert_eq!(shell_quote("/work/main/target"), "/work/main/target");
        assert_eq!(shell_quote("/my dir"), "'/my dir'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn pids_file_round_trips_paths_with_spaces() {
        let entries = vec![
            PidEntry {
                kind: Kind::Postgres,
                pid: 4242,
                data_dir: PathBuf::from("/w/target/xtask-backends/dev/postgres/data"),
            },
            PidEntry {
                kind: Kind::Mariadb,
                pid: 77,
                data_dir: PathBuf::from("/my work/mariadb/data"),
            },
        ];
        assert_eq!(parse_pids(&format_pids(&entries)).unwrap(), entries);
    }

    #[test]
    fn parse_pids_skips_comments_and_rejects_garbage() {
        assert_eq!(parse_pids("# nothing\n\n").unwrap(), vec![]);
        assert!(parse_pids("postgres 12").is_err());
        assert!(parse_pids("redis 12 /data").is_err());
        assert!(parse_pids("mariadb twelve /data").is_err());
    }

    #[test]
    fn stat_state_survives_parentheses_in_the_name() {
        assert_eq!(parse_stat_state("1234 (postgres) S 1 1234"), Some('S'));
        assert_eq!(parse_stat_state("99 (a) b) Z 1 99"), Some('Z'));
        assert_eq!(parse_stat_state("garbage"), None);
    }

    #[test]
    fn highest_version_compares_numerically() {
        let names = ["9.6", "15", "16", "README", "13"].map(String::from);
        assert_eq!(highest_version(names.into_iter()), Some("16".to_owned()));
        assert_eq!(highest_version(std::iter::empty()), None);
    }

    #[test]
    fn join_words_reads_like_a_list() {
        assert_eq!(join_words(&[]), "");
        assert_eq!(join_words(&["PostgreSQL"]), "PostgreSQL");
        assert_eq!(join_words(&["a", "b"]), "a and b");
        assert_eq!(join_words(&["a", "b", "c"]), "a, b and c");
    }

    #[test]
    fn every_kind_has_its_own_name_and_variable() {
        for kind in Kind::ALL {
            assert_eq!(Kind::from_name(kind.name()), Some(kind));
            let same_var = Kind::ALL
                .iter()
                .filter(|other| other.env_var() == kind.env_var());
            assert_eq!(same_var.count(), 1);
        }
        assert!(!Kind::DATABASES.contains(&Kind::Kafka));
        assert!(!Kind::DATABASES.contains(&Kind::Pulsar));
        // The second variable of the Pulsar broker, and the programs' variables,
        // are nobody's first: setting them never stops a server from starting.
        for var in [
            PULSAR_PYTHONPATH_VAR,
            POSTGRES_BIN_VAR,
            POSTGRES_USER_VAR,
            TANSU_VAR,
        ] {
            assert!(Kind::ALL.iter().all(|kind| kind.env_var() != var));
        }
    }

    #[test]
    fn pulsar_config_quotes_the_data_path() {
        assert_eq!(
            pulsar_config(Path::new("/w/target/xtask-backends/dev/pulsar/data")).unwrap(),
            "db_path = \"/w/target/xtask-backends/dev/pulsar/data\"\nlog_level = \"warn\"\n\n\
             [metrics]\nenabled = false\n"
        );
        assert_eq!(toml_string(r#"/my "dir"\x"#), r#""/my \"dir\"\\x""#);
        assert_eq!(toml_string("a\tb"), r#""a\u0009b""#);
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a\n", 5), "a");
        assert_eq!(tail("", 5), "");
    }

    #[test]
    fn only_our_own_files_may_be_wiped() {
        let ours = ["postgres", "mariadb", "kafka", "pulsar", "pids", "env"].map(String::from);
        assert!(looks_like_backends_dir(&ours));
        assert!(looks_like_backends_dir(&[]));
        assert!(!looks_like_backends_dir(&[
            "postgres".into(),
            "notes.txt".into()
        ]));
    }

    #[test]
    fn a_process_matches_only_with_its_data_dir_on_the_command_line() {
        let me = std::process::id();
        let exe = std::env::current_exe().unwrap();
        assert!(process_matches(me, &exe));
        assert!(!process_matches(me, Path::new("/no/such/data/dir")));
        assert!(!process_matches(u32::MAX, &exe));
    }
}
