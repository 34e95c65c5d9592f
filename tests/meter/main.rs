//! The reviews of the byte-counting IO (`src/meter.rs`) and of the TLS stack over it, in
//! one test target: `review_session6`, `tls_partial`, `review_meter2`, `review_meter3`,
//! over the rig they share (`rig`).

/// `AsyncRead` for a test IO wrapper: its field `io`'s, as it is.
macro_rules! read_through {
    ($name:ident<$io:ident>) => {
        impl<$io: ::tokio::io::AsyncRead + Unpin> ::tokio::io::AsyncRead for $name<$io> {
            read_through!(@poll_read);
        }
    };
    ($name:ident) => {
        impl ::tokio::io::AsyncRead for $name {
            read_through!(@poll_read);
        }
    };
    (@poll_read) => {
        fn poll_read(
            mut self: ::std::pin::Pin<&mut Self>,
            cx: &mut ::std::task::Context<'_>,
            buf: &mut ::tokio::io::ReadBuf<'_>,
        ) -> ::std::task::Poll<::std::io::Result<()>> {
            ::std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
        }
    };
}

#[allow(dead_code)]
#[path = "../../examples/common/tls.rs"]
mod ca;

#[path = "../support/mod.rs"]
mod support;

mod rig;

mod review_meter2;
mod review_meter3;
mod review_session6;
mod tls_partial;
