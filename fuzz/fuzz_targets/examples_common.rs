//! The protocol code of the examples (examples/common/), the parts with a decoder.

#![allow(dead_code, clippy::collapsible_if)]

#[path = "../../examples/common/memcached.rs"]
pub mod memcached;
#[path = "../../examples/common/process.rs"]
pub mod process;
#[path = "../../examples/common/redis.rs"]
pub mod redis;
