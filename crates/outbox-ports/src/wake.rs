/// Told when messages were committed, so that a relay delivers them at once instead
/// of at its next poll.
///
/// The runtime's `RelayWaker` wakes a relay in the same process; the sea-orm adapter's
/// `PgNotifier` tells relays in other processes (PostgreSQL `NOTIFY`). A store calls
/// every waker it was given after each commit it knows of. A missed wake costs only
/// latency: relays keep polling as the safety net.
pub trait Wake: Send + Sync {
    /// Messages were committed. Must be cheap and must not block: called on the
    /// writer's path, after its commit.
    fn wake(&self);
}
