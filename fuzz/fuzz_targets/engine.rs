//! The engine fed arbitrary server bytes: the shared body of `engine_order` and
//! `engine_session`.
//!
//! The first input byte chooses the setting (in-flight limit, how long the calls get to
//! be written before the server speaks, whether a caller gives up half-way); the rest
//! is what the server writes before it closes the connection. A few calls of every
//! shape are made on a channel over an in-memory pipe (`tokio::io::duplex`), framed by
//! the test protocol's codec; then the server's bytes arrive and the pipe closes.
//!
//! Asserted, for every input:
//! * nothing panics, neither here nor in the connection task (a panic there is caught
//!   by tokio; it is re-raised here);
//! * every call resolves within a bounded number of scheduler steps, and the connection
//!   task ends within a bounded number more once the handles are dropped;
//! * what a call gets is consistent with what it asked: never a push frame, never an
//!   error frame as a success, a collected reply ends with its final part, a
//!   caller-supplied session id gets a reply with that id, a read in session mode gets
//!   a frame without an id; `in_flight` is back to 0.

use std::future::Future;
use std::pin::pin;
use std::task::Poll;

use futures::FutureExt;
use socketchannel::{Call, Channel, Config, Kind, Order, Replies, Session};
use tokio::io::AsyncWriteExt;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;

use crate::codec::{Kind as MsgKind, Msg, MsgCodec, TestProto};

/// Scheduler steps (yields of the driving future) a call may take to resolve after the
/// server closed. Generous: one connection-task poll handles thousands of frames.
const STEPS: usize = 10_000;

/// Frames longer than this are a decode error (keeps each run's allocations small).
const MAX_FRAME: usize = 1 << 16;

#[allow(dead_code)] // each target uses one of them
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Order,
    Session,
}

thread_local! {
    static RT: Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
}

pub fn run(data: &[u8], mode: Mode) {
    let Some((&setting, server_bytes)) = data.split_first() else {
        return;
    };
    RT.with(|rt| rt.block_on(drive(setting, server_bytes, mode)));
}

type Chan = Channel<Msg, Msg>;

/// What a call got, checked against what it asked for.
fn check_one(mode: Mode, what: &str, got: &Result<Msg, socketchannel::Error>) {
    if let Ok(m) = got {
        assert_ne!(m.kind, MsgKind::Push, "{what}: a push frame as a reply");
        assert_ne!(
            m.kind,
            MsgKind::Error,
            "{what}: an error frame as a success"
        );
        if mode == Mode::Session {
            assert_ne!(
                m.id, 0,
                "{what}: an id-less frame went to a call with an id"
            );
        }
    }
}

fn check_collected(mode: Mode, what: &str, got: &Result<Vec<Msg>, socketchannel::Error>) {
    if let Ok(parts) = got {
        for m in parts {
            assert_ne!(m.kind, MsgKind::Push, "{what}: a push frame in a reply");
            assert_ne!(
                m.kind,
                MsgKind::Error,
                "{what}: an error frame in a success"
            );
        }
        if mode == Mode::Session
            && let Some(first) = parts.first()
        {
            assert!(
                parts.iter().all(|m| m.id == first.id && m.id != 0),
                "{what}: parts of one reply carry different ids: {parts:?}"
            );
        }
    }
}

fn spawn<F>(f: F) -> JoinHandle<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(f)
}

