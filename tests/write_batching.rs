//! How the connection task gathers calls into writes (`src/mux/flush.rs`): a window of
//! calls goes out in two writes, and a flush left to the next pass is always bounded.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use futures::StreamExt;
use socketchannel::{Channel, Session};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::{Encoder, Framed, FramedRead};

use support::codec::{Kind, Msg, MsgCodec, TestProto};
use support::{bounded, timeout};

/// A byte echo server on its own thread, as a real server runs beside the client: each
/// read (up to 64 KiB) goes back in one write. Ends when the client closes.
#[cfg(feature = "tcp")]
fn echo_per_read() -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        socket.set_nodelay(true).unwrap();
        let mut buf = vec![0; 64 * 1024];
        while let Ok(n @ 1..) = socket.read(&mut buf) {
            if socket.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    addr
}

/// 256 callers, each making its next call as soon as its reply comes: the replies of
/// one window, routed 64 a pass, wake the callers in four groups, and their calls go
/// out in two writes, not one a group: the server works on one half of the window while
/// the callers make the other. (A flush in every pass made 125 writes here, 4 a window.)
///
/// Holds are off after a pass that came slowly (`flush.rs`: a thread preempted by a
/// busy machine is one): a measure of 32 windows over that bound runs again, three
/// times at most. Without holds every measure makes four writes a window.
#[cfg(feature = "tcp")]
#[tokio::test(flavor = "current_thread")]
async fn a_window_of_256_callers_goes_out_in_two_writes() {
    use socketchannel::Plain;
    use tokio_util::codec::LinesCodec;
    const CALLERS: usize = 256;
    const ROUNDS: usize = 32;
    bounded(async {
        let channel: Channel<String, String> = Channel::builder()
            .host(echo_per_read())
            .order(LinesCodec::new(), Plain)
            .unwrap();
        channel.request("warm".to_string()).await.unwrap();
        let mut measures = Vec::new();
        for _ in 0..3 {
            let before = channel.counters();
            let callers = (0..CALLERS).map(|i| {
                let channel = channel.clone();
                tokio::spawn(async move {
                    for round in 0..ROUNDS {
                        let call = format!("{i}.{round}");
                        assert_eq!(channel.request(call.clone()).await.unwrap(), call);
                    }
                })
            });
            for caller in futures::future::join_all(callers).await {
                caller.unwrap();
            }
            let writes = channel.counters().writes - before.writes;
            measures.push(writes);
            // Two a window (63 in all, run after run), and slack for a slow pass.
            if writes <= ROUNDS as u64 * 3 {
                return;
            }
        }
        panic!("writes for {ROUNDS} windows, three measures: {measures:?}");
    })
    .await;
}

/// Ten calls the server holds unanswered (session mode: the next call's reply need not
/// wait for theirs), then a flood of push frames, which keeps every read pass at its
/// limit, and a call: fewer than half of the calls in flight wait unflushed. Pushes
/// complete no call, so no hold is made (and any hold lasts three passes at most). The
/// call is answered while the flood goes on (held for as long as frames were ready, it
/// waited for the flood's end, five seconds; either rule alone passes).
#[tokio::test(flavor = "current_thread")]
async fn a_flood_of_pushes_beside_held_calls_does_not_keep_a_call_unflushed() {
    const HELD: usize = 10;
    bounded(async {
        let (client, server) = tokio::io::duplex(256 * 1024);
        let channel = Channel::new(
            Framed::new(client, MsgCodec::default()),
            Session::new(TestProto),
        );
        let (rd, mut wr) = tokio::io::split(server);
        let (seen, flooding, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (pong_tx, mut pong_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        // The server's reader counts the calls to hold and asks the writer for a pong.
        let reader = {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut calls = FramedRead::new(rd, MsgCodec::default());
                while let Some(Ok(call)) = calls.next().await {
                    match call.text() {
                        "ping" => {
                            let _ = pong_tx.send(call.id);
                        }
                        _ => {
                            seen.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            })
        };
        // The server's writer: once the calls are held, pushes in batches of 256 for
        // five seconds at most, with the pong in between when asked.
        let writer = {
            let (seen, flooding, stop) = (seen.clone(), flooding.clone(), stop.clone());
            tokio::spawn(async move {
                while seen.load(Ordering::SeqCst) < HELD {
                    tokio::task::yield_now().await;
                }
                let mut batch = BytesMut::new();
                for _ in 0..256 {
                    MsgCodec::default()
                        .encode(Msg::new("tick").kind(Kind::Push), &mut batch)
                        .unwrap();
                }
                flooding.store(true, Ordering::SeqCst);
                let end = tokio::time::Instant::now() + Duration::from_secs(5);
                while !stop.load(Ordering::SeqCst) && tokio::time::Instant::now() < end {
                    if let Ok(id) = pong_rx.try_recv() {
                        let mut pong = BytesMut::new();
                        MsgCodec::default()
                            .encode(Msg::with_id(id, "pong"), &mut pong)
                            .unwrap();
                        wr.write_all(&pong).await.unwrap();
                    }
                    // No yield: the pipe stays full, so every read pass of the
                    // client's finds more frames ready than it routes.
                    if wr.write_all(&batch).await.is_err() {
                        break;
                    }
                }
            })
        };
        let held: Vec<_> = (0..HELD)
            .map(|i| {
                let channel = channel.clone();
                tokio::spawn(async move { channel.request(Msg::new(format!("hold {i}"))).await })
            })
            .collect();
        while !flooding.load(Ordering::SeqCst)
            || channel.counters().pushes + channel.counters().push_overflow < 10_000
        {
            tokio::task::yield_now().await;
        }
        let pong = timeout(Duration::from_secs(2), channel.request(Msg::new("ping")))
            .await
            .unwrap();
        assert_eq!(pong.text(), "pong");
        assert!(
            !writer.is_finished(),
            "the flood went on while the call was answered"
        );
        stop.store(true, Ordering::SeqCst);
        writer.await.unwrap();
        drop(held);
        drop(channel);
        reader.abort();
    })
    .await;
}
