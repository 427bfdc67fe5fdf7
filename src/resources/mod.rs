//! Pure builders of the names and objects Conveyor owns. No IO.

pub mod names;
