//! Reply shape depending on the request (Contract 10): a memcached-text-like codec that
//! parses each reply by the request it encoded.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex};

use bytes::{Buf, BufMut, BytesMut};
use socketchannel::{Channel, Config, Order};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::oneshot;
use tokio_test::assert_pending;
use tokio_util::codec::{Decoder, Encoder, Framed};

use crate::common::SHORT;
use crate::support::{bounded, eventually, timeout};

/// A memcached-text-like request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mc {
    Get(String),
    Set(String, String),
}

/// Its reply: the shape depends on the request, not on the bytes alone.
#[derive(Debug, Clone, PartialEq, Eq)]
enum McReply {
    Value(Option<String>),
    Stored,
}

#[derive(Debug, Clone, Copy)]
enum Shape {
    Get,
    Set,
}

/// Records the shape of every request it encodes and decodes each reply by the shape of
/// the oldest request not yet answered (Contract 10). It also logs what it encoded.
#[derive(Debug, Clone, Default)]
struct McCodec {
    expect: Arc<Mutex<VecDeque<Shape>>>,
    encoded: Arc<Mutex<Vec<Mc>>>,
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// The first line of `src` (without its CRLF), if complete, and its length with CRLF.
fn line(src: &[u8], from: usize) -> Option<(&[u8], usize)> {
    let at = src[from..].windows(2).position(|w| w == b"\r\n")?;
    Some((&src[from..from + at], at + 2))
}

impl Encoder<Mc> for McCodec {
    type Error = io::Error;

