//! What the engine must know about a protocol's frames, beyond encoding them.
//!
//! The codec turns bytes into frames; these traits say what a decoded frame *means* to
//! the matcher: an unsolicited push, the last part of a multi-part reply, an error reply,
//! and (in session mode) which request it answers.

use tower::BoxError;

/// How to read a protocol's reply frames. Every method has a default, so a protocol with
/// plain one-frame replies and no pushes needs only `impl Protocol<Req, Resp> for P {}`
/// (or uses [`Plain`]).
pub trait Protocol<Req, Resp>: Send + Sync + 'static {
    /// Is this frame an unsolicited push (a RESP3 push, a pub/sub message)?
    ///
    /// Push frames go to the push receiver and never take a waiting request's reply.
    /// Only frames this returns `true` for do: in order mode any other frame with no
    /// request waiting is a desync and closes the connection.
    fn is_push(&self, _resp: &Resp) -> bool {
        false
    }

    /// Is this frame the last part of its reply?
    ///
    /// Used by calls that read parts until the final one (skynet's `padding`,
    /// [`Channel::request_until_final`](crate::Channel::request_until_final)).
    fn is_final(&self, _resp: &Resp) -> bool {
        true
    }

    /// Turns an error reply into an error for its caller.
    ///
    /// Return `Err` for a reply that the protocol considers a failure of this request
    /// only (Redis `-ERR`, a memcached status other than success). The caller gets an
    /// [`Error`](crate::Error) of kind [`Server`](crate::Kind::Server) with this error as
    /// its source; the connection stays up and other callers are not affected.
    fn check(&self, resp: Resp) -> Result<Resp, BoxError> {
        Ok(resp)
    }

    /// What the server says with this frame beyond the reply it is: that the call did
    /// not run, that this connection is the wrong one, or that the server wants this
    /// connection drained. The default, [`Verdict::Reply`], leaves it all to
    /// [`check`](Self::check).
    ///
    /// Called once per frame read, before matching (a [`Drain`](Verdict::Drain) frame
    /// is nobody's reply) and after [`is_push`](Self::is_push), on the connection task:
    /// it must be cheap. A panic in it is a panic on the connection task, as in
    /// `check`: the calls waiting on that connection fail *may have executed*.
    ///
    /// ```
    /// use socketchannel::{Protocol, Verdict};
    /// # struct Resp { error: Option<String> }
    /// struct Redis;
    ///
    /// impl<Req> Protocol<Req, Resp> for Redis {
    ///     fn verdict(&self, resp: &Resp) -> Verdict {
    ///         match resp.error.as_deref() {
    ///             // Nothing ran: this node is loading its data set.
    ///             Some(e) if e.starts_with("LOADING") => Verdict::NotRun,
    ///             // Nothing ran, and this node is no longer the master.
    ///             Some(e) if e.starts_with("READONLY") => Verdict::WrongServer,
    ///             _ => Verdict::Reply,
    ///         }
    ///     }
    /// }
    /// ```
    fn verdict(&self, _resp: &Resp) -> Verdict {
        Verdict::Reply
    }
}

