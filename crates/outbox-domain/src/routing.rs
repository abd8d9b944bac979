//! Service-level routing: event type → service → (table, topic, consumer group).
//!
//! Every name that can reach SQL (table names) or a broker (topics, consumer groups)
//! comes from a validated [`RouteRegistry`], never from a caller's string.

use crate::{OutboxMessage, Payload, PersistenceStrategy};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::num::{NonZeroU16, NonZeroU32};

/// A name rejected by [`Identifier`] or [`TopicName`] validation. A configuration bug.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} `{value}`: {rule}")]
pub struct InvalidIdentifier {
    /// What the name was for.
    pub kind: &'static str,
    /// The rejected value.
    pub value: String,
    /// The rule it broke.
    pub rule: &'static str,
}

/// Declares a validated name type: a `String` newtype whose only constructor, `parse`,
/// checks `$valid`, with `as_str`, `Display` and a validating `Deserialize`.
macro_rules! validated_name {
    ($(#[$doc:meta])* $name:ident, $rule:literal, $valid:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates `value`; `kind` says what the name is for in the error message.
            pub fn parse(kind: &'static str, value: &str) -> Result<Self, InvalidIdentifier> {
                let valid: fn(&str) -> bool = $valid;
                if valid(value) {
                    Ok(Self(value.to_owned()))
                } else {
                    Err(InvalidIdentifier { kind, value: value.to_owned(), rule: $rule })
                }
            }

            /// The validated name.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $name::parse(stringify!($name), &s).map_err(serde::de::Error::custom)
            }
        }
    };
}

validated_name!(
    /// A name safe to splice into SQL: `[a-z_][a-z0-9_]*`, at most 63 bytes (PostgreSQL's
    /// identifier limit, also within MySQL's 64 and SQLite's none). Used for services and
    /// table names.
    Identifier,
    "use 1 to 63 characters from a-z, 0-9 and _, not starting with a digit",
    |v| {
        !v.is_empty()
            && v.len() <= 63
            && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !v.as_bytes()[0].is_ascii_digit()
    }
);

validated_name!(
    /// A topic or consumer-group name: `[A-Za-z0-9._-]` plus `/` and `:` (for Pulsar's
    /// `persistent://tenant/ns/topic`), 1 to 249 characters (Kafka's limit).
    TopicName,
    "use 1 to 249 characters from A-Z, a-z, 0-9, '.', '_', '-', '/' and ':'",
    |v| {
        !v.is_empty() && v.len() <= 249 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/:".contains(&b))
    }
);

/// Why a registry could not be built or a route not found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// A name broke its charset rule (configuration bug).
    #[error(transparent)]
    InvalidName(#[from] InvalidIdentifier),
    /// Two routes claim the same event type (configuration bug).
    #[error("event type `{0}` is routed twice")]
    DuplicateEventType(String),
    /// Two services share a name (configuration bug).
    #[error("service `{0}` is declared twice")]
    DuplicateService(String),
    /// An event type names a service that is not declared (configuration bug).
    #[error("event type `{event_type}` routes to undeclared service `{service}`")]
    UnknownService {
        /// The event type.
        event_type: String,
        /// The missing service.
        service: String,
    },
    /// The routing file is not valid TOML or does not have the expected shape (see
    /// [`RouteRegistry::from_toml`]).
    #[error("invalid routing configuration: {0}")]
    Config(String),
    /// Enqueue of an event type that has no route (caller bug: add a route or fix the
    /// event type).
    #[error("no route for event type `{0}`")]
    UnknownEventType(String),
}

/// One service's destination settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRoute {
    /// Service name.
    pub name: Identifier,
    /// Outbox table that holds the service's messages.
    pub table: Identifier,
    /// Topic its messages go to.
    pub topic: TopicName,
    /// Consumer group that consumes them.
    pub consumer_group: TopicName,
    /// Default strategy for its event types.
    #[serde(default)]
    pub strategy: PersistenceStrategy,
    /// Partition count of `topic`, for topic provisioning; `None` leaves it to the
    /// broker's default. More partitions spread the load over more consumers; changing
    /// it later moves keys to other partitions, so choose it up front.
    #[serde(default)]
    pub topic_partitions: Option<NonZeroU32>,
    /// Replication factor of `topic`, for topic provisioning; `None` for the broker's
    /// default.
    #[serde(default)]
    pub topic_replication: Option<NonZeroU16>,
}

/// One event type's route, resolved against its service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route<'a> {
    /// The event type.
    pub event_type: &'a str,
    /// The owning service and its destinations.
    pub service: &'a ServiceRoute,
    /// The effective strategy (event override, else the service default).
    pub strategy: PersistenceStrategy,
}

/// The raw shape of routing configuration (for example a `[[services]]` / `[[events]]`
/// TOML file), turned into a [`RouteRegistry`] by [`RouteRegistry::from_config`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesConfig {
    /// Declared services.
    #[serde(default)]
    pub services: Vec<ServiceRoute>,
    /// Event type → service assignments.
    #[serde(default)]
    pub events: Vec<EventRouteConfig>,
}

