//! The skeptical review's reproductions (issue 15), each a regression test: an exempt
//! orphan at the head of a quiet order-mode connection (r1), a fixed-transport shutdown
//! held by an orphan (r2), `close()` undone by a `connect()` made during a shutdown
//! (r3), a shutdown not woken when a stream's reader leaves (r4), a host that answers
//! the handshake and then closes (r5), the orphan count retiring a slow order-mode
//! server (r6), a stream that goes on after its error (r7), heartbeats keeping a
//! silent server from stalling (r8), `change_host` while backing off (r9).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use socketchannel::{Backoff, Call, Channel, Config, Endpoint, Handshake, Order, Replies};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};

use crate::support::channel::{Mode, msg, spawn_request};
use crate::support::codec::{Msg, MsgCodec, TestProto};
use crate::support::memory::{Io, Net};
use crate::{connects_in_two_seconds, ms, serve};

#[tokio::test(start_paused = true)]
async fn r1_exempt_orphan_never_retires() {
    let (net, log) = serve();
    let ch = net.channel(
        Mode::Order,
        Channel::builder()
            .host("a:1")
            .config(Config::default().orphan_age(Some(Duration::from_secs(8)))),
    );
    let blocking = spawn_request(&ch, Call::new(msg("slow 1000000 blpop")).no_stall_timeout());
    tokio::time::sleep(ms(100)).await;
    blocking.abort(); // the caller gives up: an orphan
    tokio::time::sleep(ms(100)).await;
    let get = spawn_request(&ch, "get");
    tokio::time::sleep(Duration::from_secs(120)).await;
    let c = ch.counters();
    eprintln!(
        "R1 after 120 s (orphan_age 8 s): retired={} in_flight={} get finished={} connections={}",
        c.retired,
        c.in_flight,
        get.is_finished(),
        log.connections().len()
    );
    let late = tokio::time::timeout(Duration::from_secs(5), ch.request(msg("later"))).await;
    eprintln!("R1 a new call 120 s later: {late:?}");
    assert!(c.retired >= 1, "orphan 120 s old never retired");
    let later = late.expect("a new call is answered on the fresh connection");
    assert_eq!(later.expect("answered").text(), "later");
}

/// R2: a fixed-transport shutdown is held by an orphan (caller gone, server ignores it).
#[tokio::test(start_paused = true)]
async fn r2_fixed_shutdown_held_by_orphan() {
    for stall in [Some(Duration::from_secs(30)), None] {
        let (client, server) = tokio::io::duplex(1024);
        tokio::spawn(async move {
            let mut server = tokio_util::codec::Framed::new(server, MsgCodec::default());
            while let Some(Ok(req)) = server.next().await {
                if req.text() != "mute" {
                    let _ = server.send(req).await;
                }
            }
        });
        let transport = tokio_util::codec::Framed::new(client, MsgCodec::default());
        let ch = Channel::with_config(
            transport,
            Order::new(TestProto),
            Config::default().stall_timeout(stall),
        );
        let call = spawn_request(&ch, "mute");
        tokio::time::sleep(ms(10)).await;
        call.abort();
        tokio::time::sleep(ms(10)).await;
        let started = Instant::now();
        ch.shutdown(Duration::from_secs(3600)).await;
        eprintln!(
            "R2 fixed transport, stall {stall:?}: shutdown took {:?}",
            started.elapsed()
        );
        assert!(
            started.elapsed() < ms(100),
            "an orphan held a fixed-transport shutdown"
        );
    }
    // The same on a reconnecting channel.
    let (net, _log) = serve();
    let ch = net.channel(Mode::Order, Channel::builder().host("a:1"));
    let call = spawn_request(&ch, "mute");
    tokio::time::sleep(ms(10)).await;
    call.abort();
    tokio::time::sleep(ms(10)).await;
    let started = Instant::now();
    ch.shutdown(Duration::from_secs(3600)).await;
    eprintln!("R2 reconnecting: shutdown took {:?}", started.elapsed());
    assert!(started.elapsed() < ms(100), "an orphan held a shutdown");
}

