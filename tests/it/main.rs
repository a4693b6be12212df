//! Integration tests: the mxsnap binary against a real PostgreSQL server and the real
//! pg_dump, pg_restore and GNU tar. See harness.rs for how the server is found or started.

mod harness;
mod support;

mod catalog;
mod cli;
mod create;
mod crypt;
mod foreign;
mod objstore;
mod operations;
mod prepare;
mod remote;
mod remote_api;
mod restore;
mod serve;
mod tls;
mod verify;
mod web;
mod webdriver;
mod zip;