/// One event type's entry in [`RoutesConfig`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRouteConfig {
    /// The event type, for example `order.created`.
    pub event_type: String,
    /// The service it belongs to.
    pub service: String,
    /// Overrides the service's default strategy.
    #[serde(default)]
    pub strategy: Option<PersistenceStrategy>,
}

/// A validated map from event types to services and their destinations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteRegistry {
    services: BTreeMap<Identifier, ServiceRoute>,
    events: BTreeMap<String, (Identifier, Option<PersistenceStrategy>)>,
}

impl RouteRegistry {
    /// Validates a configuration: names, duplicate services and event types, and
    /// event types pointing at undeclared services are all rejected.
    pub fn from_config(config: RoutesConfig) -> Result<Self, RouteError> {
        let mut registry = RouteRegistry::default();
        for service in config.services {
            registry = registry.with_service(service)?;
        }
        for event in config.events {
            registry = registry.with_event(&event.event_type, &event.service, event.strategy)?;
        }
        Ok(registry)
    }

    /// Parses and validates a routing file:
    ///
    /// ```toml
    /// [[services]]
    /// name = "orders"              # [a-z_][a-z0-9_]*, at most 63 bytes
    /// table = "orders_outbox"      # same rule: the only names that reach SQL
    /// topic = "orders.events"
    /// consumer_group = "billing"
    /// strategy = "db_and_publish"  # or db_only, publish_only; default db_and_publish
    /// topic_partitions = 12        # optional, for topic provisioning
    ///
    /// [[events]]
    /// event_type = "order.created"
    /// service = "orders"
    /// strategy = "db_only"         # optional override
    /// ```
    ///
    /// Unknown keys are errors, so a misspelt setting is not silently ignored.
    pub fn from_toml(text: &str) -> Result<Self, RouteError> {
        let config: RoutesConfig =
            toml::from_str(text).map_err(|e| RouteError::Config(e.to_string()))?;
        Self::from_config(config)
    }

    /// Adds a service.
    pub fn with_service(mut self, service: ServiceRoute) -> Result<Self, RouteError> {
        if self.services.contains_key(&service.name) {
            return Err(RouteError::DuplicateService(service.name.to_string()));
        }
        self.services.insert(service.name.clone(), service);
        Ok(self)
    }

    /// Routes `event_type` to the declared service `service`, optionally overriding its
    /// strategy.
    pub fn with_event(
        mut self,
        event_type: &str,
        service: &str,
        strategy: Option<PersistenceStrategy>,
    ) -> Result<Self, RouteError> {
        TopicName::parse("event type", event_type)?;
        let service_id = Identifier::parse("service", service)?;
        if !self.services.contains_key(&service_id) {
            return Err(RouteError::UnknownService {
                event_type: event_type.to_owned(),
                service: service.to_owned(),
            });
        }
        if self.events.contains_key(event_type) {
            return Err(RouteError::DuplicateEventType(event_type.to_owned()));
        }
        self.events
            .insert(event_type.to_owned(), (service_id, strategy));
        Ok(self)
    }

