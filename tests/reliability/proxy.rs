//! The fault-injecting proxy itself: each fault does what it says.

use std::io;

use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::codec::Encoder;

use crate::common::{STEP, ms, settle_sockets, whole};
use crate::support::channel::msg;
use crate::support::codec::MsgCodec;
use crate::support::proxy::{Accept, Blackhole, Dir, Fault, Proxy};
use crate::support::server::{Behaviour, TestServer};
use crate::support::timeout;

/// Raw bytes through the proxy: each fault does what it says, switched at runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_faults_do_what_they_say() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    whole(async {
        let server = TestServer::start(Behaviour::echo()).await;
        let proxy = Proxy::start(server.addr(), 1).await;
        let mut frame = bytes::BytesMut::new();
        MsgCodec::default()
            .encode(msg("0123456789"), &mut frame)
            .unwrap();
        let frame = frame.freeze();
        let len = frame.len();

        // Pass: the echo comes back whole.
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        s.write_all(&frame).await.unwrap();
        let mut back = vec![0u8; len];
        timeout(STEP, s.read_exact(&mut back)).await.unwrap();
        assert_eq!(back, frame);

        // Stall up: the server reads nothing; switched back, it gets the frame.
        proxy.set(Dir::Up, Fault::Stall);
        s.write_all(&frame).await.unwrap();
        tokio::time::sleep(ms(100)).await;
        assert_eq!(server.stats().frames(), 1);
        proxy.set(Dir::Up, Fault::Pass);
        timeout(STEP, s.read_exact(&mut back)).await.unwrap();
        assert_eq!(server.stats().frames(), 2);

        // Latency down: the echo takes at least that long.
        proxy.set(Dir::Down, Fault::Latency(ms(150)));
        let t = Instant::now();
        s.write_all(&frame).await.unwrap();
        timeout(STEP, s.read_exact(&mut back)).await.unwrap();
        assert!(t.elapsed() >= ms(150), "{:?}", t.elapsed());

        // Slice down: the frame arrives whole, one byte per write.
        proxy.set(Dir::Down, Fault::Slice);
        s.write_all(&frame).await.unwrap();
        timeout(STEP, s.read_exact(&mut back)).await.unwrap();
        assert_eq!(back, frame);

        // Cut down after 5 bytes: 5 bytes, then end of stream.
        proxy.set(Dir::Down, Fault::Cut(5));
        s.write_all(&frame).await.unwrap();
        let mut got = Vec::new();
        timeout(STEP, s.read_to_end(&mut got)).await.unwrap();
        assert_eq!(got, frame[..5]);
        proxy.heal();

        // Reset down after 0 bytes: a connection reset.
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        proxy.set(Dir::Down, Fault::Reset(0));
        s.write_all(&frame).await.unwrap();
        let mut got = Vec::new();
        let err = timeout(STEP, s.read_to_end(&mut got))
            .await
            .expect_err("reset");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        proxy.heal();

        // Accept modes, refusing and resuming.
        proxy.set_accept(Accept::Close);
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(timeout(STEP, s.read(&mut back)).await.unwrap(), 0);
        proxy.set_accept(Accept::Reset);
        // The reset may come before the connect completes, or after.
        let err = match TcpStream::connect(proxy.addr()).await {
            Ok(mut s) => timeout(STEP, s.read(&mut back)).await.expect_err("reset"),
            Err(e) => e,
        };
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        proxy.set_accept(Accept::Forward);
        proxy.refuse().await;
        let err = TcpStream::connect(proxy.addr()).await.expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        proxy.resume().await.unwrap();
        let s = TcpStream::connect(proxy.addr()).await.unwrap();
        drop(s);
        assert_eq!(proxy.stats().dropped_on_accept(), 2);
        settle_sockets(&[server.stats()], &[proxy.stats()]).await;

        // A blackhole: connects hang.
        let hole = Blackhole::start().await;
        let hung = tokio::time::timeout(ms(200), TcpStream::connect(hole.addr())).await;
        assert!(hung.is_err(), "a connect to the blackhole completed");
    })
    .await;
}