/// R3: close() after a connect() that came during a shutdown: the channel reopens.
#[tokio::test(start_paused = true)]
async fn r3_close_after_connect_during_shutdown_reopens() {
    let (net, _log) = serve();
    let ch = net.channel(Mode::Order, Channel::builder().host("a:1"));
    let _call = spawn_request(&ch, "slow 500 last");
    tokio::time::sleep(ms(10)).await;
    let closing = tokio::spawn({
        let ch = ch.clone();
        async move { ch.shutdown(Duration::from_secs(3600)).await }
    });
    tokio::time::sleep(ms(10)).await;
    let connecting = tokio::spawn({
        let ch = ch.clone();
        async move { ch.connect().await }
    });
    tokio::time::sleep(ms(10)).await;
    ch.close();
    tokio::time::sleep(ms(100)).await;
    let _ = closing.await;
    eprintln!(
        "R3 after close(): is_closed={} state={:?} connect={:?}",
        ch.is_closed(),
        *ch.state().borrow(),
        connecting.await
    );
    let after = ch.request(msg("after close")).await;
    eprintln!("R3 a call after close(): {after:?}");
    assert!(after.is_err(), "close() was undone");
}

/// R4: a shutdown waiting on a stream whose reader leaves after it started is not woken.
#[tokio::test(start_paused = true)]
async fn r4_stream_reader_leaving_does_not_end_shutdown() {
    let (net, _log) = serve();
    let ch = net.channel(
        Mode::Order,
        Channel::builder()
            .host("a:1")
            .config(Config::default().stall_timeout(None)),
    );
    let stream = ch.stream(msg("parts 2 100000"), Replies::UntilFinal).await;
    tokio::time::sleep(ms(10)).await;
    let started = Instant::now();
    let closing = tokio::spawn({
        let ch = ch.clone();
        async move { ch.shutdown(Duration::from_secs(3600)).await }
    });
    tokio::time::sleep(ms(10)).await;
    drop(stream);
    let _ = closing.await;
    eprintln!(
        "R4 shutdown took {:?} (reader left at 10 ms)",
        started.elapsed()
    );
    assert!(
        started.elapsed() < ms(100),
        "a stream reader leaving did not end the shutdown"
    );
    // compare: a request whose caller leaves
    let (net, _log) = serve();
    let ch = net.channel(
        Mode::Order,
        Channel::builder()
            .host("a:1")
            .config(Config::default().stall_timeout(None)),
    );
    let call = spawn_request(&ch, "slow 100000 x");
    tokio::time::sleep(ms(10)).await;
    let started = Instant::now();
    let closing = tokio::spawn({
        let ch = ch.clone();
        async move { ch.shutdown(Duration::from_secs(3600)).await }
    });
    tokio::time::sleep(ms(10)).await;
    call.abort();
    let _ = closing.await;
    eprintln!("R4 (request instead) shutdown took {:?}", started.elapsed());
    assert!(started.elapsed() < ms(100));
}

/// R5: handshake answered, then the host closes: Persistent reconnects with no backoff.
#[tokio::test(start_paused = true)]
async fn r5_handshake_answered_then_close_hot_loop() {
    let (net, _log) = serve();
    let builder =
        Channel::builder().handshake(|conn: Channel<Msg, Msg>, _ep: Endpoint| async move {
            conn.request(msg("bye")).await?;
            Ok(Handshake::Ready)
        });
    let n = connects_in_two_seconds(&net, builder).await;
    eprintln!("R5 {n} connects in 2 s");
    assert!(n <= 12, "{n} connects in 2 s");
}

