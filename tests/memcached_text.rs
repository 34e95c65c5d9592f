//! memcached's text protocol, in order mode, against a real `memcached` process.
//!
//! Each server test starts its own `memcached` on a free 127.0.0.1 port (items of at
//! most [`MAX_ITEM`] bytes) and kills it by its pid when done. The codec is in
//! `examples/common/memcached_text.rs`: one frame per reply, each data block read by its
//! byte count. The last tests feed the decoder bytes directly: replies split anywhere,
//! and malformed ones. `memcached` must be on `PATH` (CI's `.ci/run` installs it).

#![cfg(feature = "tcp")]

#[path = "../examples/common/mod.rs"]
mod common;
mod support;

use std::error::Error as _;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::memcached_text::{
    Key, MAX_LINE, Reply, Request, Text, TextCodec, TextError, Value, start_server,
};
use common::process::{Server, within};
use socketchannel::{Call, Channel, ConnectionErrorKind, Error, Kind, Reply as CallReply};
use tokio::task::JoinSet;
use tokio_util::codec::Decoder;
use tower::ServiceExt;

use support::peak::PeakInFlight;

/// The bound on a whole test.
const TEST: Duration = Duration::from_secs(40);
/// The bound on one call to a live server.
const CALL: Duration = Duration::from_secs(5);
/// The server's item size limit (`-I`).
const MAX_ITEM: usize = 64 << 10;

type Ch = Channel<Request, Reply>;

async fn memcached() -> Server {
    start_server(MAX_ITEM)
        .await
        .unwrap_or_else(|e| panic!("could not start memcached: {e}"))
}

fn channel(addr: &str, codec: TextCodec) -> Ch {
    Channel::builder()
        .host(addr)
        .order(codec, Text)
        .expect("valid host")
}

async fn call(channel: &Ch, req: Request) -> Result<Reply, Error> {
    let what = format!("{req:?}");
    within(CALL, &what, channel.request(req)).await
}

async fn ok(channel: &Ch, req: Request) -> Reply {
    let what = format!("{req:?}");
    call(channel, req)
        .await
        .unwrap_or_else(|e| panic!("{what} failed: {e}"))
}

fn get<K: AsRef<[u8]>>(keys: &[K]) -> Request {
    Request::get(keys).expect("valid keys")
}

fn set(key: &[u8], flags: u32, data: impl Into<Bytes>) -> Request {
    Request::set(key, flags, data).expect("valid key")
}

fn value(key: &[u8], flags: u32, data: &[u8]) -> Value {
    Value {
        key: Bytes::copy_from_slice(key),
        flags,
        data: Bytes::copy_from_slice(data),
    }
}

/// The error line a call failed with, after checking it failed as `Kind::Server`.
fn text_error(err: &Error) -> TextError {
    assert_eq!(err.kind(), Kind::Server, "{err}");
    err.source()
        .and_then(|s| s.downcast_ref::<TextError>())
        .unwrap_or_else(|| panic!("not an error line: {err}"))
        .clone()
}

#[tokio::test]
async fn set_get_add_delete_roundtrip() {
    within(TEST, "test", async {
        let server = memcached().await;
        let ch = channel(&server.addr(), TextCodec::default());
        assert!(matches!(ok(&ch, Request::Version).await, Reply::Version(v) if !v.is_empty()));
        assert_eq!(ok(&ch, set(b"k", 42, "hello")).await, Reply::Stored);
        let got = ok(&ch, get(&[b"k"])).await;
        assert_eq!(got, Reply::Values(vec![value(b"k", 42, b"hello")]));
        let add = Request::add("k", 0, "other").unwrap();
        assert_eq!(ok(&ch, add).await, Reply::NotStored);
        assert_eq!(ok(&ch, Request::delete("k").unwrap()).await, Reply::Deleted);
        assert_eq!(
            ok(&ch, Request::delete("k").unwrap()).await,
            Reply::NotFound
        );
        assert_eq!(ok(&ch, get(&[b"k"])).await, Reply::Values(vec![]));
        assert_eq!(ok(&ch, set(b"n", 0, "41")).await, Reply::Stored);
        assert_eq!(
            ok(&ch, Request::incr("n", 1).unwrap()).await,
            Reply::Number(42)
        );
        assert_eq!(ch.counters().reconnects, 0);
    })
    .await;
}

