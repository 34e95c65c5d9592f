//! The shapes a call can take beyond "one request, one reply".

use crate::mux::{Frames, Until};
use crate::protocol::SessionId;

/// A call with options: a multi-part request, a read without a request, a caller-supplied
/// session id, an exemption from the stall timeout.
///
/// Every [`Channel`](crate::Channel) method that takes a request takes a `Call` too.
///
/// ```
/// use socketchannel::Call;
///
/// let blocking = Call::new("BLPOP jobs 0").no_stall_timeout();
/// let greeting: Call<&str> = Call::read();
/// let split = Call::parts(vec!["part 1", "part 2"]);
/// let mine = Call::new("ping").id(7u16);
/// ```
#[derive(Debug)]
pub struct Call<Req> {
    pub(crate) frames: Frames<Req>,
    pub(crate) id: Option<u64>,
    pub(crate) exempt: bool,
}

impl<Req> Call<Req> {
    fn of(frames: Frames<Req>) -> Self {
        Call {
            frames,
            id: None,
            exempt: false,
        }
    }

    /// A call that writes one frame.
    pub fn new(req: Req) -> Self {
        Call::of(Frames::One(req))
    }

    /// A call that writes several frames back to back; no other call's frame comes
    /// between them. Its reply is matched as one. If it fails unsent,
    /// [`Error::take_request`](crate::Error::take_request) gives back the `Vec<Req>`.
    pub fn parts(parts: Vec<Req>) -> Self {
        Call::of(Frames::Many(parts))
    }

    /// A call that writes nothing and waits for the next reply (a server greeting, a
    /// message a subscription brings).
    ///
    /// In order mode it takes the next FIFO slot, as a request would. In session mode it
    /// takes the next frame that carries no session id.
    pub fn read() -> Self {
        Call::of(Frames::None)
    }

    /// Session mode: use this session id instead of one the channel allocates. The call
    /// fails with [`Kind::IdInUse`](crate::Kind::IdInUse) if a call with this id is still
    /// waiting, and with [`Kind::Unsupported`](crate::Kind::Unsupported) in order mode.
    pub fn id(mut self, id: impl SessionId) -> Self {
        self.id = Some(id.into_u64());
        self
    }

    /// Exempts the call from the stall timeout (a blocking command such as `BLPOP`).
    pub fn no_stall_timeout(mut self) -> Self {
        self.exempt = true;
        self
    }
}

/// Anything a call can be made from: a request, or a [`Call`].
pub trait IntoCall<Req> {
    /// Makes the call.
    fn into_call(self) -> Call<Req>;
}

impl<Req> IntoCall<Req> for Req {
    fn into_call(self) -> Call<Req> {
        Call::new(self)
    }
}

impl<Req> IntoCall<Req> for Call<Req> {
    fn into_call(self) -> Call<Req> {
        self
    }
}

/// How many frames make a reply, for [`Channel::stream`](crate::Channel::stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replies {
    /// Exactly this many.
    Count(usize),
    /// Frames until one that [`Protocol::is_final`](crate::Protocol::is_final) marks.
    UntilFinal,
}

impl From<Replies> for Until {
    fn from(r: Replies) -> Until {
        match r {
            Replies::Count(n) => Until::Count(n),
            Replies::UntilFinal => Until::Final,
        }
    }
}
