//! mxsnap packages and restores application snapshots: a PostgreSQL dump plus the file objects
//! the database references, in one streaming archive in the cloud's layout.
//!
//! The library never prints and never exits: it returns typed [`Error`]s and reports progress
//! through [`progress::Progress`]. The `mxsnap` binary is a thin layer over it.

pub mod archive;
pub mod catalog;
pub mod check;
pub mod create;
pub mod env;
pub mod error;
pub mod files;
pub mod local;
pub mod m2ee;
pub mod output;
pub mod pg;
pub mod prepare;
pub mod progress;
pub mod restore;
pub mod tree_writer;

pub use error::{Error, ErrorKind, Result};