async fn drive(setting: u8, server_bytes: &[u8], mode: Mode) {
    let max_in_flight = [1, 2, 3, 1024][usize::from(setting & 3)];
    let yields_before = usize::from((setting >> 2) & 3);
    let cancel_at = usize::from((setting >> 4) & 3);
    let stall = setting & 0x40 != 0;
    let config = Config::default()
        .max_in_flight(max_in_flight)
        .queue(16)
        .stall_timeout(stall.then(|| std::time::Duration::from_secs(3600)));

    let (client, mut server) = tokio::io::duplex(1 << 20);
    let codec = MsgCodec { max_len: MAX_FRAME };
    let transport = Framed::new(client, codec);
    let (ch, connection): (Chan, _) = match mode {
        Mode::Order => Channel::pair(transport, Order::new(TestProto), config),
        Mode::Session => Channel::pair(transport, Session::new(TestProto), config),
    };
    let connection = tokio::spawn(connection);
    let pushes = ch.pushes();

    let mut calls: Vec<JoinHandle<()>> = Vec::new();
    {
        let ch = ch.clone();
        calls.push(spawn(async move {
            let got = ch.request(Msg::new("one")).await;
            check_one(mode, "request", &got);
        }));
    }
    {
        let ch = ch.clone();
        calls.push(spawn(async move {
            let got = ch.request_n(Msg::new("two"), 2).await;
            if let Ok(parts) = &got {
                assert_eq!(parts.len(), 2, "request_n(2) got {parts:?}");
            }
            check_collected(mode, "request_n", &got);
        }));
    }
    {
        let ch = ch.clone();
        calls.push(spawn(async move {
            let got = ch.request_until_final(Msg::new("parts")).await;
            if let Ok(parts) = &got {
                let (last, rest) = parts.split_last().expect("at least one part");
                assert_ne!(last.kind, MsgKind::More, "collected past the final part");
                assert!(rest.iter().all(|m| m.kind == MsgKind::More), "{parts:?}");
            }
            check_collected(mode, "request_until_final", &got);
        }));
    }
    {
        let ch = ch.clone();
        calls.push(spawn(async move {
            let _ = ch.send(Msg::new("noreply")).await;
        }));
    }
    {
        let ch = ch.clone();
        calls.push(spawn(async move {
            let got = ch.read().await;
            if let Ok(m) = &got {
                assert_ne!(m.kind, MsgKind::Push, "read: a push frame");
                if mode == Mode::Session {
                    assert_eq!(m.id, 0, "read: a frame with an id went to a read");
                }
            }
        }));
    }
    {
        let ch = ch.clone();
        calls.push(spawn(async move {
            let mut stream = ch.stream(Msg::new("stream"), Replies::UntilFinal).await;
            let mut n = 0usize;
            while let Some(item) = stream.next().await {
                n += 1;
                assert!(n <= MAX_FRAME, "a stream that does not end");
                match item {
                    Ok(m) => assert_ne!(m.kind, MsgKind::Push, "stream: a push frame"),
                    Err(e) if e.is_server() => {}
                    Err(_) => break,
                }
            }
        }));
    }
    {
        let ch = ch.clone();
        calls.push(spawn(async move {
            let got = ch
                .request(Call::parts(vec![Msg::new("p1"), Msg::new("p2")]))
                .await;
            check_one(mode, "multi-part request", &got);
        }));
    }
    if mode == Mode::Session {
        for dup in 0..2 {
            let ch = ch.clone();
            calls.push(spawn(async move {
                let got = ch.request(Call::new(Msg::new("mine")).id(7u64)).await;
                match &got {
                    Ok(m) => assert_eq!(m.id, 7, "caller id 7 got a reply for id {}", m.id),
                    Err(e) if e.kind() == Kind::IdInUse => {
                        assert_eq!(dup, 1, "the first call with id 7 found it in use");
                    }
                    Err(_) => {}
                }
            }));
        }
    }
    // A caller that gives up after `cancel_at` polls (0: never).
    let mut abandoned = None;
    if cancel_at > 0 {
        let ch = ch.clone();
        abandoned = Some(tokio::spawn(async move {
            let _ = ch.request(Msg::new("abandoned")).await;
        }));
    }

    for i in 0..yields_before.max(cancel_at) {
        if i + 1 == cancel_at
            && let Some(h) = &abandoned
        {
            h.abort();
        }
        tokio::task::yield_now().await;
    }

    // The server speaks, then hangs up.
    if !server_bytes.is_empty() {
        server
            .write_all(server_bytes)
            .await
            .expect("the pipe holds the whole input");
    }
    drop(server);

    calls.extend(abandoned);
    let mut steps = 0;
    while !calls.iter().all(JoinHandle::is_finished) {
        steps += 1;
        assert!(
            steps <= STEPS,
            "calls unresolved after {STEPS} steps past the server's close"
        );
        tokio::task::yield_now().await;
    }
    for call in calls {
        reraise(call);
    }
    assert_eq!(ch.counters().in_flight, 0, "in_flight after the end");

    drop(pushes);
    drop(ch);
    let mut connection = pin!(connection);
    let mut steps = 0;
    loop {
        if let Poll::Ready(res) = futures::poll!(connection.as_mut()) {
            if let Err(e) = res
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
            }
            break;
        }
        steps += 1;
        assert!(
            steps <= STEPS,
            "connection task still running {STEPS} steps after the last handle"
        );
        tokio::task::yield_now().await;
    }
}

/// A finished task's panic, raised here; an abort is fine.
fn reraise(handle: JoinHandle<()>) {
    match handle.now_or_never() {
        Some(Ok(())) => {}
        Some(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Some(Err(_)) => {}
        None => unreachable!("checked finished"),
    }
}
