//! Conveyor: a Kubernetes operator that runs message-queue infrastructure for event-driven systems.
#![forbid(unsafe_code)]

pub mod api;
pub mod autoscale;
pub mod clients;
pub mod controller;
pub mod crdgen;
pub mod engine;
pub mod leader;
pub mod metrics;
pub mod operator;
pub mod resources;
pub mod server;
pub mod telemetry;
