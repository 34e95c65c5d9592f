//! Writing a codec for a channel: what a frame must be, and what a bad one costs.
//!
//! This module has no items; it is documentation only.
//!
//! # What a frame is
//!
//! A frame is one item of the transport's stream: with `tokio_util::codec::Framed`,
//! one `Ok(Some(item))` from [`Decoder::decode`]. The channel matches frames, not bytes,
//! to calls. In [order mode](crate::Order) the next frame goes to the oldest call still
//! waiting, so **one frame must be one whole reply**, or the call must say how many
//! frames make its reply ([`Channel::request_n`], [`Channel::request_until_final`],
//! [`Channel::stream`]). [`Channel::request`] and `Service::call` take exactly one
//! frame.
//!
//! The channel cannot tell when this is wrong. Take memcached's text protocol, whose
//! answer to `get a` is three lines:
//!
//! ```text
//! VALUE a 0 2
//! va
//! END
//! ```
//!
//! Over `LinesCodec` with [`Plain`](crate::Plain), four concurrent `get`s return
//! `"VALUE a 0 2"`, `"va"`, `"END"` and `"VALUE b 0 2"`: each caller takes one line of
//! someone's reply. The lines left over arrive with no call waiting, and the connection
//! closes as out of step ([`ConnectionErrorKind::Desync`]).
//!
//! # One frame per reply, or several
//!
//! There are two ways to get it right:
//!
//! * **A codec that frames a whole reply.** The decoder returns `Ok(None)` until the
//!   whole reply is in its buffer, then returns it as one frame. Each call takes one
//!   frame with [`Channel::request`], and tower layers see whole replies. This is the
//!   best choice whenever the codec can find the end of a reply: a length prefix, a
//!   byte count (memcached's `VALUE` line), a count of elements (a RESP array), a
//!   terminator that cannot occur in the data. The repository's
//!   `examples/common/redis.rs` and `examples/common/memcached.rs` work this way.
//! * **A reply of several frames.** The codec frames smaller pieces (lines, packets)
//!   and the call says where its reply ends:
//!   * [`Channel::request_n`] when the number of frames is known when the request is
//!     made: `n` commands written as one [`Call::parts`] request, a command whose reply
//!     is always `n` lines;
//!   * [`Channel::request_until_final`] when the end is only known from the content,
//!     and a frame alone says whether it is the last: [`Protocol::is_final`] is asked of
//!     each frame (memcached binary's `STAT` ends with an empty key; SMTP's `250-` lines
//!     go on, `250 ` ends);
//!   * [`Channel::stream`] for either, when the caller wants each frame as it arrives
//!     (a large result read in pieces).
//!
//!   Multi-frame replies are bounded by [`Config::max_reply_frames`] and
//!   [`Config::max_reply_bytes`]; going over fails that call only.
//!
//! To pick: frame the whole reply if the codec can find its end. Use `request_n` when
//! the caller knows the count. Use until-final only when the codec cannot frame the
//! reply and every final frame can be told from every other frame by looking at it
//! alone; a data frame that looks final ends its reply early and puts every later
//! reply on the connection out of step.
//!
//! # Example: a codec that frames a whole reply
//!
//! A client for memcached's text `get`, whose reply is zero or more values, then `END`:
//!
//! ```text
//! VALUE <key> <flags> <bytes>\r\n
//! <data>\r\n
//! END\r\n
//! ```
//!
//! The decoder walks the reply without consuming it. It reads each data block by its
//! byte count, so data that holds `"\r\nEND\r\n"` is data. When it reaches `END` it
//! takes the whole reply out of the buffer as one frame. A server error line
//! (`ERROR`, `SERVER_ERROR ...`) is a reply of its own, and [`Protocol::check`] fails
//! its call with it.
//!
//! ```
//! use std::io;
//!
//! use bytes::{Buf, Bytes, BytesMut};
//! use socketchannel::{BoxError, Channel, Order, Protocol};
//! use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};
//! use tokio_util::codec::{Decoder, Encoder, Framed};
//!
//! /// One value of a `get` reply.
//! #[derive(Debug, PartialEq)]
//! struct Item {
//!     key: String,
//!     flags: u32,
//!     data: Bytes,
//! }
//!
//! /// A whole reply to `get`: the values found (none on a miss), or an error line.
//! #[derive(Debug, PartialEq)]
//! enum Reply {
//!     Values(Vec<Item>),
//!     Error(String),
//! }
//!
//! /// Writes `get <keys>\r\n`; reads one whole reply per frame.
//! #[derive(Debug, Clone, Default)]
//! struct GetCodec;
//!
//! /// The longest line and the largest data block it buffers.
//! const MAX_LINE: usize = 8 << 10;
//! const MAX_DATA: usize = 1 << 20;
//!
//! fn invalid(e: impl Into<BoxError>) -> io::Error {
//!     io::Error::new(io::ErrorKind::InvalidData, e)
//! }
//!
//! impl Encoder<String> for GetCodec {
//!     type Error = io::Error;
//!
//!     fn encode(&mut self, keys: String, dst: &mut BytesMut) -> io::Result<()> {
//!         dst.extend_from_slice(b"get ");
//!         dst.extend_from_slice(keys.as_bytes());
//!         dst.extend_from_slice(b"\r\n");
//!         Ok(())
//!     }
//! }
//!
//! impl Decoder for GetCodec {
//!     type Item = Reply;
//!     type Error = io::Error;
//!
//!     fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<Reply>> {
//!         // The values seen so far: key, flags, and where the data lies in `src`.
//!         let mut values = Vec::new();
//!         let mut at = 0;
//!         loop {
//!             let Some(eol) = src[at..].windows(2).position(|w| w == b"\r\n") else {
//!                 if src.len() - at > MAX_LINE {
//!                     return Err(invalid("line too long"));
//!                 }
//!                 return Ok(None); // the rest of the line has not arrived
//!             };
//!             let line = std::str::from_utf8(&src[at..at + eol]).map_err(invalid)?;
//!             let next = at + eol + 2;
//!             if line == "END" {
//!                 // The whole reply is here: take it out as one frame.
//!                 let reply = src.split_to(next).freeze();
//!                 let items = values
//!                     .into_iter()
//!                     .map(|(key, flags, start, len)| Item {
//!                         key,
//!                         flags,
//!                         data: reply.slice(start..start + len),
//!                     })
//!                     .collect();
//!                 return Ok(Some(Reply::Values(items)));
//!             }
//!             let Some(header) = line.strip_prefix("VALUE ") else {
//!                 if !values.is_empty() {
//!                     return Err(invalid(format!("{line:?} inside a get reply")));
//!                 }
//!                 // ERROR, CLIENT_ERROR ..., SERVER_ERROR ...: a one-line reply.
//!                 let line = line.to_owned();
//!                 src.advance(next);
//!                 return Ok(Some(Reply::Error(line)));
//!             };
//!             // <key> <flags> <bytes> [<cas>]
//!             let mut fields = header.split(' ');
//!             let (Some(key), Some(flags), Some(len)) =
//!                 (fields.next(), fields.next(), fields.next())
//!             else {
//!                 return Err(invalid(format!("bad VALUE line {line:?}")));
//!             };
//!             let flags: u32 = flags.parse().map_err(invalid)?;
//!             let len: usize = len.parse().map_err(invalid)?;
//!             if len > MAX_DATA {
//!                 return Err(invalid("data block too large"));
//!             }
//!             // The data block is read by its byte count, never searched for `END`.
//!             let end = next + len + 2;
//!             if src.len() < end {
//!                 src.reserve(end - src.len());
//!                 return Ok(None);
//!             }
//!             if &src[next + len..end] != b"\r\n" {
//!                 return Err(invalid("data block not followed by \\r\\n"));
//!             }
//!             values.push((key.to_owned(), flags, next, len));
//!             at = end;
//!         }
//!     }
//! }
//!
//! /// An error line fails its own call; the connection stays up.
//! #[derive(Debug, Clone)]
//! struct Memcached;
//!
//! impl Protocol<String, Reply> for Memcached {
//!     fn check(&self, reply: Reply) -> Result<Reply, BoxError> {
//!         match reply {
//!             Reply::Error(line) => Err(line.into()),
//!             values => Ok(values),
//!         }
//!     }
//! }
//!
//! /// A tiny server that answers `get` as memcached does.
//! async fn serve(io: DuplexStream) -> io::Result<()> {
//!     let (read, mut write) = tokio::io::split(io);
//!     let mut lines = BufReader::new(read).lines();
//!     while let Some(line) = lines.next_line().await? {
//!         let keys = line.strip_prefix("get ").unwrap_or("");
//!         let mut reply = String::new();
//!         for key in keys.split(' ').filter(|k| !k.is_empty()) {
//!             let data = match key {
//!                 "a" => "va",
//!                 "b" => "vb",
//!                 "tricky" => "x\r\nEND\r\ny",
//!                 _ => continue,
//!             };
//!             reply += &format!("VALUE {key} 0 {}\r\n{data}\r\n", data.len());
//!         }
//!         reply += if keys.is_empty() { "ERROR\r\n" } else { "END\r\n" };
//!         write.write_all(reply.as_bytes()).await?;
//!     }
//!     Ok(())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! // A small pipe, so that replies arrive in pieces.
//! let (client, server) = tokio::io::duplex(16);
//! tokio::spawn(serve(server));
//! let channel = Channel::new(Framed::new(client, GetCodec), Order::new(Memcached));
//!
//! let get = |keys: &str| channel.request(keys.to_string());
//! let (a, b, tricky, missing) = tokio::join!(get("a"), get("b"), get("tricky"), get("nope"));
//! let value = |key: &str, data: &'static str| Item {
//!     key: key.to_string(),
//!     flags: 0,
//!     data: Bytes::from(data),
//! };
//! assert_eq!(a?, Reply::Values(vec![value("a", "va")]));
//! assert_eq!(b?, Reply::Values(vec![value("b", "vb")]));
//! assert_eq!(tricky?, Reply::Values(vec![value("tricky", "x\r\nEND\r\ny")]));
//! assert_eq!(missing?, Reply::Values(vec![]));
//!
//! // Several keys are still one reply, so still one frame.
//! let both = get("a b").await?;
//! assert_eq!(both, Reply::Values(vec![value("a", "va"), value("b", "vb")]));
//!
//! // An error reply fails its own call only.
//! let err = get("").await.unwrap_err();
//! assert!(err.is_server());
//! assert_eq!(get("a").await?, Reply::Values(vec![value("a", "va")]));
//! # Ok(())
//! # }
//! ```
//!
//! # The same protocol as lines, collected until `END`
//!
//! The protocol can also be read with `LinesCodec`, each call collecting lines until
//! one that [`Protocol::is_final`] marks:
//!
//! ```
//! use socketchannel::{BoxError, Channel, Order, Protocol};
//! use tokio_util::codec::{Framed, LinesCodec};
//! # use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};
//! #
//! # async fn serve(io: DuplexStream) -> std::io::Result<()> {
//! #     let (read, mut write) = tokio::io::split(io);
//! #     let mut lines = BufReader::new(read).lines();
//! #     while let Some(line) = lines.next_line().await? {
//! #         let key = line.strip_prefix("get ").unwrap_or("");
//! #         let mut reply = String::new();
//! #         let data = match key {
//! #             "a" => Some("va"),
//! #             "b" => Some("vb"),
//! #             "end" => Some("END"),
//! #             _ => None,
//! #         };
//! #         if let Some(data) = data {
//! #             reply += &format!("VALUE {key} 0 {}\r\n{data}\r\n", data.len());
//! #         }
//! #         reply += "END\r\n";
//! #         write.write_all(reply.as_bytes()).await?;
//! #     }
//! #     Ok(())
//! # }
//!
//! /// A reply is every line up to `END`.
//! #[derive(Debug, Clone)]
//! struct UntilEnd;
//!
//! impl Protocol<String, String> for UntilEnd {
//!     fn is_final(&self, line: &String) -> bool {
//!         line == "END"
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let (client, server) = tokio::io::duplex(1024);
//! tokio::spawn(serve(server)); // the server of the example above
//! let channel = Channel::new(Framed::new(client, LinesCodec::new()), Order::new(UntilEnd));
//!
//! let (a, b) = tokio::join!(
//!     channel.request_until_final("get a".to_string()),
//!     channel.request_until_final("get b".to_string()),
//! );
//! assert_eq!(a?, ["VALUE a 0 2", "va", "END"]);
//! assert_eq!(b?, ["VALUE b 0 2", "vb", "END"]);
//!
//! // A value whose data is "END" ends its reply one line early.
//! let short = channel.request_until_final("get end".to_string()).await?;
//! assert_eq!(short, ["VALUE end 0 3", "END"]);
//! # Ok(())
//! # }
//! ```
//!
//! It works while no data line reads `END`. The last call shows what happens when one
//! does: its reply ends early, and its real `END` is left over. That line becomes the
//! next caller's whole reply (a miss, whatever it asked), and so on down the queue; or,
//! with no call waiting, the connection closes as out of step. Data that holds
//! `"\r\n"` is split into several lines the same way. And the caller gets lines, not
//! values, to parse again. The codec of the previous example has none of these faults:
//! prefer it.
//!
//! # Session ids in a text protocol
//!
//! In [session mode](crate::Session), [`Sessions::stamp`] writes the id into each
//! request and [`Sessions::session`] reads it from each reply frame. Where the id is
//! part of the text (`"7 get a"` answered by `"7 va"`), it stays in the reply:
//! [`Protocol::check`] and the caller would see `"7 va"`. [`Sessions::unstamp`] takes
//! it out. It is called once for each frame matched to a call, before
//! [`Protocol::is_final`] and [`Protocol::check`], so both and the caller see the reply
//! without its id:
//!
//! ```
//! use futures::{SinkExt, StreamExt};
//! use socketchannel::{BoxError, Channel, Protocol, Session, Sessions};
//! use tokio_util::codec::{Framed, LinesCodec};
//!
//! /// Lines that start with their session id: "7 get a", answered by "7 va" or
//! /// "7 ERR no such key".
//! #[derive(Debug, Clone)]
//! struct Tagged;
//!
//! impl Protocol<String, String> for Tagged {
//!     fn check(&self, line: String) -> Result<String, BoxError> {
//!         // The id is gone: the line starts with what the server said.
//!         match line.strip_prefix("ERR ") {
//!             Some(why) => Err(why.into()),
//!             None => Ok(line),
//!         }
//!     }
//! }
//!
//! impl Sessions<String, String> for Tagged {
//!     type Id = u32;
//!
//!     fn stamp(&self, req: &mut String, id: u32) {
//!         *req = format!("{id} {req}");
//!     }
//!
//!     fn session(&self, line: &String) -> Option<u32> {
//!         line.split_once(' ')?.0.parse().ok()
//!     }
//!
//!     fn unstamp(&self, mut line: String) -> String {
//!         line.drain(..line.find(' ').map_or(0, |i| i + 1));
//!         line
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let (client, server) = tokio::io::duplex(1024);
//! // A server that reads two requests, then answers the second one first.
//! tokio::spawn(async move {
//!     let mut server = Framed::new(server, LinesCodec::new());
//!     let mut answer = |req: String| {
//!         let (id, key) = req.split_once(" get ").unwrap();
//!         match key {
//!             "a" => format!("{id} va"),
//!             _ => format!("{id} ERR no such key"),
//!         }
//!     };
//!     let first = server.next().await.unwrap().unwrap();
//!     let second = server.next().await.unwrap().unwrap();
//!     server.send(answer(second)).await.unwrap();
//!     server.send(answer(first)).await.unwrap();
//! });
//!
//! let channel = Channel::new(Framed::new(client, LinesCodec::new()), Session::new(Tagged));
//! let (a, nope) = tokio::join!(
//!     channel.request("get a".to_string()),
//!     channel.request("get nope".to_string()),
//! );
//! assert_eq!(a?, "va");
//! let err = nope.unwrap_err();
//! assert!(err.is_server());
//! assert_eq!(std::error::Error::source(&err).unwrap().to_string(), "no such key");
//! # Ok(())
//! # }
//! ```
//!
//! Without `unstamp`, `check` must skip the id itself (`line.split_once(' ')`), and the
//! caller gets the line with its id.
//!
//! A multi-frame reply in session mode needs the id in every frame, or a codec that
//! frames the whole reply: a frame with no id is not matched to any call (it goes to a
//! waiting [`Call::read`], or is dropped and counted).
//!
//! # What a decode error costs
//!
//! An `Err` from [`Decoder::decode`] ends the connection, for every caller. After a
//! framing error nothing later in the stream can be trusted, so the channel does not
//! try to read on:
//!
//! * every call written on the connection fails with [`Kind::ConnectionLost`] as *may
//!   have executed* ([`Error::may_have_executed`]), whichever reply was bad; the
//!   [`ConnectionError`] says [`ConnectionErrorKind::Read`];
//! * calls queued but not yet written never reached the server: on a channel made by
//!   [`Channel::builder`] they go on to the next connection (and fail *not sent* if it
//!   cannot be made); on a channel over a fixed transport ([`Channel::new`]) they fail
//!   *not sent*, with their requests ([`Error::take_request`]).
//!
//! An encode error costs the same ([`ConnectionErrorKind::Write`]).
//!
//! So decode only what framing needs on the connection task, and return an error from
//! the decoder only when the framing itself is broken. If parsing a reply's content can
//! fail for one reply (a number that does not parse, text that is not UTF-8, a document
//! that does not deserialize), do not parse it in the codec: return the frame's bytes
//! ([`Bytes`](bytes::Bytes), `BytesMut`) and parse on the caller's task. A bad reply
//! then fails one call, and the parsing work runs on the callers' threads rather than
//! on the one connection task. [`Protocol::check`] also fails only its own call, but it
//! runs on the connection task and returns the same type it is given.
//!
//! ```
//! use bytes::{Bytes, BytesMut};
//! use futures::{SinkExt, StreamExt};
//! use socketchannel::{BoxError, Channel, Order, Plain};
//! use tokio_util::codec::{Framed, LengthDelimitedCodec};
//!
//! /// Asks how many there are of `what`.
//! async fn count(
//!     channel: &Channel<Bytes, BytesMut>,
//!     what: &'static str,
//! ) -> Result<u64, BoxError> {
//!     let frame = channel.request(Bytes::from(what)).await?;
//!     // Parsed here, on the caller's task: a bad reply fails this call only.
//!     Ok(std::str::from_utf8(&frame)?.parse()?)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let (client, server) = tokio::io::duplex(1024);
//! tokio::spawn(async move {
//!     let mut server = Framed::new(server, LengthDelimitedCodec::new());
//!     while let Some(Ok(what)) = server.next().await {
//!         let answer = if &what[..] == b"apples" { "12" } else { "a dozen" };
//!         server.send(Bytes::from(answer)).await.unwrap();
//!     }
//! });
//!
//! let framed = Framed::new(client, LengthDelimitedCodec::new());
//! let channel = Channel::new(framed, Order::new(Plain));
//! let (apples, pears, again) = tokio::join!(
//!     count(&channel, "apples"),
//!     count(&channel, "pears"),
//!     count(&channel, "apples"),
//! );
//! assert_eq!(apples?, 12);
//! assert!(pears.is_err()); // "a dozen" is not a number: this call fails...
//! assert_eq!(again?, 12); // ...and no other
//! assert!(!channel.is_closed());
//! # Ok(())
//! # }
//! ```
//!
//! # Push frames
//!
//! A frame the server sends unasked (a pub/sub message, a RESP3 push) must be told
//! apart by looking at it alone: [`Protocol::is_push`] returns `true` for it, and it
//! goes to [`Channel::pushes`] instead of a waiting call. In order mode any other
//! frame that arrives with no call waiting closes the connection as out of step.
//!
//! # Checklist for a new codec
//!
//! * One frame is one whole reply, or every call whose reply has several frames uses
//!   [`Channel::request_n`], [`Channel::request_until_final`] or [`Channel::stream`].
//! * The decoder returns `Ok(None)` until the whole frame is in the buffer, and takes
//!   nothing out of the buffer before that. Test it with replies that arrive a few bytes
//!   at a time.
//! * Data is read by its length wherever the protocol gives one, never searched for a
//!   terminator.
//! * The decoder bounds what it buffers (the longest line, the largest value) and
//!   returns an error beyond it.
//! * The decoder fails only on broken framing. Content that may not parse is returned
//!   as bytes and parsed on the caller; an error reply is turned into an error by
//!   [`Protocol::check`].
//! * Frames the server sends unasked are marked by [`Protocol::is_push`].
//! * In session mode, every reply frame carries the id, and [`Sessions::unstamp`] takes
//!   it out if it is part of the payload.
//! * With [`Channel::builder`] the codec is cloned for every connection: a clone starts
//!   with no partly read frame.
//! * The `testing` feature (`socketchannel::testing`) runs a codec through lost
//!   connections, stalls and reconnects in a deterministic simulation.
//!
//! [`Decoder::decode`]: tokio_util::codec::Decoder::decode
//! [`Channel::request`]: crate::Channel::request
//! [`Channel::request_n`]: crate::Channel::request_n
//! [`Channel::request_until_final`]: crate::Channel::request_until_final
//! [`Channel::stream`]: crate::Channel::stream
//! [`Channel::pushes`]: crate::Channel::pushes
//! [`Channel::builder`]: crate::Channel::builder
//! [`Channel::new`]: crate::Channel::new
//! [`Call::parts`]: crate::Call::parts
//! [`Call::read`]: crate::Call::read
//! [`Config::max_reply_frames`]: crate::Config::max_reply_frames
//! [`Config::max_reply_bytes`]: crate::Config::max_reply_bytes
//! [`Protocol::is_final`]: crate::Protocol::is_final
//! [`Protocol::is_push`]: crate::Protocol::is_push
//! [`Protocol::check`]: crate::Protocol::check
//! [`Sessions::stamp`]: crate::Sessions::stamp
//! [`Sessions::session`]: crate::Sessions::session
//! [`Sessions::unstamp`]: crate::Sessions::unstamp
//! [`Kind::ConnectionLost`]: crate::Kind::ConnectionLost
//! [`Error::may_have_executed`]: crate::Error::may_have_executed
//! [`Error::take_request`]: crate::Error::take_request
//! [`ConnectionError`]: crate::ConnectionError
//! [`ConnectionErrorKind::Desync`]: crate::ConnectionErrorKind::Desync
//! [`ConnectionErrorKind::Read`]: crate::ConnectionErrorKind::Read
//! [`ConnectionErrorKind::Write`]: crate::ConnectionErrorKind::Write
