//! The NATS JetStream engine.

pub mod connection;
pub mod jwt;
pub mod streams;
