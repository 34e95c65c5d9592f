//! Shared by the Redis and memcached examples and their test suites (each includes it
//! with `#[path = ".../common/mod.rs"] mod common;`), so the protocol code exists once:
//!
//! * [`process`]: a real server started as a child process on a free port, killed by
//!   its pid when dropped.
//! * [`redis`]: RESP through the `redis-protocol` crate's codec, and the
//!   [`Protocol`](socketchannel::Protocol) that tells replies, error replies and pub/sub
//!   pushes apart (order mode).
//! * [`memcached`]: memcached's binary protocol, with its `opaque` field as the session
//!   id (session mode).
//!
//! Each user takes only part of it, hence the `dead_code` allowance.

#![allow(dead_code)]

pub mod memcached;
pub mod process;
pub mod redis;
