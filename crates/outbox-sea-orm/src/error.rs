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

/// A failed attempt at a transaction that is worth running again at once.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// The database rolled the transaction back to break a deadlock (or a
    /// serialization conflict): nothing of it took effect, and the same transaction
    /// run again usually goes through.
    RolledBack(DbErr),
    /// Any other error.
    Failed(StoreError),
}

impl From<StoreError> for Attempt {
    fn from(err: StoreError) -> Self {
        Self::Failed(err)
    }
}

impl From<Attempt> for StoreError {
    fn from(attempt: Attempt) -> Self {
        match attempt {
            Attempt::RolledBack(err) => db_error(err),
            Attempt::Failed(err) => err,
        }
    }
}

/// [`db_error`] for a statement of a transaction that may be run again: deadlocks and
/// serialization failures become [`Attempt::RolledBack`].
pub(crate) fn attempt_error(err: DbErr) -> Attempt {
    if rolled_back(&err) {
        Attempt::RolledBack(err)
    } else {
        Attempt::Failed(db_error(err))
    }
}

/// Whether the database rolled the whole transaction back to break a deadlock or a
/// serialization conflict (PostgreSQL `40P01` and `40001`, MySQL/MariaDB 1213). Not a
/// lock wait timeout: that waited long already, and rolls back only the statement on
/// MySQL.
fn rolled_back(err: &DbErr) -> bool {
    match server_code(err) {
        #[cfg(feature = "mysql")]
        Some(ServerCode::MySql(number)) => number == 1213,
        Some(ServerCode::State(code)) => matches!(code.as_str(), "40P01" | "40001"),
        None => false,
    }
}

/// Whether retrying later may succeed: the connection was lost or refused, the pool
/// timed out, or the database asked us to retry (deadlock, lock timeout, serialization
/// failure, SQLite busy, server shutting down).
pub(crate) fn is_transient(err: &DbErr) -> bool {
    use sea_orm::sqlx::Error as E;
    if matches!(err, DbErr::ConnectionAcquire(_) | DbErr::Conn(_)) {
        return true;
    }
    match server_code(err) {
        #[cfg(feature = "mysql")]
        Some(ServerCode::MySql(number)) => MYSQL_TRANSIENT.contains(&number),
        Some(ServerCode::State(code)) => TRANSIENT_CODES.contains(&code.as_str()),
        None => matches!(
            sqlx_error(err),
            Some(
                E::Io(_)
                    | E::PoolTimedOut
                    | E::PoolClosed
                    | E::WorkerCrashed
                    | E::Tls(_)
                    | E::Protocol(_)
            )
        ),
    }
}

/// The driver's error inside `err`, if a statement failed.
fn sqlx_error(err: &DbErr) -> Option<&sea_orm::sqlx::Error> {
    match err {
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => Some(e),
        _ => None,
    }
}

/// How the server identified the error it answered with.
enum ServerCode {
    /// MySQL/MariaDB's error number (its SQLSTATEs are too coarse: 1213 and others
    /// share `40001`).
    #[cfg(feature = "mysql")]
    MySql(u16),
    /// The SQLSTATE (PostgreSQL) or result code (SQLite); empty when it gave none.
    State(String),
}

/// The code of the error the server answered `err` with; `None` when it did not answer
/// (a lost connection, a pool timeout).
fn server_code(err: &DbErr) -> Option<ServerCode> {
    let sea_orm::sqlx::Error::Database(db) = sqlx_error(err)? else {
        return None;
    };
    #[cfg(feature = "mysql")]
    if let Some(my) = db.try_downcast_ref::<sea_orm::sqlx::mysql::MySqlDatabaseError>() {
        return Some(ServerCode::MySql(my.number()));
    }
    Some(ServerCode::State(
        db.code().map(|c| c.into_owned()).unwrap_or_default(),
    ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::{ConnectionTrait, TransactionTrait};

    /// The admin URL in `var`; `None` (the test skips) outside CI when it is unset.
    fn server_url(var: &str) -> Option<String> {
        match std::env::var(var) {
            Ok(url) if !url.is_empty() => Some(url),
            _ if std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false")) => {
                panic!(
                    "{var} is not set: under CI the server tests must run; use `cargo xtask test`"
                )
            }
            _ => {
                eprintln!("{var} is not set: skipped (run the tests with `cargo xtask test`)");
                None
            }
        }
    }

    /// Two transactions that each lock a row and then want the other's: the server
    /// rolls one back, and that error is a rolled-back attempt, to run again. A
    /// duplicate key in the same table is not.
    async fn a_deadlock_is_an_attempt_to_run_again(var: &str) {
        let Some(admin_url) = server_url(var) else {
            return;
        };
        let admin = crate::connect(&admin_url).await.unwrap();
        let name = format!("deadlock_probe_{}", uuid::Uuid::new_v4().simple());
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let (base, _) = admin_url.rsplit_once('/').unwrap();
        let db = crate::connect(&format!("{base}/{name}")).await.unwrap();
        db.execute_unprepared("CREATE TABLE probe (id INT PRIMARY KEY, v INT NOT NULL)")
            .await
            .unwrap();
        db.execute_unprepared("INSERT INTO probe (id, v) VALUES (1, 0), (2, 0)")
            .await
            .unwrap();

        let (first, second) = (db.begin().await.unwrap(), db.begin().await.unwrap());
        let set = |id: u8| format!("UPDATE probe SET v = v + 1 WHERE id = {id}");
        first.execute_unprepared(&set(1)).await.unwrap();
        second.execute_unprepared(&set(2)).await.unwrap();
        let (to_two, to_one) = (set(2), set(1));
        let (a, b) = tokio::join!(
            first.execute_unprepared(&to_two),
            second.execute_unprepared(&to_one),
        );
        let victim = match (a, b) {
            (Err(e), Ok(_)) | (Ok(_), Err(e)) => e,
            other => panic!("expected one deadlock victim, got {other:?}"),
        };
        assert!(
            matches!(attempt_error(victim), Attempt::RolledBack(_)),
            "a deadlock must be run again"
        );
        drop((first, second));

        let duplicate = db
            .execute_unprepared("INSERT INTO probe (id, v) VALUES (1, 0)")
            .await
            .unwrap_err();
        assert!(matches!(
            attempt_error(duplicate),
            Attempt::Failed(StoreError::Conflict { .. })
        ));
        db.close().await.unwrap();
        admin
            .execute_unprepared(&format!("DROP DATABASE {name}"))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_deadlock_on_postgres_is_an_attempt_to_run_again() {
        a_deadlock_is_an_attempt_to_run_again("OUTBOX_TEST_POSTGRES_URL").await;
    }

    #[tokio::test]
    async fn a_deadlock_on_mysql_is_an_attempt_to_run_again() {
        a_deadlock_is_an_attempt_to_run_again("OUTBOX_TEST_MYSQL_URL").await;
    }
}
