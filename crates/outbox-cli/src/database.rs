//! Opening the database named by `--database-url`, and describing it without secrets.

use outbox_sea_orm::redact_url;
use sea_orm::{DatabaseConnection, DbBackend, Statement, Value};
use std::path::PathBuf;

/// The environment variable behind every `--database-url`.
pub(crate) const DATABASE_URL_ENV: &str = "OUTBOX_DATABASE_URL";

/// Connects to `url`. A URL of an unsupported scheme fails with
/// [`outbox_sea_orm::ConnectError::UnsupportedUrl`] in the error chain, which `main`
/// turns into exit code 2.
pub(crate) async fn connect(url: &str) -> anyhow::Result<DatabaseConnection> {
    Ok(outbox_sea_orm::connect(url).await?)
}

/// Where a `sqlite:` URL points: `None` for in-memory databases and other schemes.
pub(crate) fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or(rest);
    if path.is_empty() || path == ":memory:" {
        return None;
    }
    let path = PathBuf::from(path);
    Some(if path.is_absolute() {
        path
    } else {
        std::env::current_dir()
            .map(|dir| dir.join(&path))
            .unwrap_or(path)
    })
}

/// A human description of the database: the file of a SQLite URL, or the server URL
/// with its password masked.
pub(crate) fn describe(url: &str, backend: DbBackend) -> String {
    match backend {
        DbBackend::Sqlite => match sqlite_path(url) {
            Some(path) => format!("SQLite file {}", path.display()),
            None => "in-memory SQLite".to_owned(),
        },
        DbBackend::Postgres => format!("PostgreSQL at {}", redact_url(url)),
        DbBackend::MySql => format!("MySQL/MariaDB at {}", redact_url(url)),
        _ => redact_url(url),
    }
}

/// A statement written with `?` placeholders, numbered `$1, $2, …` for PostgreSQL.
/// (The demo's SQL contains no other `?`.)
pub(crate) fn statement(
    backend: DbBackend,
    sql: &str,
    values: impl IntoIterator<Item = Value>,
) -> Statement {
    let sql = if backend == DbBackend::Postgres {
        let mut out = String::with_capacity(sql.len() + 8);
        let mut n = 0;
        for c in sql.chars() {
            if c == '?' {
                n += 1;
                out.push_str(&format!("${n}"));
            } else {
                out.push(c);
            }
        }
        out
    } else {
        sql.to_owned()
    };
    Statement::from_sql_and_values(backend, sql, values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_paths_are_resolved() {
        assert_eq!(
            sqlite_path("sqlite:///tmp/x.db?mode=rwc"),
            Some(PathBuf::from("/tmp/x.db"))
        );
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("postgres://db/x"), None);
        assert!(sqlite_path("sqlite:demo.db").is_some_and(|p| p.is_absolute()));
    }

    #[test]
    fn postgres_placeholders_are_numbered() {
        let s = statement(DbBackend::Postgres, "UPDATE t SET a = ? WHERE b = ?", []);
        assert_eq!(s.sql, "UPDATE t SET a = $1 WHERE b = $2");
        let s = statement(DbBackend::MySql, "UPDATE t SET a = ?", []);
        assert_eq!(s.sql, "UPDATE t SET a = ?");
    }
}
