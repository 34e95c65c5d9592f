//! The frame decoders this repository ships fed arbitrary bytes: the test protocol's
//! `MsgCodec` (tests/support/codec.rs), the memcached binary codec and the RESP codec of
//! the examples (examples/common/).
//!
//! The first byte picks the decoder and how the rest is cut into reads; the rest is
//! the stream. Asserted:
//! * no panic, and no decoder that returns a frame without consuming bytes (that would
//!   make a `Framed` spin);
//! * the frames do not depend on how the stream is cut into reads: decoding it whole
//!   and decoding it in pieces give the same frames, then the same outcome (an error,
//!   or a partial frame waiting for more) — catalogue 18 and 19;
//! * `MsgCodec` and the memcached codec: a decoded frame encodes back to the bytes it
//!   came from (the memcached codec encodes requests, so its magic byte differs).

#![no_main]

#[path = "../../tests/support/codec.rs"]
mod codec;
#[path = "examples_common.rs"]
mod common;

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use common::memcached::BinaryCodec;
use common::redis::{Resp3Frame, RespCodec};

/// Frames decoded from one stream, then how it ended: `Err` for a decode error (its
/// message), `Ok(n)` for `n` bytes left over, waiting for the rest of a frame.
type Outcome<T> = (Vec<T>, Result<usize, String>);

/// Decodes `input` fed in reads of the sizes `cuts` gives (cycled; whole if empty),
/// as a `FramedRead` would: decode until `None`, then read more; at the end of the
/// stream, what is left is a partial frame.
fn decode_in_pieces<D>(mut decoder: D, input: &[u8], cuts: &[usize]) -> Outcome<D::Item>
where
    D: Decoder,
    D::Error: std::fmt::Display,
{
    let mut frames = Vec::new();
    let mut buf = BytesMut::new();
    let mut rest = input;
    let mut cut = cuts.iter().copied().cycle();
    loop {
        let n = if cuts.is_empty() {
            rest.len()
        } else {
            cut.next().unwrap_or(1).clamp(1, rest.len().max(1))
        };
        let (now, later) = rest.split_at(n.min(rest.len()));
        buf.extend_from_slice(now);
        rest = later;
        loop {
            let before = buf.len();
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(
                        buf.len() < before,
                        "a frame decoded from nothing: {before} bytes before and after"
                    );
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(e) => return (frames, Err(e.to_string())),
            }
        }
        if rest.is_empty() {
            return (frames, Ok(buf.len()));
        }
    }
}

/// Decodes `input` whole and cut by `cuts`, and compares the frames (as `view` shows
/// them) and the outcomes.
fn same_whole_and_in_pieces<D, V>(
    make: impl Fn() -> D,
    view: impl Fn(&D::Item) -> V,
    input: &[u8],
    cuts: &[usize],
) where
    D: Decoder,
    V: PartialEq + std::fmt::Debug,
    D::Error: std::fmt::Display,
{
    let whole = decode_in_pieces(make(), input, &[]);
    let pieces = decode_in_pieces(make(), input, cuts);
    let (a, b): (Vec<V>, Vec<V>) = (
        whole.0.iter().map(&view).collect(),
        pieces.0.iter().map(&view).collect(),
    );
    assert_eq!(a, b, "frames differ when the stream is cut {cuts:?}");
    // An error may be found earlier in pieces only in what it says, not whether.
    assert_eq!(
        whole.1.is_err(),
        pieces.1.is_err(),
        "outcome differs when cut {cuts:?}: {:?} vs {:?}",
        whole.1,
        pieces.1
    );
    if let (Ok(a), Ok(b)) = (&whole.1, &pieces.1) {
        assert_eq!(a, b, "bytes left over differ when cut {cuts:?}");
    }
}

