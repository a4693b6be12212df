//! mxsnap packages and restores application snapshots: a PostgreSQL dump plus the file objects
//! the database references, in one streaming archive in the cloud's layout.
//!
//! Every user action is an operation of one shape: `plan(options) -> Plan` validates and
//! decides, changing nothing (its `view()` is the dry run), then `execute(plan, progress,
//! cancel) -> Report` does the work, reporting [`progress::Event`]s and stopping at a
//! [`progress::Cancel`]. The operations: [`create`], [`restore`], [`inspect`] (inspect and
//! verify), [`prepare`] (prepare-upload), [`catalog::ops`] (the snapshot catalogue) and
//! [`target::local`] (local environments).
//!
//! Archives are read from a [`source::Source`] and written to files or writers; [`crypt`]
//! seals and opens them with age.
//!
//! The library never prints and never exits: it returns typed [`Error`]s, and writes archives
//! only to the files or writers it is given. The `mxsnap` binary is a thin layer over it.

pub mod archive;
pub mod catalog;
pub mod create;
pub mod crypt;
pub mod error;
#[doc(hidden)]
pub mod fuzz;
pub mod http;
pub mod inspect;
pub mod objstore;
pub mod output;
pub mod pg;
pub mod prepare;
pub mod progress;
pub mod remote;
pub mod restore;
pub mod serve;
pub mod source;
pub mod store;
pub mod sys;
pub mod target;

pub use error::{Error, ErrorKind, Result};
