//! Multi-frame replies and slow stream readers are bounded: going over fails only that
//! call; the rest of its reply is read and dropped, so every other caller goes on.

use socketchannel::{Channel, Config, Kind, LimitError, Replies};

use crate::serve;
use crate::support::channel::{Mode, joined, msg, spawn_request};
use crate::support::codec::Msg;

fn limit_of(err: &socketchannel::Error) -> Option<LimitError> {
    std::error::Error::source(err)?
        .downcast_ref::<LimitError>()
        .copied()
}

/// Defect 13: an until-final (or N-frame) reply with more frames than
/// `max_reply_frames` fails its call, *may have executed*; the calls behind it get
/// their own replies on the same connection.
#[tokio::test(start_paused = true)]
async fn d13_a_reply_over_the_frame_limit_fails_only_its_call() {
    for mode in [Mode::Order, Mode::Session] {
        let (net, _log) = serve();
        let config = Config::default().max_reply_frames(10);
        let ch = net.channel(mode, Channel::builder().host("a:1").config(config));
        let err = ch
            .request_until_final(msg("parts 50 1"))
            .await
            .expect_err("over the limit");
        assert_eq!(err.kind(), Kind::Limit);
        assert!(err.may_have_executed());
        assert_eq!(limit_of(&err), Some(LimitError::Frames(10)));
        let err = ch.request_n(msg("parts 50 1"), 50).await.expect_err("over");
        assert_eq!(err.kind(), Kind::Limit);
        assert_eq!(
            ch.request(msg("after")).await.expect("in step").text(),
            "after"
        );
        assert_eq!(ch.counters().reconnects, 0, "{mode:?}");
    }
}

/// Defect 13: bytes too, by the user's weigher.
#[tokio::test(start_paused = true)]
async fn d13_a_reply_over_the_byte_limit_fails_only_its_call() {
    let (net, _log) = serve();
    let config = Config::default().max_reply_bytes(20, |m: &Msg| m.body.len());
    let ch = net.channel(Mode::Session, Channel::builder().host("a:1").config(config));
    let err = ch
        .request_until_final(msg("parts 5 1"))
        .await
        .expect_err("5 parts of 6 bytes");
    assert_eq!(limit_of(&err), Some(LimitError::Bytes(20)));
    let fine = ch
        .request_until_final(msg("parts 3 1"))
        .await
        .expect("18 bytes");
    assert_eq!(fine.len(), 3);
}

/// Defect 13: a stream reader that falls further behind than `stream_buffer` frames
/// gets the frames buffered, then a `Kind::Limit` error; the connection reads on for
/// everyone else (it used to buffer without limit).
#[tokio::test(start_paused = true)]
async fn d13_a_slow_stream_reader_fails_only_its_stream() {
    let (net, _log) = serve();
    let config = Config::default().stream_buffer(4);
    let ch = net.channel(Mode::Session, Channel::builder().host("a:1").config(config));
    let mut stream = ch.stream(msg("parts 20 1"), Replies::UntilFinal).await;
    // Nobody reads while all 20 frames arrive, and other calls go on meanwhile.
    let other = spawn_request(&ch, "slow 100 other");
    assert_eq!(
        joined(other).await.expect("not held up").text(),
        "slow 100 other"
    );
    let mut frames = 0;
    let mut last = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(_) => frames += 1,
            Err(e) => last = Some(e),
        }
    }
    assert_eq!(frames, 4);
    let err = last.expect("the stream failed");
    assert_eq!(err.kind(), Kind::Limit);
    assert_eq!(limit_of(&err), Some(LimitError::Reader(4)));
    assert_eq!(
        ch.request(msg("after")).await.expect("in step").text(),
        "after"
    );
}
