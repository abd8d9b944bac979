//! [`SeaOrmDeadLetters`]: the table where consumer groups park messages they gave up on.

use crate::dialect::{Dialect, Sql, get, req};
use crate::error::{db_error, decode_error};
use async_trait::async_trait;
use outbox_domain::MessageId;
use outbox_migrations::schema::DEAD_LETTER_TABLE;
use outbox_ports::{
    ConsumeError, DeadLetter, DeadLetterSink, IncomingMessage, StoreError, StoreResult,
};
use sea_orm::{ConnectionTrait, DatabaseConnection, Value};
use std::collections::BTreeMap;

/// A parked message read back from the table, with its position for paging.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ParkedMessage {
    /// Write order; page with `after_seq`.
    pub seq: i64,
    /// The dead letter as it was parked.
    pub letter: DeadLetter,
}

/// The consumer dead-letter table (`outbox_consumer_dead_letters`) on a sea-orm
/// connection: a [`DeadLetterSink`] for the consumer runner, and the reads an operator
/// needs to inspect what was parked.
///
/// Parking is idempotent per consumer group and message (its id, or
/// `topic/partition/offset` without one).
#[derive(Debug, Clone)]
pub struct SeaOrmDeadLetters {
    db: DatabaseConnection,
}

impl SeaOrmDeadLetters {
    /// The table on `db` (created by the migrations or `SeaOrmStore::create_tables`).
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// Up to `limit` parked messages of `consumer_group` after position `after_seq`
    /// (0 for the first page), oldest first.
    pub async fn list(
        &self,
        consumer_group: &str,
        after_seq: i64,
        limit: u32,
    ) -> StoreResult<Vec<ParkedMessage>> {
        if limit == 0 {
            return Err(StoreError::InvalidInput("limit must be at least 1".into()));
        }
        let d = Dialect::of(self.db.get_database_backend());
        let mut sql = Sql::new(
            d,
            format!(
                "SELECT seq, consumer_group, message_id, topic, broker_partition, \
                 broker_offset, message_key, headers, payload, reason, attempts, parked_at \
                 FROM {DEAD_LETTER_TABLE} WHERE consumer_group = "
            ),
        );
        sql.bind(consumer_group.into())
            .push(" AND seq > ")
            .bind(after_seq.into())
            .push(" ORDER BY seq LIMIT ")
            .bind(i64::from(limit).into());
        let rows = self.db.query_all_raw(sql.build()).await.map_err(db_error)?;
        rows.iter()
            .map(|row| {
                let headers = req(d.get_json(row, "headers"), "headers")?;
                let headers: BTreeMap<String, String> =
                    serde_json::from_value(headers).map_err(|e| decode_error("headers", e))?;
                let mut message = IncomingMessage::new(
                    req(get::<String>(row, "topic"), "topic")?,
                    req(get::<i32>(row, "broker_partition"), "broker_partition")?,
                    req(get::<i64>(row, "broker_offset"), "broker_offset")?,
                    req(get::<Vec<u8>>(row, "payload"), "payload")?,
                );
                message.key = get::<String>(row, "message_key")?;
                message.headers = headers;
                let attempts = req(get::<i32>(row, "attempts"), "attempts")?;
                let mut letter = DeadLetter::new(
                    req(get::<String>(row, "consumer_group"), "consumer_group")?,
                    message,
                    req(get::<String>(row, "reason"), "reason")?,
                    u32::try_from(attempts).map_err(|e| decode_error("attempts", e))?,
                    req(d.get_time(row, "parked_at"), "parked_at")?,
                );
                letter.message_id = d.get_uuid(row, "message_id")?.map(MessageId::from_uuid);
                Ok(ParkedMessage {
                    seq: req(get::<i64>(row, "seq"), "seq")?,
                    letter,
                })
            })
            .collect()
    }

    /// Deletes the parked message at `seq` (after an operator replayed or discarded it).
    /// Returns whether it existed.
    pub async fn remove(&self, seq: i64) -> StoreResult<bool> {
        let d = Dialect::of(self.db.get_database_backend());
        let mut sql = Sql::new(d, format!("DELETE FROM {DEAD_LETTER_TABLE} WHERE seq = "));
        sql.bind(seq.into());
        let done = self.db.execute_raw(sql.build()).await.map_err(db_error)?;
        Ok(done.rows_affected() == 1)
    }

    async fn insert(&self, letter: &DeadLetter) -> StoreResult<()> {
        let d = Dialect::of(self.db.get_database_backend());
        let m = &letter.message;
        let dedup_key = match letter.message_id {
            Some(id) => id.to_string(),
            None => format!("{}/{}/{}", m.topic, m.partition, m.offset),
        };
        let headers = serde_json::to_value(&m.headers).map_err(|e| decode_error("headers", e))?;
        let verb = match d {
            Dialect::MySql => "INSERT IGNORE INTO",
            _ => "INSERT INTO",
        };
        let mut sql = Sql::new(
            d,
            format!(
                "{verb} {DEAD_LETTER_TABLE} (consumer_group, dedup_key, message_id, topic, \
                 broker_partition, broker_offset, message_key, headers, payload, reason, \
                 attempts, parked_at) VALUES "
            ),
        );
        sql.bind_list([
            Value::String(Some(letter.consumer_group.clone())),
            Value::String(Some(dedup_key)),
            d.uuid(letter.message_id.map(|id| id.as_uuid())),
            Value::String(Some(m.topic.clone())),
            m.partition.into(),
            m.offset.into(),
            Value::String(m.key.clone()),
            d.json(Some(&headers)),
            Value::Bytes(Some(m.payload.clone())),
            Value::String(Some(letter.reason.clone())),
            i64::from(letter.attempts).into(),
            d.time(Some(letter.parked_at)),
        ]);
        if d != Dialect::MySql {
            sql.push(" ON CONFLICT DO NOTHING");
        }
        self.db.execute_raw(sql.build()).await.map_err(db_error)?;
        Ok(())
    }
}

#[async_trait]
impl DeadLetterSink for SeaOrmDeadLetters {
    async fn park(&self, letter: &DeadLetter) -> Result<(), ConsumeError> {
        self.insert(letter)
            .await
            .map_err(|e| ConsumeError::new("park", e.to_string()))
    }
}
