//! Cancel notices for calls the client gave up on while the server still works on them,
//! from a review of the notices: a call failed by a reply limit (`Kind::Limit`: a
//! collected reply over `max_reply_frames` or `max_reply_bytes`, a stream whose reader
//! fell behind `stream_buffer`) or a stream ended by an error frame before the reply's
//! end reads as gone, but nothing woke the connection's watcher, so its notice went out
//! only when some other caller left, or never. Each is noticed at once, as a caller
//! that drops its future is, and keeps its id until the server's last frame. Also: a
//! notice the sink refuses is not counted as written.
//!
//! Every test runs against a scripted server at the far end of an in-memory pipe, in
//! paused time: "at once" is to the tick, and no other caller leaves.

mod support;

use std::time::Duration;

use bytes::BytesMut;
use futures::StreamExt;
use socketchannel::{Call, Channel, Config, Kind as ErrKind, Replies, ReplyStream, Session};
use tokio::time::Instant;
use tokio_util::codec::{Decoder, Encoder, Framed};

use support::channel::{Ch, joined, msg, spawn_request};
use support::codec::{CANCEL, Cancelling, Kind, Msg, MsgCodec};
use support::script::{Peer, pipe, settle};

/// A channel in session mode with the one id 1 (so the id's fate is plain to see) and
/// `config`, and the scripted server at its far end.
fn one_id_channel(config: Config) -> (Ch, Peer) {
    let (transport, server) = pipe();
    let peer = Peer::spawn(server);
    let mode = Session::new(Cancelling).ids(1u64..=1);
    (Channel::with_config(transport, mode, config), peer)
}

/// The server sends `n` frames of `req`'s reply that are not its last.
fn more(peer: &Peer, req: &Msg, n: usize) {
    for i in 0..n {
        peer.reply_kind(req, &format!("part{i}"), Kind::More);
    }
}

/// The next frame the server reads must be the notice for `id`, and come without any
/// time passing (no timer, no other caller leaving, is what sends it).
async fn notice_at_once(peer: &mut Peer, id: u64, since: Instant) {
    let frame = tokio::time::timeout(Duration::from_secs(1), peer.recv())
        .await
        .unwrap_or_else(|_| {
            panic!("no cancel notice within 1 s: the call's caller is gone, and nothing said so")
        })
        .expect("the connection ended");
    assert_eq!((frame.id, frame.text()), (id, CANCEL));
    assert_eq!(
        since.elapsed(),
        Duration::ZERO,
        "the notice waited for a timer"
    );
}

/// With its call noticed and failed, id 1 is still the call's: the next call waits
/// until the server's last frame of the reply, then gets the id. Nothing is unknown.
async fn id_waits_for_the_last_frame(ch: &Ch, peer: &mut Peer, req: &Msg) {
    let next = spawn_request(ch, "next");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        peer.idle().is_none(),
        "a call was written under an id still in use"
    );
    assert_eq!(ch.counters().in_flight, 1, "the failed call holds its id");

    // The server worked on: its last frame frees the id, and reaches nobody.
    peer.reply(req, "last");
    let req = peer.next().await;
    assert_eq!((req.id, req.text()), (1, "next"));
    peer.reply(&req, "re:next");
    assert_eq!(joined(next).await.unwrap().text(), "re:next");
    let c = ch.counters();
    assert_eq!((c.cancel_notices, c.unknown, c.in_flight), (1, 0, 0));
}

/// A collected reply that goes over `max_reply_frames` fails its call `Limit`; the
/// server, still sending, is told at once.
#[tokio::test(start_paused = true)]
async fn a_collect_over_its_frame_limit_is_noticed_at_once_and_keeps_its_id() {
    let (ch, mut peer) = one_id_channel(Config::default().max_reply_frames(2));
    let big = {
        let ch = ch.clone();
        tokio::spawn(async move { ch.request_until_final(msg("big")).await })
    };
    let req = peer.next().await;
    assert_eq!((req.id, req.text()), (1, "big"));

    let over = Instant::now();
    more(&peer, &req, 3);
    notice_at_once(&mut peer, 1, over).await;
    let err = joined(big)
        .await
        .expect_err("three frames is over the limit");
    assert_eq!(err.kind(), ErrKind::Limit);
    assert!(err.may_have_executed());

    id_waits_for_the_last_frame(&ch, &mut peer, &req).await;
}

/// The same over `max_reply_bytes`, for a reply of a known count (`request_n`).
#[tokio::test(start_paused = true)]
async fn a_collect_over_its_byte_limit_is_noticed_at_once_and_keeps_its_id() {
    let config = Config::default().max_reply_bytes(8, |m: &Msg| m.body.len());
    let (ch, mut peer) = one_id_channel(config);
    let big = {
        let ch = ch.clone();
        tokio::spawn(async move { ch.request_n(msg("big"), 4).await })
    };
    let req = peer.next().await;

    let over = Instant::now();
    // "part0" and "part1" weigh 10 bytes: the second frame is over.
    more(&peer, &req, 2);
    notice_at_once(&mut peer, 1, over).await;
    let err = joined(big).await.expect_err("ten bytes is over the limit");
    assert_eq!(err.kind(), ErrKind::Limit);

    // Two frames of the four are still to come: the third, then the last.
    peer.reply_kind(&req, "part2", Kind::More);
    id_waits_for_the_last_frame(&ch, &mut peer, &req).await;
}

