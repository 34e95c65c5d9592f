//! The engine in session mode fed arbitrary server bytes (see `engine.rs`).

#![no_main]

#[path = "../../tests/support/codec.rs"]
mod codec;
mod engine;

libfuzzer_sys::fuzz_target!(|data: &[u8]| engine::run(data, engine::Mode::Session));
