//! Opening a connection pool with settings fit for an outbox.

use sea_orm::{ConnectOptions, Database, DatabaseConnection};
use std::time::Duration;

/// Why [`connect`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The URL names no backend this build supports. Configuration bug.
    #[error(
        "unsupported database url `{0}`: use postgres://, mysql:// or sqlite: (enabled by the features of outbox-sea-orm)"
    )]
    UnsupportedUrl(String),
    /// The database could not be reached or refused the login. Check the URL and the
    /// server; retrying later may help.
    #[error("cannot connect to {url}: {message}")]
    Unavailable {
        /// The URL, with any password masked.
        url: String,
        /// What the driver said.
        message: String,
    },
}

/// Opens a connection pool on `url` (`postgres://…`, `mysql://…`, `sqlite:path` or
/// `sqlite::memory:`).
///
/// A pooled connection is pinged before it is handed out only when it has been idle
/// for 30 s or more (sqlx pings on every checkout by default: a round trip more for
/// every transaction, a quarter of a relay's per-batch round trips).
///
/// SQLite files are created if missing and use write-ahead logging with a 5 s busy
/// timeout, so relays and writers in several processes wait for each other instead of
/// failing. SQLite gets one connection per pool (in memory, that is the only way to
/// share the database).
pub async fn connect(url: &str) -> Result<DatabaseConnection, ConnectError> {
    let supported = (cfg!(feature = "postgres")
        && (url.starts_with("postgres://") || url.starts_with("postgresql://")))
        || (cfg!(feature = "mysql")
            && (url.starts_with("mysql://") || url.starts_with("mariadb://")))
        || (cfg!(feature = "sqlite") && url.starts_with("sqlite:"));
    if !supported {
        return Err(ConnectError::UnsupportedUrl(redact_url(url)));
    }
    let url = url.replacen("mariadb://", "mysql://", 1);
    let mut options = ConnectOptions::new(url.clone());
    options
        .sqlx_logging(false)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(10))
        .test_before_acquire_if_idle_for(Duration::from_secs(30));
    #[cfg(feature = "sqlite")]
    options.map_sqlx_sqlite_opts(|o| {
        o.create_if_missing(true)
            .journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5))
    });
    Database::connect(options)
        .await
        .map_err(|e| ConnectError::Unavailable {
            url: redact_url(&url),
            message: e.to_string(),
        })
}

/// The URL with its password masked (`scheme://user:secret@host/db` →
/// `scheme://user:***@host/db`), for logs and error messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, None), |(a, p)| (a, Some(p)));
    let masked = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    match path {
        Some(p) => format!("{scheme}://{masked}/{p}"),
        None => format!("{scheme}://{masked}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/app"),
            "postgres://app:***@db:5432/app"
        );
        assert_eq!(redact_url("mysql://root@db"), "mysql://root@db");
        assert_eq!(redact_url("sqlite:outbox.db"), "sqlite:outbox.db");
    }

    #[tokio::test]
    async fn unknown_schemes_are_rejected() {
        let err = connect("redis://localhost").await.unwrap_err();
        assert!(matches!(err, ConnectError::UnsupportedUrl(_)), "{err}");
    }
}