/// What a frame says beyond the reply it is ([`Protocol::verdict`]).
///
/// | verdict | the call it answers | the connection |
/// |---|---|---|
/// | `Reply` | [`check`](Protocol::check) decides | kept |
/// | `NotRun` | fails [`Kind::Server`](crate::Kind::Server), *not sent* | kept |
/// | `WrongServer` | fails [`Kind::Server`](crate::Kind::Server), *not sent* | left: a new one is opened through the handshake, as after a failed attempt (backoff, that host tried last) |
/// | `Drain` | none: not a reply | writes nothing new; its written calls finish, queued calls go to a new connection |
///
/// A *not sent* call was not executed, on the server's word, so
/// [`RetryNotSent`](crate::RetryNotSent) retries it when it has the request in hand.
/// Only a call whose whole reply says so is *not sent*: a multi-frame reply
/// ([`Channel::request_n`](crate::Channel::request_n), until final, a stream) with one
/// `NotRun` frame among ordinary ones fails *may have executed*, as the other frames'
/// commands ran.
///
/// A `Drain` frame is nobody's reply, even one that carries a session id; a
/// `WrongServer` frame for no waiting call (an unknown id) is dropped like any such
/// frame, and says nothing of the connection. A connection that answered nothing and
/// says `WrongServer` or `Drain` (at once, or then closes) counts as a failed attempt:
/// backed off from, so a node that keeps saying so is no hot loop.
///
/// Without a reconnect (a channel over a transport of one's own) there is no other
/// connection to go to: `WrongServer` fails its call as `NotRun` does and the
/// connection is kept; `Drain` fails the queued calls *not sent* and closes the
/// channel once the written ones finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Verdict {
    /// An ordinary reply, or part of one.
    Reply,
    /// An error reply that promises the call did not run (Redis `LOADING`,
    /// `MASTERDOWN`, `TRYAGAIN`).
    NotRun,
    /// The call did not run, and this connection is no longer the right one: a demoted
    /// node (Redis `READONLY` on a master turned replica), a "not primary" reply. Not a
    /// per-key redirect such as Redis `MOVED`, which says nothing of the connection.
    WrongServer,
    /// Not a reply: the server asks that this connection take no new calls (HTTP/2
    /// `GOAWAY`, Finagle Mux's `Tdrain`).
    Drain,
}

impl Verdict {
    /// The call did not run: `NotRun` or `WrongServer`.
    pub(crate) fn not_run(self) -> bool {
        matches!(self, Verdict::NotRun | Verdict::WrongServer)
    }
}

/// A protocol with one-frame replies, no pushes and no error replies.
#[derive(Debug, Clone, Copy, Default)]
pub struct Plain;

impl<Req, Resp> Protocol<Req, Resp> for Plain {}

/// Session mode: where a protocol carries the session id that pairs a reply with its
/// request.
///
/// ```
/// use socketchannel::{Protocol, Sessions};
///
/// struct Msg { id: u16, body: Vec<u8> }
/// struct Rpc;
///
/// impl Protocol<Msg, Msg> for Rpc {}
/// impl Sessions<Msg, Msg> for Rpc {
///     type Id = u16;
///     fn stamp(&self, req: &mut Msg, id: u16) { req.id = id }
///     fn session(&self, resp: &Msg) -> Option<u16> { Some(resp.id) }
/// }
/// ```
pub trait Sessions<Req, Resp>: Protocol<Req, Resp> {
    /// The id's type on the wire.
    type Id: SessionId;

    /// Writes the id into a request before it is encoded. For a multi-part request
    /// every part is stamped.
    fn stamp(&self, req: &mut Req, id: Self::Id);

    /// Reads the id a reply answers; `None` for a frame that carries none (a greeting:
    /// it goes to the oldest read without a request, or is dropped and counted).
    fn session(&self, resp: &Resp) -> Option<Self::Id>;

    /// Takes the id back out of a reply, for protocols whose id is part of the payload
    /// (a text protocol's `"7 "` prefix).
    ///
    /// Called once per frame that [`session`](Sessions::session) matched to a waiting
    /// call, before [`Protocol::is_final`] and [`Protocol::check`], so they and the
    /// caller see the reply without its id. Every frame of a multi-frame reply goes
    /// through it. Push frames and frames that carry no id are passed on as they are.
    ///
    /// The default returns the reply unchanged, and costs nothing.
    ///
    /// ```
    /// use socketchannel::{Protocol, Sessions};
    ///
    /// /// Lines that start with their session id: "7 hello".
    /// struct Tagged;
    /// impl Protocol<String, String> for Tagged {}
    /// impl Sessions<String, String> for Tagged {
    ///     type Id = u32;
    ///     fn stamp(&self, req: &mut String, id: u32) {
    ///         *req = format!("{id} {req}");
    ///     }
    ///     fn session(&self, resp: &String) -> Option<u32> {
    ///         resp.split_once(' ')?.0.parse().ok()
    ///     }
    ///     fn unstamp(&self, mut resp: String) -> String {
    ///         resp.drain(..resp.find(' ').map_or(0, |i| i + 1));
    ///         resp
    ///     }
    /// }
    ///
    /// assert_eq!(Tagged.unstamp("7 hello".to_string()), "hello");
    /// ```
    #[inline]
    fn unstamp(&self, resp: Resp) -> Resp {
        resp
    }

