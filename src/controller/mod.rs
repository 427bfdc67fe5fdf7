//! The reconcilers, one thin pipeline per kind, and the machinery they share.

pub mod apply;
pub mod broker;
pub mod cache;
pub mod changes;
pub mod context;
pub mod driver;
pub mod error;
pub mod events;
pub mod refs;
pub mod status;
pub mod stream;
pub mod subscription;

pub use context::{Config, Context, FIELD_MANAGER};
pub use error::{Error, Result};
