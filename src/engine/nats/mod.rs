//! The NATS JetStream engine.

pub mod connection;
pub mod identities;
pub mod jwt;
pub mod streams;
