//! The server side of a [`Net`]'s connection: read, execute, answer, as the host's
//! behaviour says.

use std::io;
use std::pin::Pin;
use std::time::Duration;

use bytes::BytesMut;
use futures_core::Stream;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream, WriteHalf};
use tokio_util::codec::{Encoder, FramedRead};

use super::{Behavior, ConnInfo, Net, Server, Tls, What};

/// The server's end of a connection: the in-memory stream, or a TLS session over it.
trait Duplex: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Duplex for T {}

type Half = WriteHalf<Box<dyn Duplex>>;

impl<S, CC> Net<S, CC>
where
    S: Server,
    CC: Clone + Send + Sync + 'static,
{
    async fn write(&self, info: &ConnInfo, wr: &mut Half, bytes: &[u8]) -> io::Result<()> {
        wr.write_all(bytes).await?;
        self.record(info, What::Wrote(bytes.len()));
        Ok(())
    }

    /// Writes the server's drain notice, if it has one. False when the client is gone.
    async fn notice(&self, info: &ConnInfo, wr: &mut Half, codec: &mut S::Codec) -> bool {
        let Some(frame) = self.inner.server.drain_notice(info) else {
            return true;
        };
        let mut buf = BytesMut::new();
        if codec.encode(frame, &mut buf).is_err() {
            return true;
        }
        self.inner
            .trace
            .log(format!("srv: conn {} drain notice", info.conn));
        if self.write(info, wr, &buf).await.is_err() {
            return false;
        }
        self.record(info, What::DrainNotice);
        true
    }

    /// Accepts one connection (its TLS handshake, if the network speaks TLS), then
    /// serves it; returns why it ended.
    pub(super) async fn accept(
        &self,
        info: &ConnInfo,
        tls: Option<Tls>,
        io: DuplexStream,
        behavior: Behavior,
        drain: Option<u32>,
    ) -> &'static str {
        let io: Box<dyn Duplex> = match tls {
            #[cfg(feature = "rustls")]
            Some(tls) => match tls.server.accept(io).await {
                Ok(tls) => Box::new(tls),
                Err(_) => return "TLS handshake failed",
            },
            #[cfg(not(feature = "rustls"))]
            Some(never) => match never {},
            None => Box::new(io),
        };
        self.serve(info, io, behavior, drain).await
    }

    /// Serves one connection with `behavior` (and a drain notice after `drain` reply
    /// frames); returns why it ended.
    async fn serve(
        &self,
        info: &ConnInfo,
        io: Box<dyn Duplex>,
        behavior: Behavior,
        drain: Option<u32>,
    ) -> &'static str {
        let server = &self.inner.server;
        let mut codec = server.codec();
        let (rd, mut wr) = tokio::io::split(io);
        if behavior == Behavior::OneFrame {
            if let Some(frame) = server.refusal(info) {
                let mut buf = BytesMut::new();
                if codec.encode(frame, &mut buf).is_err() {
                    return "refusal did not encode";
                }
                let _ = self.write(info, &mut wr, &buf).await;
            }
            return "one frame sent";
        }
        let mut reader = FramedRead::new(rd, codec.clone());
        let mut frames = 0u32;
        // A silent host writes nothing, a drain notice neither.
        let drain = drain.filter(|_| behavior != Behavior::Silent);
        if drain == Some(0) && !self.notice(info, &mut wr, &mut codec).await {
            return "client gone";
        }
        loop {
            let req = std::future::poll_fn(|cx| Pin::new(&mut reader).poll_next(cx)).await;
            let req = match req {
                Some(Ok(req)) => req,
                Some(Err(e)) => {
                    drop(e);
                    return "undecodable request";
                }
                None => return "client closed",
            };
            let d = server.describe(&req);
            self.inner
                .trace
                .log(format!("srv: conn {} read {}", info.conn, d.text));
            self.record(info, What::Read(d.clone()));
            let served = server.serve(info, req);
            if served.executed {
                self.record(info, What::Executed(d));
            }
            if behavior == Behavior::Silent {
                continue;
            }
            for (delay, frame) in served.replies {
                let extra = match behavior {
                    Behavior::Slow(d) => d,
                    _ => Duration::ZERO,
                };
                if !(delay + extra).is_zero() {
                    tokio::time::sleep(delay + extra).await;
                }
                let mut buf = BytesMut::new();
                if codec.encode(frame, &mut buf).is_err() {
                    return "reply did not encode";
                }
                match behavior {
                    Behavior::CrashAfter(n) if frames >= n => return "crashed",
                    Behavior::ResetMidFrame(n) if frames >= n => {
                        let half = buf.len() / 2;
                        let _ = self.write(info, &mut wr, &buf[..half]).await;
                        return "reset mid-frame";
                    }
                    Behavior::Trickle { bytes, every } => {
                        for chunk in buf.chunks(bytes.max(1)) {
                            tokio::time::sleep(every).await;
                            if self.write(info, &mut wr, chunk).await.is_err() {
                                return "client gone";
                            }
                        }
                    }
                    _ => {
                        if self.write(info, &mut wr, &buf).await.is_err() {
                            return "client gone";
                        }
                    }
                }
                frames += 1;
                if drain == Some(frames) && !self.notice(info, &mut wr, &mut codec).await {
                    return "client gone";
                }
            }
        }
    }
}