    fn encode(&mut self, req: Mc, dst: &mut BytesMut) -> io::Result<()> {
        let shape = match &req {
            Mc::Get(key) => {
                dst.put_slice(format!("get {key}\r\n").as_bytes());
                Shape::Get
            }
            Mc::Set(key, value) => {
                dst.put_slice(format!("set {key} 0 0 {}\r\n{value}\r\n", value.len()).as_bytes());
                Shape::Set
            }
        };
        self.expect.lock().unwrap().push_back(shape);
        self.encoded.lock().unwrap().push(req);
        Ok(())
    }
}

impl Decoder for McCodec {
    type Item = McReply;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<McReply>> {
        if src.is_empty() {
            return Ok(None);
        }
        let Some(shape) = self.expect.lock().unwrap().front().copied() else {
            return Err(bad("a reply with no request encoded"));
        };
        let Some((first, first_len)) = line(src, 0) else {
            return Ok(None);
        };
        let (reply, used) = match shape {
            Shape::Set if first == b"STORED" => (McReply::Stored, first_len),
            Shape::Set => return Err(bad("a set reply that is not STORED")),
            Shape::Get if first == b"END" => (McReply::Value(None), first_len),
            Shape::Get => {
                // VALUE <key> <flags> <bytes>\r\n<data>\r\nEND\r\n
                let header = std::str::from_utf8(first).map_err(|_| bad("header"))?;
                let parts: Vec<&str> = header.split(' ').collect();
                let ["VALUE", _key, _flags, len] = parts[..] else {
                    return Err(bad("a get reply that is neither VALUE nor END"));
                };
                let len: usize = len.parse().map_err(|_| bad("length"))?;
                let need = first_len + len + 2 + 5;
                if src.len() < need {
                    return Ok(None);
                }
                if &src[first_len + len..need] != b"\r\nEND\r\n" {
                    return Err(bad("a VALUE not followed by END"));
                }
                let data = String::from_utf8(src[first_len..first_len + len].to_vec())
                    .map_err(|_| bad("data"))?;
                (McReply::Value(Some(data)), need)
            }
        };
        src.advance(used);
        self.expect.lock().unwrap().pop_front();
        Ok(Some(reply))
    }
}

/// A memcached-text-like server over `io`: `get`/`set` on a map. It logs every command
/// it reads, and holds its first reply until `hold` fires.
async fn mc_server(
    io: tokio::io::DuplexStream,
    log: Arc<Mutex<Vec<String>>>,
    hold: oneshot::Receiver<()>,
) {
    let (read, mut write) = tokio::io::split(io);
    let mut read = BufReader::new(read);
    let mut map = HashMap::<String, String>::new();
    let mut hold = Some(hold);
    for _ in 0..10_000 {
        let mut cmd = String::new();
        if read.read_line(&mut cmd).await.expect("mc read") == 0 {
            return;
        }
        let cmd = cmd.trim_end().to_string();
        let words: Vec<&str> = cmd.split(' ').collect();
        let reply = match words[..] {
            ["get", key] => {
                log.lock().unwrap().push(cmd.clone());
                match map.get(key) {
                    Some(v) => format!("VALUE {key} 0 {}\r\n{v}\r\nEND\r\n", v.len()),
                    None => "END\r\n".to_string(),
                }
            }
            ["set", key, _, _, len] => {
                let len: usize = len.parse().expect("set length");
                let mut data = vec![0; len + 2];
                read.read_exact(&mut data).await.expect("set data");
                let value = String::from_utf8(data[..len].to_vec()).expect("utf-8");
                log.lock().unwrap().push(format!("set {key} {value}"));
                map.insert(key.to_string(), value);
                "STORED\r\n".to_string()
            }
            _ => panic!("unknown command {cmd:?}"),
        };
        if let Some(hold) = hold.take() {
            let _ = hold.await;
        }
        write.write_all(reply.as_bytes()).await.expect("mc write");
    }
}

/// `get` and `set` replies have different shapes and the codec parses each by the
/// request it encoded. A request dropped before it is written is never encoded, so the
/// codec's record stays in step with the replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_shape_can_depend_on_the_request_the_codec_encoded() {
    bounded(async {
        let (client, server) = tokio::io::duplex(4096);
        let log = Arc::new(Mutex::new(Vec::new()));
        let (release, hold) = oneshot::channel();
        let peer = tokio::spawn(mc_server(server, log.clone(), hold));

        let codec = McCodec::default();
        let encoded = codec.encoded.clone();
        let ch: Channel<Mc, McReply> = Channel::with_config(
            Framed::new(client, codec),
            Order::new(socketchannel::Plain),
            Config::default().max_in_flight(1),
        );

        // The first call is written and its reply held: the one slot is taken.
        let first = {
            let ch = ch.clone();
            tokio::spawn(async move { ch.request(Mc::Set("a".into(), "1".into())).await })
        };
        eventually(SHORT, "server read the first set", || {
            log.lock().unwrap().len() == 1
        })
        .await;

        // A get queued behind it and dropped: never written, hence never encoded.
        let mut dropped = tokio_test::task::spawn(ch.request(Mc::Get("dropped".into())));
        assert_pending!(dropped.poll());
        drop(dropped);

        release.send(()).expect("release");
        assert_eq!(first.await.expect("task").expect("set a"), McReply::Stored);

        let get = |k: &str| ch.request(Mc::Get(k.into()));
        let set = |k: &str, v: &str| ch.request(Mc::Set(k.into(), v.into()));
        assert_eq!(
            get("a").await.expect("get a"),
            McReply::Value(Some("1".into()))
        );
        assert_eq!(get("nope").await.expect("get nope"), McReply::Value(None));
        assert_eq!(set("b", "two words").await.expect("set b"), McReply::Stored);
        assert_eq!(
            get("b").await.expect("get b"),
            McReply::Value(Some("two words".into()))
        );
        assert_eq!(ch.counters().skipped, 1);

        // A burst of mixed shapes, pipelined.
        let many = (0..40).map(|i| {
            let ch = ch.clone();
            async move {
                if i % 2 == 0 {
                    let r = ch.request(Mc::Set(format!("k{i}"), format!("v{i}"))).await;
                    assert_eq!(r.expect("set"), McReply::Stored);
                } else {
                    let r = ch.request(Mc::Get("a".into())).await;
                    assert_eq!(r.expect("get"), McReply::Value(Some("1".into())));
                }
            }
        });
        futures::future::join_all(many).await;

        let encoded = encoded.lock().unwrap().clone();
        assert!(
            !encoded.contains(&Mc::Get("dropped".into())),
            "the dropped request was encoded: {encoded:?}"
        );
        assert_eq!(encoded.len(), 5 + 40);
        assert!(!log.lock().unwrap().iter().any(|c| c.contains("dropped")));

        drop(ch);
        timeout(SHORT, peer).await.expect("peer");
    })
    .await;
}
