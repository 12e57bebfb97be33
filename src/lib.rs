//! `runner`: declarative, cached transfer-learning experiments for image
//! classification.
//!
//! A run flows one way through these modules:
//!
//! ```text
//! spec (TOML) -> plan (stage keys) -> data (decode, resize)
//!   -> features (cached per backbone x view x split, models/)
//!   -> train (folds x views heads) -> metrics -> rundir -> report
//! ```
//!
//! `pipeline` drives a run from a resolved spec to a finished run directory;
//! `cli` is glue between the command line and `pipeline` / `report`.

pub mod alloc;
pub mod cache;
pub mod cli;
pub mod data;
pub mod devcheck;
pub mod features;
pub mod inspect;
pub mod log;
pub mod metrics;
pub mod npy;
pub mod pipeline;
pub mod plan;
pub mod report;
pub mod rundir;
pub mod spec;
pub mod train;