/// Decodes again while the inner decoder consumed bytes but returned no frame.
///
/// Finding of this target: `redis-protocol` 6.0.0's RESP3 codec, for a streamed frame
/// (`$?`, `*?`, ... and their chunks), consumes the stream's header or a chunk and
/// returns `Ok(None)` even when the rest is already buffered. `FramedRead` then waits
/// for more bytes from the socket before decoding again, so a streamed reply that
/// arrived in one read is not delivered until the server sends something more (in the
/// channel: the call waits until then, or until the stall timeout). The examples'
/// `RespCodec` passes that through; this wrapper is the fix it needs, applied here so
/// the target goes on checking everything else.
struct Eager<D>(D);

impl<D: Decoder> Decoder for Eager<D> {
    type Item = D::Item;
    type Error = D::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<D::Item>, D::Error> {
        loop {
            let before = src.len();
            match self.0.decode(src)? {
                Some(frame) => return Ok(Some(frame)),
                None if src.len() < before => continue,
                None => return Ok(None),
            }
        }
    }
}

/// The panic `redis-protocol` 6.0.0 raises decoding a RESP3 map or set whose key is an
/// aggregate (`%1\r\n*1\r\n:1\r\n:2\r\n`): its `Hash` for frames panics on those.
///
/// Finding of this target: a server (or anything in the middle) can make the RESP3
/// decoder panic. In a channel the panic is in the connection task; the crate catches
/// it there and closes the channel, so callers get an error, but the decoder should
/// return a decode error instead. Turned into a decode error here (the panic hook is
/// silenced around the call, since libFuzzer's hook aborts) so the target goes on.
const KNOWN_RESP3_PANIC: &str = "Invalid RESP3 data type to use as hash key.";

struct NoKnownPanic<D>(D);

impl<D: Decoder> Decoder for NoKnownPanic<D>
where
    D::Error: std::fmt::Display,
{
    type Item = D::Item;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<D::Item>, std::io::Error> {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.0.decode(src)));
        std::panic::set_hook(hook);
        match got {
            Ok(got) => got.map_err(|e| std::io::Error::other(e.to_string())),
            Err(panic) => {
                let text = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                if text == KNOWN_RESP3_PANIC {
                    Err(std::io::Error::other(text))
                } else {
                    std::panic::resume_unwind(panic)
                }
            }
        }
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&setting, input)) = data.split_first() else {
        return;
    };
    // Reads of 1 to 8 bytes (the fine cuts catch split-header bugs), or every byte.
    let cuts: Vec<usize> = match setting >> 3 {
        0 => vec![1],
        n => vec![usize::from(n & 7) + 1, usize::from(n >> 3) + 1],
    };
    match setting % 4 {
        0 => {
            let make = || codec::MsgCodec { max_len: 1 << 16 };
            same_whole_and_in_pieces(make, Clone::clone, input, &cuts);
            // Round trip: each frame encodes back to its bytes.
            let (frames, _) = decode_in_pieces(make(), input, &[]);
            let mut encoded = BytesMut::new();
            for f in frames {
                make().encode(f, &mut encoded).expect("encode");
            }
            assert_eq!(&encoded[..], &input[..encoded.len()], "MsgCodec round trip");
        }
        1 => {
            same_whole_and_in_pieces(BinaryCodec::default, Clone::clone, input, &cuts);
            let (frames, _) = decode_in_pieces(BinaryCodec::default(), input, &[]);
            let mut encoded = BytesMut::new();
            for f in frames {
                let mut one = BytesMut::new();
                BinaryCodec::default().encode(f, &mut one).expect("encode");
                one[0] = 0x81; // the decoder reads responses, the encoder writes requests
                encoded.extend_from_slice(&one);
            }
            assert_eq!(
                &encoded[..],
                &input[..encoded.len()],
                "memcached round trip"
            );
        }
        // RESP frames are compared by kind: `redis-protocol` keeps a different one of
        // two values under a duplicate map key depending on how the bytes arrived (a
        // RESP3 map with a duplicate key is a server's bug; not this crate's concern).
        2 => same_whole_and_in_pieces(RespCodec::resp2, Resp3Frame::kind, input, &cuts),
        _ => same_whole_and_in_pieces(
            || NoKnownPanic(Eager(RespCodec::resp3())),
            Resp3Frame::kind,
            input,
            &cuts,
        ),
    }
});
