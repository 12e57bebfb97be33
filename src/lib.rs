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
//! `experiment` turns a spec file and the command line's overrides into
//! runs (one, or a sweep's members) and drives them; `run` checks a spec and
//! loads its dataset ([`run::preflight`]) and holds
//! the context every stage reads ([`run::Run`]); `pipeline` drives a run to
//! a finished run directory; `export` writes features for use elsewhere;
//! `cli` is glue between the command line and those, `setup` the thread
//! pools and device both binaries (`runner`, `runner-dev`) start with.

pub mod alloc;
pub mod cache;
pub mod cli;
pub mod data;
pub mod devcheck;
pub mod disk;
pub mod ensemble;
pub mod experiment;
pub mod export;
pub mod extract;
pub mod features;
pub mod inspect;
pub mod interrupt;
pub mod lock;
pub mod log;
pub mod metrics;
pub mod model;
pub mod npy;
pub mod pipeline;
pub mod plan;
pub mod predict;
pub mod report;
pub mod run;
pub mod rundir;
pub mod setup;
pub mod shard;
pub mod spec;
pub mod train;
