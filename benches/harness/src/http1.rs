//! Just enough HTTP/1.1 for the end-to-end benchmarks: a keep-alive client that replays one
//! raw request and reads `content-length` responses (the load generator's `--http` mode), and
//! an upstream that answers every request `200 ok` (`nullserver --http-listen`), so the
//! upstream's own cost stays small and the same in every run.
use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Read one message (head and a `content-length` body) off `stream`; bytes past it stay in
/// `buf` for the next one. Returns the head. Chunked bodies are refused (nothing here sends them).
async fn read_message(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<String> {
    let mut chunk = [0u8; 16 * 1024];
    let end = loop {
        if let Some(end) = head_end(buf) {
            break end;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..end].to_vec()).map_err(|_| bad("non-UTF-8 head"))?;
    if header(&head, "transfer-encoding").is_some() {
        return Err(bad("chunked message"));
    }
    let len: usize = match header(&head, "content-length") {
        Some(v) => v.parse().map_err(|_| bad("bad content-length"))?,
        None => 0,
    };
    while buf.len() < end + len {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.drain(..end + len);
    Ok(head)
}

/// A keep-alive connection that sends one prepared request again and again.
pub struct Conn {
    addr: String,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Conn {
    /// A connection to `addr` (host:port), opened on first use.
    pub fn new(addr: &str) -> Conn {
        Conn { addr: addr.to_string(), stream: None, buf: Vec::new() }
    }

    /// Send `request` (raw bytes, HTTP/1.1 with `content-length`) and read the response;
    /// returns its status code. After an error or `connection: close`, the next call
    /// reconnects.
    pub async fn roundtrip(&mut self, request: &[u8]) -> io::Result<u16> {
        if self.stream.is_none() {
            let s = TcpStream::connect(&self.addr).await?;
            s.set_nodelay(true)?;
            self.stream = Some(s);
            self.buf.clear();
        }
        let result = async {
            let s = self.stream.as_mut().ok_or_else(|| bad("not connected"))?;
            s.write_all(request).await?;
            let head = read_message(s, &mut self.buf).await?;
            let status = head.get(9..12).and_then(|c| c.parse::<u16>().ok()).ok_or_else(|| bad("bad status line"))?;
            Ok::<_, io::Error>((status, header(&head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))))
        }
        .await;
        match result {
            Ok((status, close)) => {
                if close {
                    self.stream = None;
                }
                Ok(status)
            }
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
    }
}

/// Answer every request on `addr` with `200 ok` (keep-alive), forever.
pub async fn serve_ok(addr: &str) -> io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    loop {
        let (mut s, _) = listener.accept().await?;
        s.set_nodelay(true)?;
        tokio::spawn(async move {
            let mut buf = Vec::new();
            while read_message(&mut s, &mut buf).await.is_ok() {
                if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
    }
}