    /// The route of `event_type`, or [`RouteError::UnknownEventType`].
    pub fn route(&self, event_type: &str) -> Result<Route<'_>, RouteError> {
        let (event_type, (service, strategy)) = self
            .events
            .get_key_value(event_type)
            .ok_or_else(|| RouteError::UnknownEventType(event_type.to_owned()))?;
        // `with_event` only accepts declared services, so the lookup cannot miss.
        let service = &self.services[service];
        Ok(Route {
            event_type,
            service,
            strategy: strategy.unwrap_or(service.strategy),
        })
    }

    /// All declared services, by name.
    pub fn services(&self) -> impl Iterator<Item = &ServiceRoute> {
        self.services.values()
    }

    /// A message for `event_type`, with service and topic filled in from its route.
    pub fn message(
        &self,
        event_type: &str,
        partition_key: impl Into<String>,
        payload: Payload,
        now: DateTime<Utc>,
    ) -> Result<OutboxMessage, RouteError> {
        let route = self.route(event_type)?;
        Ok(OutboxMessage::new(
            route.service.name.as_str(),
            event_type,
            route.service.topic.as_str(),
            partition_key,
            payload,
            now,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orders() -> ServiceRoute {
        ServiceRoute {
            name: Identifier::parse("service", "orders").unwrap(),
            table: Identifier::parse("table", "orders_outbox").unwrap(),
            topic: TopicName::parse("topic", "orders.events").unwrap(),
            consumer_group: TopicName::parse("group", "orders-consumers").unwrap(),
            strategy: PersistenceStrategy::DbAndPublish,
            topic_partitions: None,
            topic_replication: None,
        }
    }

    #[test]
    fn identifiers_reject_sql_injection() {
        for bad in [
            "",
            "Orders",
            "orders; drop table x",
            "1abc",
            "a-b",
            "o\"x",
            &"a".repeat(64),
        ] {
            assert!(Identifier::parse("table", bad).is_err(), "{bad:?} accepted");
        }
        assert!(Identifier::parse("table", "outbox_orders_2").is_ok());
        assert!(TopicName::parse("topic", "persistent://public/default/orders").is_ok());
        assert!(TopicName::parse("topic", "orders events").is_err());
    }

    #[test]
    fn routes_resolve_and_reject_bad_config() {
        let reg = RouteRegistry::default()
            .with_service(orders())
            .unwrap()
            .with_event("order.created", "orders", None)
            .unwrap()
            .with_event("order.audited", "orders", Some(PersistenceStrategy::DbOnly))
            .unwrap();
        let r = reg.route("order.created").unwrap();
        assert_eq!(r.service.table.as_str(), "orders_outbox");
        assert_eq!(r.strategy, PersistenceStrategy::DbAndPublish);
        assert_eq!(
            reg.route("order.audited").unwrap().strategy,
            PersistenceStrategy::DbOnly
        );
        assert_eq!(
            reg.route("nope"),
            Err(RouteError::UnknownEventType("nope".into()))
        );
        assert_eq!(
            reg.clone().with_event("order.created", "orders", None),
            Err(RouteError::DuplicateEventType("order.created".into()))
        );
        assert!(matches!(
            reg.clone().with_event("x.y", "billing", None),
            Err(RouteError::UnknownService { .. })
        ));
        assert_eq!(
            reg.with_service(orders()),
            Err(RouteError::DuplicateService("orders".into()))
        );
    }

    #[test]
    fn config_with_bad_table_name_is_rejected_on_load() {
        let json = serde_json::json!({
            "services": [{"name": "orders", "table": "orders; drop", "topic": "t", "consumer_group": "g"}],
        });
        assert!(serde_json::from_value::<RoutesConfig>(json).is_err());
    }

    #[test]
    fn message_takes_service_and_topic_from_route() {
        let reg = RouteRegistry::from_config(RoutesConfig {
            services: vec![orders()],
            events: vec![EventRouteConfig {
                event_type: "order.created".into(),
                service: "orders".into(),
                strategy: None,
            }],
        })
        .unwrap();
        let m = reg
            .message(
                "order.created",
                "order-1",
                Payload::Json(serde_json::json!({})),
                Utc::now(),
            )
            .unwrap();
        assert_eq!(
            (m.service.as_str(), m.topic.as_str()),
            ("orders", "orders.events")
        );
    }

    const ROUTES: &str = r#"
        [[services]]
        name = "orders"
        table = "orders_outbox"
        topic = "orders.events"
        consumer_group = "billing"
        topic_partitions = 6

        [[services]]
        name = "audit"
        table = "outbox_messages"
        topic = "audit.events"
        consumer_group = "auditors"
        strategy = "db_only"

        [[events]]
        event_type = "order.created"
        service = "orders"

        [[events]]
        event_type = "order.viewed"
        service = "orders"
        strategy = "publish_only"

        [[events]]
        event_type = "login.failed"
        service = "audit"
    "#;

    #[test]
    fn routes_load_from_toml() {
        let registry = RouteRegistry::from_toml(ROUTES).unwrap();
        let created = registry.route("order.created").unwrap();
        assert_eq!(created.service.table.as_str(), "orders_outbox");
        assert_eq!(created.service.topic_partitions.map(|p| p.get()), Some(6));
        assert_eq!(created.strategy, PersistenceStrategy::DbAndPublish);
        assert_eq!(
            registry.route("order.viewed").unwrap().strategy,
            PersistenceStrategy::PublishOnly
        );
        assert_eq!(
            registry.route("login.failed").unwrap().strategy,
            PersistenceStrategy::DbOnly
        );
    }

    #[test]
    fn bad_routing_files_are_refused_with_the_reason() {
        let unsafe_table = ROUTES.replace("orders_outbox", "orders; drop table users");
        let err = RouteRegistry::from_toml(&unsafe_table).unwrap_err();
        assert!(err.to_string().contains("drop table"), "{err}");
        let duplicate =
            format!("{ROUTES}\n[[events]]\nevent_type = \"order.created\"\nservice = \"audit\"\n");
        assert_eq!(
            RouteRegistry::from_toml(&duplicate),
            Err(RouteError::DuplicateEventType("order.created".into()))
        );
        let misspelt = ROUTES.replace(
            "consumer_group = \"billing\"",
            "consumer_grup = \"billing\"",
        );
        let err = RouteRegistry::from_toml(&misspelt).unwrap_err();
        assert!(
            matches!(err, RouteError::Config(ref m) if m.contains("consumer_grup")),
            "{err}"
        );
        let strategy = ROUTES.replace("\"db_only\"", "\"db_maybe\"");
        assert!(matches!(
            RouteRegistry::from_toml(&strategy),
            Err(RouteError::Config(_))
        ));
    }
}
