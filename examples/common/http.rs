//! A minimal HTTP/1.1 client over a `TcpStream`, one request per connection, so neither
//! the axum gateway example nor its test needs an HTTP client crate.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One HTTP/1.1 request on its own connection (`Connection: close`); returns the status
/// code and the body. Enough for a server that sends `Content-Length` bodies, as axum
/// does for the gateway's handlers.
///
/// # Errors
///
/// I/O errors, and a response this little client does not parse.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> io::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr).await?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;

    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| bad("headers not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let mut body = raw[split + 4..].to_vec();
    for line in lines {
        let (name, value) = line.split_once(':').ok_or_else(|| bad("bad header"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(bad("chunked bodies are not supported by this client"));
        }
        if name.eq_ignore_ascii_case("content-length") {
            let len: usize = value.parse().map_err(|_| bad("bad content-length"))?;
            if body.len() < len {
                return Err(bad("body shorter than content-length"));
            }
            body.truncate(len);
        }
    }
    Ok((status, body))
}
