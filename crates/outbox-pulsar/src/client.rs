//! Connections by broker, topic lookups and partition counts.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::config::{PulsarConfig, ServiceUrl};
use crate::connection::Connection;
use crate::error::PulsarError;
use crate::proto::{
    BaseCommand, CommandLookupTopic, CommandPartitionedTopicMetadata, base_command::Type,
    command_lookup_topic_response::LookupType,
    command_partitioned_topic_metadata_response::LookupType as MetadataResult,
};

/// Redirects a lookup follows before giving up (a cluster mid-rebalance).
const MAX_REDIRECTS: usize = 20;

/// Where a topic's owner is, and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Route {
    /// The socket to open: the broker, or the proxy in front of it.
    physical: ServiceUrl,
    /// Set when connecting through a proxy: the broker it forwards to.
    proxy_to: Option<String>,
}

/// Shared by a publisher's or a source's producers and consumers: one connection per
/// broker, reopened when it is lost.
pub(crate) struct Client {
    config: PulsarConfig,
    connections: Mutex<HashMap<Route, Connection>>,
}

impl Client {
    pub(crate) fn new(config: PulsarConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            connections: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn config(&self) -> &PulsarConfig {
        &self.config
    }

    async fn connection(&self, route: &Route) -> Result<Connection, PulsarError> {
        let mut connections = self.connections.lock().await;
        if let Some(conn) = connections.get(route)
            && !conn.is_closed()
        {
            return Ok(conn.clone());
        }
        let conn =
            Connection::connect(&self.config, &route.physical, route.proxy_to.as_deref()).await?;
        connections.insert(route.clone(), conn.clone());
        Ok(conn)
    }

    /// A connection to the service URL (any broker).
    async fn service_connection(&self) -> Result<Connection, PulsarError> {
        self.connection(&Route {
            physical: self.config.service_url.clone(),
            proxy_to: None,
        })
        .await
    }

    /// The number of partitions of `topic` (a full name); 0 for a non-partitioned
    /// topic.
    pub(crate) async fn partitions(&self, topic: &str) -> Result<u32, PulsarError> {
        let conn = self.service_connection().await?;
        let answer = conn
            .request("partitioned topic metadata", |request_id| BaseCommand {
                r#type: Type::PartitionedMetadata as i32,
                partition_metadata: Some(CommandPartitionedTopicMetadata {
                    topic: topic.to_owned(),
                    request_id,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await?;
        let kind = answer.r#type();
        let response = answer
            .partition_metadata_response
            .ok_or_else(|| unexpected("partitioned topic metadata", kind))?;
        if response.response() == MetadataResult::Failed {
            return Err(PulsarError::Server {
                operation: "partitioned topic metadata",
                code: response.error(),
                message: response.message.unwrap_or_default(),
            });
        }
        Ok(response.partitions.unwrap_or(0))
    }

    /// A connection to the broker that owns `topic` (one partition, or a
    /// non-partitioned topic), found by lookup.
    pub(crate) async fn owner(&self, topic: &str) -> Result<Connection, PulsarError> {
        let mut conn = self.service_connection().await?;
        let mut authoritative = false;
        for _ in 0..MAX_REDIRECTS {
            let answer = conn
                .request("topic lookup", |request_id| BaseCommand {
                    r#type: Type::Lookup as i32,
                    lookup_topic: Some(CommandLookupTopic {
                        topic: topic.to_owned(),
                        request_id,
                        authoritative: Some(authoritative),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await?;
            let kind = answer.r#type();
            let response = answer
                .lookup_topic_response
                .ok_or_else(|| unexpected("topic lookup", kind))?;
            let kind = response.response();
            if kind == LookupType::Failed {
                return Err(PulsarError::Server {
                    operation: "topic lookup",
                    code: response.error(),
                    message: response.message.unwrap_or_default(),
                });
            }
            let broker = if self.config.service_url.tls {
                response.broker_service_url_tls.clone()
            } else {
                response.broker_service_url.clone()
            }
            .ok_or_else(|| PulsarError::Protocol {
                operation: "topic lookup",
                message: "the answer names no broker URL for this scheme".into(),
            })?;
            let route = if response.proxy_through_service_url() {
                Route {
                    physical: self.config.service_url.clone(),
                    proxy_to: Some(logical_address(&broker)),
                }
            } else {
                Route {
                    physical: ServiceUrl::parse(&broker).map_err(|e| PulsarError::Protocol {
                        operation: "topic lookup",
                        message: e.to_string(),
                    })?,
                    proxy_to: None,
                }
            };
            let next = self.connection(&route).await?;
            match kind {
                LookupType::Connect => return Ok(next),
                _ => {
                    authoritative = response.authoritative();
                    conn = next;
                }
            }
        }
        Err(PulsarError::Protocol {
            operation: "topic lookup",
            message: format!("more than {MAX_REDIRECTS} redirects for {topic}"),
        })
    }

    /// Closes every connection.
    pub(crate) async fn shutdown(&self) {
        for conn in self.connections.lock().await.values() {
            conn.shutdown("the client was closed");
        }
    }
}

/// An answer of the wrong kind.
pub(crate) fn unexpected(operation: &'static str, kind: Type) -> PulsarError {
    PulsarError::Protocol {
        operation,
        message: format!("unexpected answer {kind:?}"),
    }
}

/// `host:port` of a broker URL, as a proxy's `proxy_to_broker_url` wants it.
fn logical_address(url: &str) -> String {
    url.split_once("://")
        .map_or(url, |(_, rest)| rest)
        .trim_end_matches('/')
        .to_owned()
}

/// The partition of `key` among `partitions`: Murmur3-32 of the key, the scheme
/// Pulsar's clients call `Murmur3_32Hash`, so other producers of the same keys agree.
pub(crate) fn partition_for(key: &str, partitions: u32) -> u32 {
    (murmur3_32(key.as_bytes()) & i32::MAX as u32) % partitions
}

/// MurmurHash3 x86 32-bit, seed 0.
pub(crate) fn murmur3_32(data: &[u8]) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let mut h: u32 = 0;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        h ^= k;
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        let mut k: u32 = 0;
        for (i, byte) in tail.iter().enumerate() {
            k |= u32::from(*byte) << (8 * i);
        }
        k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        h ^= k;
    }
    h ^= data.len() as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur3_matches_the_reference_vectors() {
        assert_eq!(murmur3_32(b""), 0);
        assert_eq!(murmur3_32(b"hello"), 0x248b_fa47);
        assert_eq!(
            murmur3_32(b"The quick brown fox jumps over the lazy dog"),
            0x2e4f_f723
        );
    }

    #[test]
    fn a_key_always_lands_on_the_same_partition() {
        for key in ["a", "order-17", "ü"] {
            let p = partition_for(key, 7);
            assert!(p < 7);
            assert_eq!(partition_for(key, 7), p);
        }
    }

    #[test]
    fn proxy_targets_drop_the_scheme() {
        assert_eq!(logical_address("pulsar://b1:6650/"), "b1:6650");
    }
}