#[tokio::test]
async fn a_multi_key_get_leaves_out_the_missing_keys() {
    within(TEST, "test", async {
        let server = memcached().await;
        let ch = channel(&server.addr(), TextCodec::default());
        for (key, flags) in [(b"a", 1), (b"c", 3), (b"e", 5)] {
            assert_eq!(ok(&ch, set(key, flags, key.repeat(3))).await, Reply::Stored);
        }
        let (some, none) = tokio::join!(
            call(&ch, get(&[b"a", b"b", b"c", b"d", b"e"])),
            call(&ch, get(&[b"x", b"y", b"z"])),
        );
        let want = [(b"a", 1), (b"c", 3), (b"e", 5)].map(|(k, f)| value(k, f, &k.repeat(3)));
        assert_eq!(some.unwrap(), Reply::Values(want.to_vec()));
        assert_eq!(none.unwrap(), Reply::Values(vec![]));
    })
    .await;
}

/// Data that looks like the protocol: a decoder that looked for `END` (or framed lines)
/// would end these replies early and hand the rest to the calls behind them.
#[tokio::test]
async fn data_is_read_by_its_byte_count() {
    within(TEST, "test", async {
        let server = memcached().await;
        let ch = channel(&server.addr(), TextCodec::default());
        let all_bytes: Vec<u8> = (0..=255u8).collect();
        let tricky: Vec<(&[u8], Vec<u8>)> = vec![
            (&b"end"[..], b"\r\nEND\r\n".to_vec()),
            (
                b"end2",
                b"x\r\nEND\r\nVALUE end 0 3\r\nabc\r\nEND\r\n".to_vec(),
            ),
            (b"crlf", b"\r\n".to_vec()),
            (b"word", b"END".to_vec()),
            (b"empty", Vec::new()),
            (b"bytes", all_bytes.repeat(4)),
            (b"error", b"SERVER_ERROR not really\r\n".to_vec()),
        ];
        for (key, data) in &tricky {
            assert_eq!(ok(&ch, set(key, 7, data.clone())).await, Reply::Stored);
        }
        // Each alone, all pipelined together, so the replies follow each other closely.
        let singles = futures::future::join_all(tricky.iter().map(|(k, _)| call(&ch, get(&[k]))));
        let keys: Vec<&[u8]> = tricky.iter().map(|(k, _)| *k).collect();
        let (singles, all) = tokio::join!(singles, call(&ch, get(&keys)));
        for ((key, data), got) in tricky.iter().zip(singles) {
            assert_eq!(got.unwrap(), Reply::Values(vec![value(key, 7, data)]));
        }
        let want = tricky.iter().map(|(k, d)| value(k, 7, d)).collect();
        assert_eq!(all.unwrap(), Reply::Values(want));
        assert_eq!(ch.counters().reconnects, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_each_get_their_own_values() {
    within(TEST, "test", async {
        const TASKS: usize = 64;
        const OPS: usize = 50;
        let server = memcached().await;
        let ch = channel(&server.addr(), TextCodec::default());
        let sampler = PeakInFlight::start(&ch);
        let mut tasks = JoinSet::new();
        for t in 0..TASKS {
            let ch = ch.clone();
            tasks.spawn(async move {
                for i in 0..OPS {
                    let key = format!("t{t}:{i}");
                    let data = format!("{key}\r\nEND\r\n{}", "v".repeat((t * i) % 200));
                    let flags = (t * OPS + i) as u32;
                    assert_eq!(
                        ch.request(set(key.as_bytes(), flags, data.clone())).await?,
                        Reply::Stored
                    );
                    // Its own key, and one that no one sets.
                    let missing = format!("none:{t}:{i}");
                    let got = ch
                        .request(get(&[key.as_bytes(), missing.as_bytes()]))
                        .await?;
                    assert_eq!(
                        got,
                        Reply::Values(vec![value(key.as_bytes(), flags, data.as_bytes())])
                    );
                }
                Ok::<_, Error>(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("caller panicked").expect("call failed");
        }
        sampler.stop();
        assert!(
            sampler.peak() >= 16,
            "only {} calls in flight at once",
            sampler.peak()
        );
        let counters = ch.counters();
        assert_eq!((counters.reconnects, counters.unknown), (0, 0));
        assert_eq!(counters.received, (2 * TASKS * OPS) as u64);
    })
    .await;
}

#[tokio::test]
async fn noreply_commands_are_sent_and_answer_nothing() {
    within(TEST, "test", async {
        let server = memcached().await;
        let ch = channel(&server.addr(), TextCodec::default());
        for i in 0..100u32 {
            let req = set(format!("q{i}").as_bytes(), i, format!("quiet {i}")).noreply();
            within(CALL, "send", ch.send(req)).await.expect("send");
        }
        let counter = set(b"counter", 0, "10").noreply();
        ch.send(counter).await.unwrap();
        ch.send(Request::incr("counter", 5).unwrap().noreply())
            .await
            .unwrap();
        ch.send(Request::delete("q0").unwrap().noreply())
            .await
            .unwrap();
        // The same through the tower service of calls.
        let call = Call::new(set(b"q100", 100, "quiet 100").noreply()).no_reply();
        let sent = within(CALL, "no_reply", ch.calls().oneshot(call))
            .await
            .unwrap();
        assert!(matches!(sent, CallReply::Sent));

        // A get written after them sees every one: memcached answers in order.
        let keys: Vec<String> = (0..=100).map(|i| format!("q{i}")).collect();
        let Reply::Values(values) = ok(&ch, Request::get(&keys).unwrap()).await else {
            panic!("not values");
        };
        let want: Vec<Value> = (1..=100u32)
            .map(|i| {
                value(
                    format!("q{i}").as_bytes(),
                    i,
                    format!("quiet {i}").as_bytes(),
                )
            })
            .collect();
        assert_eq!(values, want);
        assert_eq!(
            ok(&ch, get(&[b"counter"])).await,
            Reply::Values(vec![value(b"counter", 0, b"15")])
        );
        // No reply came for any of them: one per request, none left over.
        let counters = ch.counters();
        assert_eq!(
            (counters.received, counters.unknown, counters.in_flight),
            (2, 0, 0)
        );
    })
    .await;
}

#[tokio::test]
async fn error_lines_fail_only_their_own_call() {
    within(TEST, "test", async {
        let server = memcached().await;
        let ch = channel(&server.addr(), TextCodec::default());
        assert_eq!(
            ok(&ch, set(b"text", 0, "not a number")).await,
            Reply::Stored
        );

        let too_big = vec![b'x'; 2 * MAX_ITEM];
        let (big, before, incr, after) = tokio::join!(
            call(&ch, set(b"big", 0, too_big)),
            call(&ch, get(&[b"text"])),
            call(&ch, Request::incr("text", 1).unwrap()),
            call(&ch, get(&[b"text"])),
        );
        let big = big.expect_err("a value over -I");
        assert!(big.may_have_executed());
        assert!(
            matches!(text_error(&big), TextError::Server(why) if why.contains("too large")),
            "{big}"
        );
        let incr = incr.expect_err("incr of text");
        assert!(
            matches!(text_error(&incr), TextError::Client(why) if why.contains("non-numeric")),
            "{incr}"
        );
        let text = Reply::Values(vec![value(b"text", 0, b"not a number")]);
        assert_eq!(before.unwrap(), text);
        assert_eq!(after.unwrap(), text);
        // The connection is still the same, and in step.
        assert_eq!(ok(&ch, set(b"next", 1, "fine")).await, Reply::Stored);
        assert_eq!(
            ok(&ch, get(&[b"next"])).await,
            Reply::Values(vec![value(b"next", 1, b"fine")])
        );
        assert_eq!(ch.counters().reconnects, 0);
    })
    .await;
}

/// A value over the codec's bound is a decode error: the codec buffers no more than it
/// allows, and the connection ends (as the codec guide says a decode error costs).
#[tokio::test]
async fn a_value_over_the_codec_limit_ends_the_connection() {
    within(TEST, "test", async {
        let server = memcached().await;
        let ch = channel(&server.addr(), TextCodec::default());
        assert_eq!(
            ok(&ch, set(b"large", 0, vec![1u8; 4096])).await,
            Reply::Stored
        );
        assert_eq!(ok(&ch, set(b"small", 0, "s")).await, Reply::Stored);

        let strict = channel(&server.addr(), TextCodec::new(1024, 1 << 20));
        let err = call(&strict, get(&[b"large"]))
            .await
            .expect_err("over the codec's limit");
        assert_eq!(err.kind(), Kind::ConnectionLost, "{err}");
        assert!(err.may_have_executed());
        let conn = err.connection_error().expect("a connection error");
        assert_eq!(conn.kind(), ConnectionErrorKind::Read);
        assert!(
            format!("{err:?}").contains("over the codec's 1024"),
            "{err:?}"
        );
        // The channel connects again for the next call.
        assert_eq!(
            ok(&strict, get(&[b"small"])).await,
            Reply::Values(vec![value(b"small", 0, b"s")])
        );
    })
    .await;
}

/// Replies as memcached sends them: a multi-value get, an empty one, a status, a
/// number, an error line, a get cut short by an error line.
const STREAM: &[u8] = b"VALUE a 1 3\r\nEND\r\nVALUE b 2 0\r\n\r\nEND\r\nEND\r\nSTORED\r\n\
      42\r\nCLIENT_ERROR bad data chunk\r\nVALUE c 0 1\r\nc\r\nSERVER_ERROR out of memory\r\nERROR\r\n";

fn decode_all(codec: &mut TextCodec, buf: &mut BytesMut) -> std::io::Result<Vec<Reply>> {
    let mut out = Vec::new();
    while let Some(reply) = codec.decode(buf)? {
        out.push(reply);
    }
    Ok(out)
}

#[test]
fn replies_split_anywhere_decode_the_same() {
    let mut codec = TextCodec::default();
    let whole = decode_all(&mut codec, &mut BytesMut::from(STREAM)).unwrap();
    assert_eq!(
        whole,
        [
            Reply::Values(vec![value(b"a", 1, b"END"), value(b"b", 2, b"")]),
            Reply::Values(vec![]),
            Reply::Stored,
            Reply::Number(42),
            Reply::Error(TextError::Client("bad data chunk".into())),
            Reply::Error(TextError::Server("out of memory".into())),
            Reply::Error(TextError::Error),
        ]
    );
    // One byte at a time: nothing is taken before a whole reply is there.
    let (mut buf, mut bytewise) = (BytesMut::new(), Vec::new());
    for &b in STREAM {
        buf.extend_from_slice(&[b]);
        bytewise.extend(decode_all(&mut codec, &mut buf).unwrap());
    }
    assert_eq!(bytewise, whole);
    assert!(buf.is_empty());
}

#[test]
fn malformed_replies_are_decode_errors() {
    let long = format!("VALUE {}", "k".repeat(MAX_LINE));
    let bad: &[&[u8]] = &[
        b"HELLO\r\n",
        b"+5\r\n",
        b"VALUE k x 3\r\nabc\r\nEND\r\n",
        b"VALUE k 0 -1\r\n",
        b"VALUE  0 3\r\nabc\r\nEND\r\n",
        b"VALUE k 0 3 4 5\r\nabc\r\nEND\r\n",
        b"VALUE k 0 3\r\nabcd\r\nEND\r\n",
        b"VALUE k 0 3\r\nabc\r\nSTORED\r\n",
        b"VALUE k 0 3\r\nabc\r\nVERSION 1\r\n",
        b"VALUE k 0 99999999999\r\n",
        b"VALUE k 0 2000\r\n",
        long.as_bytes(),
    ];
    for input in bad {
        let mut codec = TextCodec::new(1024, 1 << 20);
        let err = decode_all(&mut codec, &mut BytesMut::from(*input)).expect_err("malformed");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{input:?}");
    }
    // A reply over the codec's whole-reply bound.
    let mut codec = TextCodec::new(1024, 1500);
    let mut buf = BytesMut::from(&b"VALUE a 0 1000\r\n"[..]);
    buf.extend_from_slice(&[b'a'; 1000]);
    buf.extend_from_slice(b"\r\nVALUE b 0 1000\r\n");
    assert!(decode_all(&mut codec, &mut buf).is_err());
}

#[test]
fn keys_are_checked_before_anything_is_sent() {
    for bad in [&b""[..], b"a b", b"a\r\nflush_all", b"\x7f", &[b'k'; 251]] {
        assert!(Key::new(bad).is_err(), "{bad:?}");
    }
    assert!(Key::new([b'k'; 250]).is_ok());
    assert!(Request::get(Vec::<&str>::new()).is_err());
    assert!(Request::set("a\tb", 0, "v").is_err());
}
