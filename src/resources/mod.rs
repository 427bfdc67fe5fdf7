//! Pure builders of the names and objects Conveyor owns. No IO.

pub mod consumer;
pub mod labels;
pub mod managed;
pub mod names;
pub mod nats;
pub mod pods;
pub mod quantity;
pub mod rabbitmq;
