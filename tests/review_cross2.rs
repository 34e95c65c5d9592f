//! Helper-60's hunt for failure-path defects where two features meet: a host that
//! drains every connection during the handshake (its queued calls stranded, its
//! backups never tried). Each test failed before its fix.

#![cfg(feature = "testing")]

mod support;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use socketchannel::{
    BoxError, Channel, Endpoint, Handshake, Order, Protocol, Session, Sessions, Verdict,
};

use support::channel::{msg, spawn_request};
use support::codec::{Msg, TestProto};
use support::memory::{Io, Net, Seen};

/// The test protocol, with `DRAIN` a drain notice ([`Verdict::Drain`]).
#[derive(Debug, Clone, Copy, Default)]
struct Drains;

impl Protocol<Msg, Msg> for Drains {
    fn is_push(&self, resp: &Msg) -> bool {
        TestProto.is_push(resp)
    }
    fn is_final(&self, resp: &Msg) -> bool {
        Protocol::<Msg, Msg>::is_final(&TestProto, resp)
    }
    fn check(&self, resp: Msg) -> Result<Msg, BoxError> {
        TestProto.check(resp)
    }
    fn verdict(&self, resp: &Msg) -> Verdict {
        if resp.text() == "DRAIN" {
            Verdict::Drain
        } else {
            Verdict::Reply
        }
    }
}

impl Sessions<Msg, Msg> for Drains {
    type Id = u64;
    fn stamp(&self, req: &mut Msg, id: u64) {
        TestProto.stamp(req, id);
    }
    fn session(&self, resp: &Msg) -> Option<u64> {
        TestProto.session(resp)
    }
}

/// Hosts whose name starts with `d` send a drain notice on every connection as it is
/// accepted; every host then answers each request with `body@host` and records it.
fn draining_net(seen: &Seen) -> Net {
    let seen = seen.clone();
    Net::new(move |ep: Endpoint, mut io: Io| {
        let seen = seen.clone();
        async move {
            if ep.host().starts_with('d') && io.send(Msg::new("DRAIN")).await.is_err() {
                return;
            }
            while let Some(Ok(req)) = io.next().await {
                seen.lock().unwrap().push(format!("{}@{ep}", req.text()));
                let reply = Msg::with_id(req.id, format!("{}@{ep}", req.text()));
                if io.send(reply).await.is_err() {
                    break;
                }
            }
        }
    })
}

/// A host that drains every connection at once, with a handshake that awaits a
/// request: the drain notice is read during the handshake, so the queued user call is
/// never written there, and the connection is left as a failed attempt. The next pass
/// tried the same host again and again: the call, never written and never failed,
/// waited for ever (60 s of virtual time, 20 connects). Now, with every host failed
/// so, it fails fast, *not sent*, as after a failed pass.
#[tokio::test(start_paused = true)]
async fn d1_a_host_draining_every_connection_during_the_handshake_fails_queued_calls_not_sent() {
    let seen = Seen::default();
    let net = draining_net(&seen);
    let ch: support::channel::Ch = Channel::builder()
        .host("d:1")
        .handshake(|conn: Channel<Msg, Msg>, _ep: Endpoint| async move {
            conn.request(msg("hello")).await?;
            Ok(Handshake::Ready)
        })
        .connector(net.connector(), Order::new(Drains))
        .unwrap();
    let call = spawn_request(&ch, "x");
    let out = tokio::time::timeout(Duration::from_secs(60), call).await;
    let connects = net.connects();
    let out = out.unwrap_or_else(|_| {
        panic!(
            "a queued call still unresolved after 60 s, {connects} connects, state {:?}, seen {:?}",
            *ch.state().borrow(),
            seen.lock().unwrap()
        )
    });
    let err = out.expect("joined").expect_err("no host serves");
    assert!(err.is_not_sent(), "{err:?}");
    assert!(
        !seen.lock().unwrap().iter().any(|s| s.starts_with("x@")),
        "never executed"
    );
}

/// The same with a healthy backup: a host that drains at once was not tried last (as a
/// crash-looping or wrong host is), so the backup was never tried and the call waited
/// for ever although the backup would serve it.
#[tokio::test(start_paused = true)]
async fn d2_a_host_draining_during_the_handshake_is_tried_last_and_the_backup_serves() {
    let seen = Seen::default();
    let net = draining_net(&seen);
    let ch: support::channel::Ch = Channel::builder()
        .host("d:1")
        .backup("b:2")
        .handshake(|conn: Channel<Msg, Msg>, _ep: Endpoint| async move {
            conn.request(msg("hello")).await?;
            Ok(Handshake::Ready)
        })
        .connector(net.connector(), Session::new(Drains))
        .unwrap();
    let call = spawn_request(&ch, "x");
    let out = tokio::time::timeout(Duration::from_secs(60), call).await;
    let tried = net.tried();
    assert!(
        matches!(&out, Ok(Ok(Ok(m))) if m.text() == "x@b:2"),
        "{out:?}: the backup was tried {} times in {} connects",
        tried.iter().filter(|t| *t == "b:2").count(),
        tried.len()
    );
}