/// R6: order mode, a slow but answering server, callers with a timeout: retire storm.
async fn r6_run(rules: bool) -> (u64, usize, usize, Duration) {
    let (net, log) = serve();
    let mut config = Config::default().max_in_flight(8);
    if !rules {
        config = config.max_orphans(None).orphan_age(None);
    }
    let ch = net.channel(Mode::Order, Channel::builder().host("a:1").config(config));
    let svc = ServiceBuilder::new().timeout(ms(300)).service(ch.clone());
    let ok = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = vec![];
    for i in 0..4 {
        let mut svc = svc.clone();
        let ok = ok.clone();
        tasks.push(tokio::spawn(async move {
            for j in 0..40 {
                if let Ok(s) = svc.ready().await
                    && s.call(msg(format!("slow 100 {i}-{j}"))).await.is_ok()
                {
                    ok.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    (
        ch.counters().retired,
        log.connections().len(),
        ok.load(Ordering::SeqCst),
        started.elapsed(),
    )
}

#[tokio::test(start_paused = true)]
async fn r6_slow_server_retire_storm() {
    let on = r6_run(true).await;
    let off = r6_run(false).await;
    eprintln!(
        "R6 rules on : retired={} connections={} ok={} of 160 in {:?}",
        on.0, on.1, on.2, on.3
    );
    eprintln!(
        "R6 rules off: retired={} connections={} ok={} of 160 in {:?}",
        off.0, off.1, off.2, off.3
    );
    assert_eq!(on.0, 0, "a server that answers every call was retired");
}

/// R5b: a host that answers the handshake, then closes 10 ms later: no backoff.
#[tokio::test(start_paused = true)]
async fn r5b_handshake_answered_then_close_later() {
    let net = Net::new(|_: Endpoint, mut io: Io| async move {
        if let Some(Ok(req)) = io.next().await {
            let _ = io.send(req).await;
        }
        tokio::time::sleep(ms(10)).await;
    });
    let builder =
        Channel::builder().handshake(|conn: Channel<Msg, Msg>, _ep: Endpoint| async move {
            conn.request(msg("auth")).await?;
            Ok(Handshake::Ready)
        });
    let n = connects_in_two_seconds(&net, builder).await;
    eprintln!("R5b {n} connects in 2 s (backoff 100 ms..1 s)");
    assert!(n <= 12, "{n} connects in 2 s");
}

/// R7: "an error ends it too": after a Limit error the stream does not end until the
/// rest of the reply has been read by the connection.
#[tokio::test(start_paused = true)]
async fn r7_stream_does_not_end_after_its_limit_error() {
    let (net, _log) = serve();
    let ch = net.channel(
        Mode::Order,
        Channel::builder()
            .host("a:1")
            .config(Config::default().max_reply_frames(3)),
    );
    let mut stream = ch.stream(msg("parts 10 1000"), Replies::UntilFinal).await;
    let started = Instant::now();
    let mut errored_at = None;
    while let Some(item) = stream.next().await {
        eprintln!(
            "R7 {:?}: {:?}",
            started.elapsed(),
            item.as_ref()
                .map(|m| m.text().to_string())
                .map_err(|e| e.to_string())
        );
        if item.is_err() {
            errored_at = Some(started.elapsed());
        }
    }
    eprintln!(
        "R7 error at {errored_at:?}, end (None) at {:?}",
        started.elapsed()
    );
    let e = errored_at.expect("an error");
    assert!(
        started.elapsed() - e < ms(100),
        "the stream went on {:?} after its error",
        started.elapsed() - e
    );
}

/// R8: Contract 6 says silence = no byte *arrived*; writes restart the clock here, so a
/// fire-and-forget heartbeat keeps a call to a server that reads but never answers alive.
#[tokio::test(start_paused = true)]
async fn r8_writes_keep_a_silent_server_from_stalling() {
    let (net, _log) = serve();
    let ch = net.channel(
        Mode::Order,
        Channel::builder()
            .host("a:1")
            .config(Config::default().stall_timeout(Some(Duration::from_secs(30)))),
    );
    let call = spawn_request(&ch, "mute never answered");
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let _ = ch.send(msg("mute heartbeat")).await;
    }
    eprintln!(
        "R8 after 120 s of server silence (stall 30 s): call finished={}",
        call.is_finished()
    );
    assert!(call.is_finished(), "never stalled");
}

/// R9: change_host while backing off: new calls keep failing fast until the old
/// backoff ends, instead of going to the new host.
#[tokio::test(start_paused = true)]
async fn r9_change_host_while_backing_off() {
    let (net, _log) = serve();
    net.down("a:1", true);
    let ch = net.channel(
        Mode::Order,
        Channel::builder().host("a:1").backoff(
            Backoff::exponential(Duration::from_secs(10), Duration::from_secs(30)).jitter_seed(1),
        ),
    );
    let first = ch.request(msg("one")).await;
    eprintln!(
        "R9 first (a down): {:?}",
        first
            .as_ref()
            .map(|m| m.text().to_string())
            .map_err(|e| e.kind())
    );
    ch.change_host("b:1").expect("parses");
    tokio::time::sleep(ms(10)).await;
    let second = ch.request(msg("two")).await;
    eprintln!(
        "R9 after change_host(b:1): {:?}",
        second
            .as_ref()
            .map(|m| m.text().to_string())
            .map_err(|e| e.to_string())
    );
    assert!(second.is_ok(), "the new host was not tried");
}