    /// Does this protocol tell the server when a written call's caller is gone
    /// ([`cancel`](Sessions::cancel))? Only then does the engine watch for callers
    /// leaving, which costs a little per call; the default, `false`, costs nothing.
    fn cancels(&self) -> bool {
        false
    }

    /// The notice that tells the server the caller of the written call `id` is gone,
    /// so it can stop working on it (Finagle Mux's `Tdiscarded`, tarpc's cancel
    /// message); `None` to send none for this id. Called only when
    /// [`cancels`](Sessions::cancels) is `true`.
    ///
    /// A caller is gone when it dropped its future (or stream) after its call was
    /// written, when the call's [deadline](crate::Call::deadline) passed, or when the
    /// client gave up on a reply the server still sends: a reply limit failed the call
    /// before its last frame ([`Config::max_reply_frames`](crate::Config::max_reply_frames),
    /// a stream reader behind [`Config::stream_buffer`](crate::Config::stream_buffer)),
    /// or a stream met an error frame before the reply's end. The engine then writes
    /// the notice within one poll of the connection task: ahead of the calls still
    /// queued, never between the parts of a multi-part request. The notice is written
    /// as it is returned: it is not stamped, and no reply is awaited for it (it must
    /// carry `id` itself). The call's id stays reserved until the server answers the
    /// call (any reply with that id: the call's own, or one that says it was
    /// cancelled) or the connection ends, so a late reply never reaches the next call
    /// to get that id. A call of several reply frames keeps it until its reply ends as
    /// the call said: `n` frames for [`Channel::request_n`](crate::Channel::request_n),
    /// a final one ([`Protocol::is_final`]) for an until-final call; a server that
    /// answers a notice with one "cancelled" frame should make it final, and a
    /// `request_n` call waits for its `n` frames however the server answers. The server must answer such a call once, as it answers any
    /// call: with its reply or with a "cancelled" one, never both, since the second
    /// would find the id free and perhaps another call's.
    /// [`Counters::cancel_notices`](crate::Counters::cancel_notices) counts the notices
    /// written (those the sink took). Order mode sends none: there, a reply is matched
    /// by its place, so the server must answer every call anyway.
    ///
    /// ```
    /// use socketchannel::{Protocol, Sessions};
    ///
    /// enum Op { Call(Vec<u8>), Cancel }
    /// struct Msg { id: u32, op: Op }
    /// struct Rpc;
    ///
    /// impl Protocol<Msg, Msg> for Rpc {}
    /// impl Sessions<Msg, Msg> for Rpc {
    ///     type Id = u32;
    ///     fn stamp(&self, req: &mut Msg, id: u32) { req.id = id }
    ///     fn session(&self, resp: &Msg) -> Option<u32> { Some(resp.id) }
    ///     fn cancels(&self) -> bool { true }
    ///     fn cancel(&self, id: u32) -> Option<Msg> {
    ///         Some(Msg { id, op: Op::Cancel })
    ///     }
    /// }
    /// ```
    fn cancel(&self, _id: Self::Id) -> Option<Req> {
        None
    }
}

/// An integer type that can be a session id.
pub trait SessionId: Copy + Send + Sync + 'static {
    /// The largest id.
    const MAX: u64;
    /// Converts from the engine's representation; only called with values `<= MAX`.
    fn from_u64(id: u64) -> Self;
    /// Converts to the engine's representation.
    fn into_u64(self) -> u64;
}

macro_rules! session_id {
    ($($t:ty),*) => {$(
        impl SessionId for $t {
            const MAX: u64 = <$t>::MAX as u64;
            fn from_u64(id: u64) -> Self {
                id as $t
            }
            fn into_u64(self) -> u64 {
                self as u64
            }
        }
    )*};
}

session_id!(u8, u16, u32, u64);
