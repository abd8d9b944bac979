//! In-memory consumer-side doubles: a partitioned subscription over an
//! [`InMemoryPublisher`] and a dead-letter sink, both with fault injection.

use crate::InMemoryPublisher;
use async_trait::async_trait;
use outbox_domain::OutboxMessage;
use outbox_ports::{ConsumeError, DeadLetter, DeadLetterSink, IncomingMessage, MessageSource};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// A consumer group's subscription to one topic of an [`InMemoryPublisher`], acting
/// like a Kafka consumer: messages are spread over `partitions` by a hash of their key,
/// the broker log index is the offset, and [`ack`](MessageSource::ack) commits
/// `offset + 1` of the partition at once.
///
/// [`rebalance`](Self::rebalance) redelivers everything not yet acknowledged (what a
/// new partition owner sees); `fail_next_*` inject broker failures. Clones share the
/// subscription.
#[derive(Debug, Clone)]
pub struct InMemorySource {
    broker: InMemoryPublisher,
    topic: String,
    partitions: u32,
    state: Arc<Mutex<SourceState>>,
}

#[derive(Debug, Default)]
struct SourceState {
    /// Next broker log index to look at.
    next: usize,
    /// Per partition, the first offset not yet acknowledged.
    committed: HashMap<i32, i64>,
    recv_failures: u32,
    ack_failures: u32,
    closed: bool,
}

impl InMemorySource {
    /// Subscribes to `topic` of `broker`, from the beginning, over `partitions`
    /// partitions (at least 1).
    pub fn new(broker: InMemoryPublisher, topic: impl Into<String>, partitions: u32) -> Self {
        Self {
            broker,
            topic: topic.into(),
            partitions: partitions.max(1),
            state: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SourceState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The partition of `key`: FNV-1a, so it is the same in every run.
    pub fn partition_of(&self, key: &str) -> i32 {
        let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        // The modulus is a u32, so the result fits.
        i32::try_from(hash % u64::from(self.partitions)).unwrap_or(0)
    }

    /// Starts delivering again from each partition's first unacknowledged offset, as a
    /// consumer does after a rebalance or restart.
    pub fn rebalance(&self) {
        self.lock().next = 0;
    }

    /// Drops every committed offset and starts over from the beginning, as a group
    /// whose committed offsets expired does.
    pub fn forget_acknowledgements(&self) {
        let mut state = self.lock();
        state.committed.clear();
        state.next = 0;
    }

    /// The next `n` receives fail.
    pub fn fail_next_recvs(&self, n: u32) {
        self.lock().recv_failures = n;
    }

    /// The next `n` acknowledgements are refused (as for a revoked partition).
    pub fn fail_next_acks(&self, n: u32) {
        self.lock().ack_failures = n;
    }

    /// How many messages are acknowledged, over all partitions.
    pub fn acknowledged(&self) -> usize {
        let committed = self.lock().committed.clone();
        self.broker
            .messages()
            .iter()
            .enumerate()
            .filter(|(i, m)| m.topic == self.topic && self.is_acked(&committed, *i, m))
            .count()
    }

    /// Whether [`close`](MessageSource::close) was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    fn is_acked(&self, committed: &HashMap<i32, i64>, index: usize, m: &OutboxMessage) -> bool {
        let partition = self.partition_of(&m.partition_key);
        committed
            .get(&partition)
            .is_some_and(|&c| offset(index) < c)
    }

    fn incoming(&self, index: usize, m: &OutboxMessage) -> IncomingMessage {
        let mut incoming = IncomingMessage::new(
            &m.topic,
            self.partition_of(&m.partition_key),
            offset(index),
            m.payload.to_bytes().into_owned(),
        )
        .with_key(&m.partition_key);
        for (name, value) in outbox_ports::wire_headers(m) {
            incoming = incoming.with_header(name, value);
        }
        incoming
    }
}

fn offset(index: usize) -> i64 {
    i64::try_from(index).unwrap_or(i64::MAX)
}

#[async_trait]
impl MessageSource for InMemorySource {
    async fn recv(&self) -> Result<IncomingMessage, ConsumeError> {
        loop {
            let next = {
                let mut state = self.lock();
                if state.recv_failures > 0 {
                    state.recv_failures -= 1;
                    return Err(ConsumeError::new("receive", "injected broker failure"));
                }
                state.next
            };
            let batch = self
                .broker
                .read_from(next, 256, Duration::from_millis(50))
                .await;
            let mut state = self.lock();
            if state.next != next {
                // A rebalance moved the position meanwhile; look again.
                continue;
            }
            for (i, m) in batch.iter().enumerate() {
                let index = next + i;
                state.next = index + 1;
                if m.topic == self.topic && !self.is_acked(&state.committed, index, m) {
                    return Ok(self.incoming(index, m));
                }
            }
        }
    }

    async fn ack(&self, message: &IncomingMessage) -> Result<(), ConsumeError> {
        let mut state = self.lock();
        if state.ack_failures > 0 {
            state.ack_failures -= 1;
            return Err(ConsumeError::new("ack", "injected: partition revoked"));
        }
        let committed = state.committed.entry(message.partition).or_default();
        *committed = (*committed).max(message.offset + 1);
        Ok(())
    }

    async fn close(&self) -> Result<(), ConsumeError> {
        self.lock().closed = true;
        Ok(())
    }
}

/// A thread-safe, in-memory [`DeadLetterSink`]. Parking is idempotent per consumer
/// group and message (id, or topic/partition/offset without one). Clones share the
/// letters.
#[derive(Debug, Clone, Default)]
pub struct InMemoryDeadLetters {
    inner: Arc<Mutex<DeadLettersState>>,
}

#[derive(Debug, Default)]
struct DeadLettersState {
    letters: Vec<DeadLetter>,
    failures: u32,
}

impl InMemoryDeadLetters {
    /// No letters.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, DeadLettersState> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every parked letter, in parking order.
    pub fn letters(&self) -> Vec<DeadLetter> {
        self.lock().letters.clone()
    }

    /// The next `n` parks fail.
    pub fn fail_next_parks(&self, n: u32) {
        self.lock().failures = n;
    }
}

#[async_trait]
impl DeadLetterSink for InMemoryDeadLetters {
    async fn park(&self, letter: &DeadLetter) -> Result<(), ConsumeError> {
        let mut state = self.lock();
        if state.failures > 0 {
            state.failures -= 1;
            return Err(ConsumeError::new("park", "injected sink failure"));
        }
        let same = |l: &DeadLetter| {
            l.consumer_group == letter.consumer_group
                && match (l.message_id, letter.message_id) {
                    (Some(a), Some(b)) => a == b,
                    _ => {
                        (&l.message.topic, l.message.partition, l.message.offset)
                            == (
                                &letter.message.topic,
                                letter.message.partition,
                                letter.message.offset,
                            )
                    }
                }
        };
        if !state.letters.iter().any(same) {
            state.letters.push(letter.clone());
        }
        Ok(())
    }
}
