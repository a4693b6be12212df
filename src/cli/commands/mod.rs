//! One module per command: arguments to options, plan, dry run or execute, report.

pub mod create;
pub mod env;
pub mod prepare;
pub mod read;
pub mod remote;
pub mod restore;
pub mod serve;
pub mod snapshots;
