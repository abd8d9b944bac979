//! Translation of sea-orm errors into port errors: no `DbErr` leaks out of this crate.

use outbox_ports::StoreError;
use sea_orm::{DbErr, RuntimeErr, SqlErr};

/// Maps a database error to the port error that tells the caller what to do.
pub(crate) fn db_error(err: DbErr) -> StoreError {
    if let Some(SqlErr::UniqueConstraintViolation(detail)) = err.sql_err() {
        return StoreError::Conflict {
            what: "row",
            id: detail,
            expected: 0,
        };
    }
    if is_transient(&err) {
        StoreError::Unavailable(err.to_string())
    } else {
        StoreError::Backend(err.to_string())
    }
}

/// Whether retrying later may succeed: the connection was lost or refused, the pool
/// timed out, or the database asked us to retry (deadlock, lock timeout, serialization
/// failure, SQLite busy, server shutting down).
pub(crate) fn is_transient(err: &DbErr) -> bool {
    use sea_orm::sqlx::Error as E;
    match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            match &**e {
                E::Io(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed | E::Tls(_) => true,
                E::Protocol(_) => true,
                E::Database(db) => {
                    #[cfg(feature = "mysql")]
                    if let Some(my) =
                        db.try_downcast_ref::<sea_orm::sqlx::mysql::MySqlDatabaseError>()
                    {
                        return MYSQL_TRANSIENT.contains(&my.number());
                    }
                    let code = db.code().unwrap_or_default();
                    TRANSIENT_CODES.contains(&code.as_ref())
                }
                _ => false,
            }
        }
        _ => false,
    }
}

/// PostgreSQL SQLSTATEs (serialization failure, deadlock, lock not available, admin
/// shutdown, crash shutdown, cannot connect now, too many connections) and SQLite result
/// codes (busy, locked, and their extended forms) that mean "try again".
const TRANSIENT_CODES: &[&str] = &[
    "40001", "40P01", "55P03", "57P01", "57P02", "57P03", "53300", //
    "5", "6", "261", "262", "517", "773",
];

/// MySQL/MariaDB error numbers that mean "try again": lock wait timeout, deadlock, too
/// many connections, server shutdown, server gone away, connection lost.
#[cfg(feature = "mysql")]
const MYSQL_TRANSIENT: &[u16] = &[1205, 1213, 1040, 1053, 2006, 2013];

/// A stored value that cannot be read back (a schema mismatch or manual edit).
pub(crate) fn decode_error(col: &str, err: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("cannot decode column `{col}`: {err}"))
}
