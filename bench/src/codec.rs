//! The wire format shared by every client and the echo server.
//!
//! ```text
//! +----------------+----------------+------------------------+
//! | len: u32 BE    | id: u64 BE     | payload (len - 8 bytes) |
//! +----------------+----------------+------------------------+
//!   not counted in len
//! ```
//!
//! In order mode the id is unused (the clients send 0); in session mode the client stamps
//! it and the server echoes it back, so replies can be matched in any order.

use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, Encoder, Framed};

use crate::measure::Counted;

/// Bytes before the payload: the length prefix and the id.
pub const HEADER_LEN: usize = 4 + 8;

/// Largest `len` the decoder accepts; anything bigger is treated as a corrupt stream.
const MAX_LEN: usize = 16 * 1024 * 1024;

/// One request or reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Session id (session mode) or 0 (order mode).
    pub id: u64,
    /// Opaque payload; the benchmark puts a nonce in its first 8 bytes.
    pub payload: Bytes,
}

impl Frame {
    /// Size of this frame on the wire.
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }
}

/// Encoder and decoder for [`Frame`].
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameCodec;

impl Encoder<Frame> for FrameCodec {
    type Error = io::Error;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> io::Result<()> {
        let len = 8 + frame.payload.len();
        if len > MAX_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "frame too large",
            ));
        }
        dst.reserve(4 + len);
        dst.put_u32(len as u32);
        dst.put_u64(frame.id);
        dst.extend_from_slice(&frame.payload);
        Ok(())
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<Frame>> {
        let Some(len) = frame_len(src)? else {
            return Ok(None);
        };
        if src.len() < 4 + len {
            // Make room for the rest of this frame in one go.
            src.reserve(4 + len - src.len());
            return Ok(None);
        }
        src.advance(4);
        let id = src.get_u64();
        let payload = src.split_to(len - 8).freeze();
        Ok(Some(Frame { id, payload }))
    }
}

/// A connection as the `Sink + Stream` clients (tokio-tower, the engine) see it.
pub type Transport = Framed<Counted<TcpStream>, FrameCodec>;

/// Frames `stream`, with the same 64 KiB starting buffers the hand-written clients use.
pub fn transport(stream: TcpStream) -> Transport {
    Framed::with_capacity(Counted::new(stream), FrameCodec, 64 * 1024)
}

/// Reads the length prefix at the start of `buf`, if it is all there, and checks it.
///
/// Shared with the server, which parses frames in place without this codec.
pub fn frame_len(buf: &[u8]) -> io::Result<Option<usize>> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(prefix.try_into().expect("four bytes")) as usize;
    if !(8..=MAX_LEN).contains(&len) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad frame length {len}"),
        ));
    }
    Ok(Some(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_split_anywhere() {
        let frames = [
            Frame {
                id: 7,
                payload: Bytes::from_static(b"hello, world"),
            },
            Frame {
                id: u64::MAX,
                payload: Bytes::from(vec![0xAB; 1024]),
            },
        ];
        let mut wire = BytesMut::new();
        for f in &frames {
            FrameCodec.encode(f.clone(), &mut wire).unwrap();
        }
        assert_eq!(
            wire.len(),
            frames.iter().map(Frame::wire_len).sum::<usize>()
        );

        // Feed the bytes one at a time: the decoder must wait for whole frames.
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for b in wire.iter() {
            buf.put_u8(*b);
            while let Some(f) = FrameCodec.decode(&mut buf).unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out, frames);
        assert!(buf.is_empty());
    }

    #[test]
    fn rejects_bad_length() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 3][..]);
        assert!(FrameCodec.decode(&mut buf).is_err());
    }
}
