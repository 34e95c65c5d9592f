//! In-memory transports: one byte at a time, with would-block; an echoing peer and the
//! checks on what it read.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::future::join_all;
use futures::{SinkExt, StreamExt};
use socketchannel::Call;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;

use crate::common::STEP;
use crate::support::channel::{Ch, msg};
use crate::support::codec::{Msg, MsgCodec};
use crate::support::server::replies_to;
use crate::support::timeout;

/// An I/O object that returns `Pending` (waking itself at once) before every read and
/// every write, and then moves a single byte: every frame is split at every byte, both
/// ways, and every write would block once.
pub(crate) struct OneByte<T> {
    io: T,
    read_turn: bool,
    write_turn: bool,
}

impl<T> OneByte<T> {
    pub(crate) fn new(io: T) -> Self {
        OneByte {
            io,
            read_turn: false,
            write_turn: false,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for OneByte<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if !self.read_turn {
            self.read_turn = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let mut one = [0u8; 1];
        let mut small = ReadBuf::new(&mut one);
        let polled = Pin::new(&mut self.io).poll_read(cx, &mut small);
        if let Poll::Ready(Ok(())) = polled {
            buf.put_slice(small.filled());
            self.read_turn = false;
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for OneByte<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Pin::new(&mut self.io).poll_write(cx, data);
        }
        if !self.write_turn {
            self.write_turn = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let polled = Pin::new(&mut self.io).poll_write(cx, &data[..1]);
        if let Poll::Ready(Ok(_)) = polled {
            self.write_turn = false;
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A peer over `io` that answers every frame as the test server does ([`replies_to`]),
/// in order; returns the frames it read, in order.
pub(crate) fn echo_peer(io: DuplexStream) -> JoinHandle<Vec<Msg>> {
    tokio::spawn(async move {
        let mut framed = Framed::new(io, MsgCodec::default());
        let mut log = Vec::new();
        for _ in 0..1_000_000 {
            let Some(Ok(req)) = framed.next().await else {
                break;
            };
            for reply in replies_to(&req) {
                if framed.feed(reply).await.is_err() {
                    return log;
                }
            }
            if framed.flush().await.is_err() {
                return log;
            }
            log.push(req);
        }
        log
    })
}

/// Checks that the parts of every multi-part request (bodies `mp:C:I`) arrived back to
/// back and in order, with nothing between them.
#[track_caller]
pub(crate) fn assert_parts_contiguous(frames: &[Msg], parts: usize) {
    let bodies: Vec<&str> = frames.iter().map(|m| m.text()).collect();
    let mut i = 0;
    while i < bodies.len() {
        if let Some(rest) = bodies[i].strip_prefix("mp:") {
            let call = rest.split(':').next().expect("call");
            for k in 0..parts {
                let want = format!("mp:{call}:{k}");
                assert_eq!(
                    bodies.get(i + k).copied(),
                    Some(want.as_str()),
                    "parts of call {call} interleaved or out of order: {bodies:?}"
                );
            }
            i += parts;
        } else {
            i += 1;
        }
    }
}

/// `n` calls of both kinds, concurrently: single requests `one:C` and three-part
/// requests `mp:C:0..3` (each part echoed, so three replies); each checks its replies.
pub(crate) async fn mixed_calls(ch: &Ch, n: usize) {
    let calls = (0..n).map(|c| async move {
        if c % 3 == 0 {
            let parts: Vec<Msg> = (0..3).map(|k| msg(format!("mp:{c}:{k}"))).collect();
            let replies = timeout(STEP, ch.request_n(Call::parts(parts), 3))
                .await
                .unwrap_or_else(|e| panic!("multi-part call {c}: {e:?}"));
            let bodies: Vec<&str> = replies.iter().map(|m| m.text()).collect();
            let want: Vec<String> = (0..3).map(|k| format!("mp:{c}:{k}")).collect();
            assert_eq!(bodies, want, "multi-part call {c}");
        } else {
            let body = format!("one:{c}");
            let reply = timeout(STEP, ch.request(msg(&*body)))
                .await
                .unwrap_or_else(|e| panic!("call {c}: {e:?}"));
            assert_eq!(reply.text(), body, "call {c}");
        }
    });
    join_all(calls).await;
}