/// A stream whose reader fell behind `stream_buffer` fails `Limit` while the reader
/// still holds it: the server is told at once, not when the reader drops it.
#[tokio::test(start_paused = true)]
async fn a_stream_whose_reader_fell_behind_is_noticed_at_once_and_keeps_its_id() {
    let (ch, mut peer) = one_id_channel(Config::default().stream_buffer(2));
    let mut stream: ReplyStream<Msg> = ch.stream(msg("big"), Replies::UntilFinal).await;
    let req = peer.next().await;
    assert_eq!((req.id, req.text()), (1, "big"));

    let over = Instant::now();
    // Nothing read: the third frame finds two unread.
    more(&peer, &req, 3);
    notice_at_once(&mut peer, 1, over).await;

    id_waits_for_the_last_frame(&ch, &mut peer, &req).await;
    // The reader gets what it had, then the limit, then the end.
    let items: Vec<_> =
        tokio::time::timeout(Duration::from_secs(1), (&mut stream).collect::<Vec<_>>())
            .await
            .expect("the stream ends");
    assert_eq!(items.len(), 3, "{items:?}");
    assert_eq!(items[0].as_ref().unwrap().text(), "part0");
    assert_eq!(items[1].as_ref().unwrap().text(), "part1");
    assert_eq!(items[2].as_ref().unwrap_err().kind(), ErrKind::Limit);
    drop(stream);
    settle().await;
    assert!(peer.idle().is_none(), "a second notice, or a stray frame");
    assert_eq!(ch.counters().cancel_notices, 1);
}

/// A stream ended by an error frame before the reply's end (here the first of three)
/// is done for its reader, who still holds it: the server, with two frames still to
/// send, is told at once.
#[tokio::test(start_paused = true)]
async fn a_stream_ended_by_an_error_frame_mid_reply_is_noticed_at_once() {
    let (ch, mut peer) = one_id_channel(Config::default());
    let mut stream = ch.stream(msg("big"), Replies::Count(3)).await;
    let req = peer.next().await;

    peer.reply_kind(&req, "no", Kind::Error);
    let item = tokio::time::timeout(Duration::from_secs(1), stream.next())
        .await
        .expect("the error frame reaches the reader")
        .expect("an item");
    assert_eq!(item.unwrap_err().kind(), ErrKind::Server);
    let read = Instant::now();
    notice_at_once(&mut peer, 1, read).await;

    peer.reply_kind(&req, "part1", Kind::More);
    id_waits_for_the_last_frame(&ch, &mut peer, &req).await;
    assert!(
        stream.next().await.is_none(),
        "the stream ended at the error"
    );
}

/// A reply that finishes within its limits gets no notice, and a stream dropped after
/// its end none either.
#[tokio::test(start_paused = true)]
async fn a_reply_within_its_limits_gets_no_notice() {
    let (ch, mut peer) = one_id_channel(Config::default().max_reply_frames(3).stream_buffer(3));
    let stream = ch.stream(msg("s"), Replies::UntilFinal).await;
    let req = peer.next().await;
    more(&peer, &req, 2);
    peer.reply(&req, "last");
    settle().await;
    let items: Vec<_> = stream.collect().await;
    assert_eq!(items.len(), 3);
    let collect = {
        let ch = ch.clone();
        tokio::spawn(async move { ch.request_until_final(msg("c")).await })
    };
    let req = peer.next().await;
    more(&peer, &req, 2);
    peer.reply(&req, "last");
    assert_eq!(joined(collect).await.unwrap().len(), 3);
    settle().await;
    assert!(peer.idle().is_none(), "a notice for a reply that finished");
    assert_eq!(ch.counters().cancel_notices, 0);
}

/// The test codec, but one that cannot encode a cancel notice.
#[derive(Default)]
struct RefusesNotices(MsgCodec);

impl Encoder<Msg> for RefusesNotices {
    type Error = std::io::Error;
    fn encode(&mut self, msg: Msg, dst: &mut BytesMut) -> Result<(), Self::Error> {
        if msg.text() == CANCEL {
            return Err(std::io::Error::other("no notices here"));
        }
        self.0.encode(msg, dst)
    }
}

impl Decoder for RefusesNotices {
    type Item = Msg;
    type Error = std::io::Error;
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Msg>, Self::Error> {
        self.0.decode(src)
    }
}

/// `Counters::cancel_notices` counts the notices the sink took: one it refused (its
/// `start_send` failed, which ends the connection) was never written.
#[tokio::test(start_paused = true)]
async fn a_notice_the_sink_refuses_is_not_counted() {
    let (client, server) = tokio::io::duplex(1 << 16);
    let ch: Ch = Channel::new(
        Framed::new(client, RefusesNotices::default()),
        Session::new(Cancelling),
    );
    let mut peer = Peer::spawn(server);
    let slow = spawn_request(&ch, Call::new(msg("slow")));
    let req = peer.next().await;
    assert_eq!(req.text(), "slow");
    slow.abort();
    // The connection fails on the notice: the server sees its end, and no notice.
    let end = tokio::time::timeout(Duration::from_secs(5), peer.recv())
        .await
        .expect("the connection ends");
    assert!(end.is_none(), "the server read {end:?}");
    let c = ch.counters();
    assert_eq!(c.cancel_notices, 0, "a notice the sink refused was counted");
    assert_eq!(c.in_flight, 0);
}
