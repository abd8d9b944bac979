//! Types of the Pulsar binary protocol, generated from Apache Pulsar's
//! `PulsarApi.proto` by `build.rs`.
#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

include!(concat!(env!("OUT_DIR"), "/pulsar.proto.rs"));
