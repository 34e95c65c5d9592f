//! Code shared by the examples and their test suites (each includes it with
//! `#[path = ".../common/mod.rs"] mod common;`), so each piece exists once:
//!
//! * [`process`]: a real server started as a child process on a free port, killed by
//!   its pid when dropped.
//! * [`redis`]: RESP through the `redis-protocol` crate's codec, the
//!   [`Protocol`](socketchannel::Protocol) that tells replies, error replies and pub/sub
//!   pushes apart (order mode), and `redis-server` started through [`process`].
//! * [`memcached`]: memcached's binary protocol, with its `opaque` field as the session
//!   id (session mode), and `memcached` started through [`process`].
//! * [`gateway`]: an axum HTTP service in front of Redis, over [`redis`].
//! * [`http`]: a minimal HTTP/1.1 client, to drive the gateway.
//! * [`tls`]: a test CA issuing server and client certificates (valid, expired, for
//!   any names) and an in-process TLS line server; the client is the crate's
//!   `TlsConnector`.
//!
//! Each user takes only part of it, hence the `dead_code` allowance.

#![allow(dead_code)]

pub mod gateway;
pub mod http;
pub mod memcached;
pub mod memcached_text;
pub mod process;
pub mod redis;
pub mod sentinel;
pub mod tls;
