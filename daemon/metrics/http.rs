//! A minimal HTTP/1.1 responder for one connection: reads one request
//! head (at most [`MAX_REQUEST_BYTES`]), answers `GET /metrics` (and
//! `HEAD`) with the exposition, anything else with an error status, and
//! closes the connection (reading and dropping what the client still
//! sends, up to a bound, so that it is not reset). Request bodies are not
//! parsed; the caller bounds
//! the whole exchange with a timeout. Written by hand because a scrape
//! needs nothing more, and an HTTP stack would add a dozen crates to the
//! daemon for one GET.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::exposition::CONTENT_TYPE;

/// The largest request head read (request line and headers).
pub const MAX_REQUEST_BYTES: usize = 8192;

/// What is read and dropped after the answer, so that the client gets
/// the answer rather than a reset for bytes it sent that were not read.
const MAX_DISCARDED_BYTES: usize = 64 * 1024;

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    /// `GET /metrics`, or `HEAD` (headers only).
    Metrics { head_only: bool },
    /// An answer with this status line and no body.
    Refuse(&'static str),
}

/// Serves one connection; `render` makes the exposition.
pub async fn serve<S>(mut stream: S, render: impl FnOnce() -> String) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = match read_head(&mut stream).await? {
        Some(head) => parse(&head),
        None => Request::Refuse("431 Request Header Fields Too Large"),
    };
    let response = match request {
        Request::Metrics { head_only } => {
            let body = render();
            let mut response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            if !head_only {
                response.push_str(&body);
            }
            response
        }
        Request::Refuse(status) => {
            let allow = if status.starts_with("405") {
                "Allow: GET, HEAD\r\n"
            } else {
                ""
            };
            format!("HTTP/1.1 {status}\r\n{allow}Content-Length: 0\r\nConnection: close\r\n\r\n")
        }
    };
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await?;
    discard_rest(&mut stream).await
}

/// Reads what the client still sends until it closes, at most
/// [`MAX_DISCARDED_BYTES`] (the caller's timeout bounds the wait).
async fn discard_rest<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<()> {
    let mut chunk = [0u8; 1024];
    let mut discarded = 0;
    while discarded < MAX_DISCARDED_BYTES {
        match stream.read(&mut chunk).await? {
            0 => break,
            n => discarded += n,
        }
    }
    Ok(())
}

/// Reads up to the blank line that ends the head; `None` if it is longer
/// than [`MAX_REQUEST_BYTES`] (or the client stopped before it).
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = find_end(&head) {
            head.truncate(end);
            return Ok(Some(head));
        }
        if head.len() >= MAX_REQUEST_BYTES {
            return Ok(None);
        }
        let room = (MAX_REQUEST_BYTES - head.len()).min(chunk.len());
        let n = stream.read(&mut chunk[..room]).await?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&chunk[..n]);
    }
}

/// Where the head ends (`\r\n\r\n`, or `\n\n` from a lenient client).
fn find_end(bytes: &[u8]) -> Option<usize> {
    let crlf = bytes.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = bytes.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn parse(head: &[u8]) -> Request {
    let Ok(head) = std::str::from_utf8(head) else {
        return Request::Refuse("400 Bad Request");
    };
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::Refuse("400 Bad Request");
    };
    if !version.starts_with("HTTP/1.") {
        return Request::Refuse("505 HTTP Version Not Supported");
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Request::Refuse("405 Method Not Allowed"),
    };
    let path = target.split('?').next().unwrap_or("");
    if path != "/metrics" {
        return Request::Refuse("404 Not Found");
    }
    Request::Metrics { head_only }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_a_scraper_sends_and_refuses_the_rest() {
        let scrape = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/plain";
        assert_eq!(parse(scrape), Request::Metrics { head_only: false });
        assert_eq!(
            parse(b"HEAD /metrics?x=1 HTTP/1.0"),
            Request::Metrics { head_only: true }
        );
        assert_eq!(parse(b"GET / HTTP/1.1"), Request::Refuse("404 Not Found"));
        assert_eq!(
            parse(b"POST /metrics HTTP/1.1"),
            Request::Refuse("405 Method Not Allowed")
        );
        assert_eq!(parse(b"GET /metrics"), Request::Refuse("400 Bad Request"));
        assert_eq!(parse(b"\xff\xfe"), Request::Refuse("400 Bad Request"));
        assert_eq!(
            parse(b"GET /metrics SPDY/3"),
            Request::Refuse("505 HTTP Version Not Supported")
        );
    }

    #[tokio::test]
    async fn answers_one_request_and_bounds_the_head() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        client
            .write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        client.shutdown().await.unwrap();
        serve(server, || "x 1\n".to_string()).await.unwrap();
        let mut reply = String::new();
        client.read_to_string(&mut reply).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(reply.ends_with("Content-Length: 4\r\nConnection: close\r\n\r\nx 1\n"));

        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let long = format!(
            "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_REQUEST_BYTES)
        );
        client.write_all(long.as_bytes()).await.unwrap();
        client.shutdown().await.unwrap();
        serve(server, || unreachable!("not rendered"))
            .await
            .unwrap();
        let mut reply = String::new();
        client.read_to_string(&mut reply).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 431 "), "{reply}");
    }
}
