//! `Sessions::unstamp`: a text protocol whose session id is part of the payload ("7 ")
//! gets it taken off each matched reply before `is_final`, `check` and the caller see it;
//! push frames and frames with no id pass as they are; the default changes nothing.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use socketchannel::{BoxError, Call, Channel, Protocol, Session, Sessions};
use tokio::io::DuplexStream;
use tokio_util::codec::{Framed, LinesCodec};

/// What the protocol's methods were given, in order.
#[derive(Debug, Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, what: String) {
        self.0.lock().unwrap().push(what);
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// Lines that start with their session id ("7 hello"). `check` and `is_final` record
/// what they see; `check` fails a line that starts with "ERR ".
#[derive(Debug, Clone)]
struct Tagged {
    /// Override `unstamp` to take "7 " off.
    strip: bool,
    checked: Log,
    finals: Log,
    unstamped: Log,
}

impl Tagged {
    fn new(strip: bool) -> Self {
        Tagged {
            strip,
            checked: Log::default(),
            finals: Log::default(),
            unstamped: Log::default(),
        }
    }
}

impl Protocol<String, String> for Tagged {
    fn is_push(&self, line: &String) -> bool {
        line.contains(" PUSH ")
    }

    fn is_final(&self, line: &String) -> bool {
        self.finals.push(line.clone());
        line.ends_with("END")
    }

    fn check(&self, line: String) -> Result<String, BoxError> {
        self.checked.push(line.clone());
        match line.strip_prefix("ERR ") {
            Some(why) => Err(why.into()),
            None => Ok(line),
        }
    }
}

impl Sessions<String, String> for Tagged {
    type Id = u32;

    fn stamp(&self, req: &mut String, id: u32) {
        *req = format!("{id} {req}");
    }

    fn session(&self, line: &String) -> Option<u32> {
        line.split_once(' ')?.0.parse().ok()
    }

    fn unstamp(&self, line: String) -> String {
        if !self.strip {
            // What the trait's default does.
            return <Plain as Sessions<String, String>>::unstamp(&Plain, line);
        }
        self.unstamped.push(line.clone());
        match line.strip_prefix("7 ") {
            Some(rest) => rest.to_string(),
            None => line,
        }
    }
}

/// A protocol that does not override `unstamp`, to reach the trait's default.
struct Plain;
impl Protocol<String, String> for Plain {}
impl Sessions<String, String> for Plain {
    type Id = u32;
    fn stamp(&self, _: &mut String, _: u32) {}
    fn session(&self, _: &String) -> Option<u32> {
        None
    }
}

/// A server that answers each request, in order, by what it asks.
fn server(io: DuplexStream) {
    tokio::spawn(async move {
        let mut framed = Framed::new(io, LinesCodec::new());
        while let Some(Ok(req)) = framed.next().await {
            let (id, what) = req.split_once(' ').unwrap();
            let lines: Vec<String> = match what {
                "hello" => vec![format!("{id} HELLO")],
                "list" => vec![format!("{id} a"), format!("{id} b"), format!("{id} END")],
                "fail" => vec![format!("{id} ERR boom")],
                "push" => vec![format!("{id} PUSH news"), format!("{id} ok")],
                "greet" => vec!["welcome aboard".to_string(), format!("{id} ok")],
                other => panic!("unexpected request {other:?}"),
            };
            for line in lines {
                if framed.send(line).await.is_err() {
                    return;
                }
            }
        }
    });
}

fn channel(proto: Tagged) -> Channel<String, String> {
    let (client, io) = tokio::io::duplex(1024);
    server(io);
    Channel::new(Framed::new(client, LinesCodec::new()), Session::new(proto))
}

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

fn seven(req: &str) -> Call<String> {
    Call::new(req.to_string()).id(7u32)
}

#[tokio::test]
async fn unstamp_strips_the_id_before_check_and_the_caller() {
    within("unstamp", async {
        let proto = Tagged::new(true);
        let ch = channel(proto.clone());

        // One frame: the caller and `check` see it without "7 ".
        assert_eq!(ch.request(seven("hello")).await.unwrap(), "HELLO");
        assert_eq!(proto.checked.take(), ["HELLO"]);
        assert_eq!(proto.unstamped.take(), ["7 HELLO"]);

        // Several frames: each goes through `unstamp`, before `is_final` and `check`.
        let list = ch.request_until_final(seven("list")).await.unwrap();
        assert_eq!(list, ["a", "b", "END"]);
        assert_eq!(proto.finals.take(), ["a", "b", "END"]);
        assert_eq!(proto.checked.take(), ["a", "b", "END"]);
        assert_eq!(proto.unstamped.take(), ["7 a", "7 b", "7 END"]);

        // An error reply: `check` sees "ERR boom", so the caller's error is "boom".
        let err = ch.request(seven("fail")).await.unwrap_err();
        assert!(err.is_server(), "{err}");
        assert_eq!(std::error::Error::source(&err).unwrap().to_string(), "boom");
        assert_eq!(proto.checked.take(), ["ERR boom"]);
        assert_eq!(proto.unstamped.take(), ["7 ERR boom"]);

        // A push frame is not unstamped.
        let mut pushes = ch.pushes().unwrap();
        assert_eq!(ch.request(seven("push")).await.unwrap(), "ok");
        assert_eq!(pushes.recv().await.unwrap(), "7 PUSH news");
        assert_eq!(proto.unstamped.take(), ["7 ok"]);
        assert_eq!(proto.checked.take(), ["ok"]);

        // Nor is a frame with no id, which goes to a read without a request.
        let (read, ok) = tokio::join!(ch.read(), ch.request(seven("greet")));
        assert_eq!(read.unwrap(), "welcome aboard");
        assert_eq!(ok.unwrap(), "ok");
        assert_eq!(proto.unstamped.take(), ["7 ok"]);
        assert_eq!(proto.checked.take(), ["welcome aboard", "ok"]);
    })
    .await;
}

#[tokio::test]
async fn without_unstamp_replies_keep_their_id() {
    within("default unstamp", async {
        let proto = Tagged::new(false);
        let ch = channel(proto.clone());

        assert_eq!(ch.request(seven("hello")).await.unwrap(), "7 HELLO");
        assert_eq!(proto.checked.take(), ["7 HELLO"]);

        let list = ch.request_until_final(seven("list")).await.unwrap();
        assert_eq!(list, ["7 a", "7 b", "7 END"]);
        assert_eq!(proto.finals.take(), ["7 a", "7 b", "7 END"]);
        assert_eq!(proto.checked.take(), ["7 a", "7 b", "7 END"]);

        // `check` sees the id, so "7 ERR boom" is not an error reply to it.
        assert_eq!(ch.request(seven("fail")).await.unwrap(), "7 ERR boom");
        assert!(proto.unstamped.take().is_empty());
    })
    .await;
}
