//! A small blocking HTTP/1.1 client over a Unix socket, for `ferry ctl` and tests.
//!
//! One request per connection (`Connection: close`). The request line is written by hand; the
//! response is parsed with `httparse`, bounded in size and time.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest response accepted.
const MAX_RESPONSE_BYTES: usize = 16 << 20;
/// Most response headers parsed.
const MAX_HEADERS: usize = 32;

/// Why a request got no HTTP response.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {0}: {1}")]
    Connect(PathBuf, #[source] std::io::Error),
    #[error("talking to the ferry API: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed HTTP response: {0}")]
    Malformed(String),
}

/// A response: status and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub content_type: Option<String>,
    /// All headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`null` when empty).
    pub fn json(&self) -> Result<serde_json::Value, ClientError> {
        if self.body.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| ClientError::Malformed(format!("JSON body: {e}")))
    }

    /// The server's `fault_message`, or the raw body when there is none.
    pub fn fault_message(&self) -> String {
        self.json()
            .ok()
            .and_then(|v| {
                v.get("fault_message")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).into_owned())
    }
}

/// A client of one API socket.
#[derive(Clone, Debug)]
pub struct ApiClient {
    socket: PathBuf,
    timeout: Duration,
}

impl ApiClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            timeout: Duration::from_secs(60),
        }
    }

    /// Sets the read/write timeout of each request.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends `method path` with an optional JSON body and returns the response, whatever its
    /// status.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<HttpResponse, ClientError> {
        let body = match body {
            Some(value) => {
                serde_json::to_vec(value).map_err(|e| ClientError::Malformed(e.to_string()))?
            }
            None => Vec::new(),
        };
        self.raw(method, path, &body)
    }

    /// Sends raw body bytes (tests use it for invalid JSON).
    pub fn raw(&self, method: &str, path: &str, body: &[u8]) -> Result<HttpResponse, ClientError> {
        let mut stream = UnixStream::connect(&self.socket)
            .map_err(|e| ClientError::Connect(self.socket.clone(), e))?;
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nConnection: close\r\n"
        );
        if !body.is_empty() || matches!(method, "PUT" | "PATCH" | "POST") {
            request.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body);
        stream.write_all(&bytes)?;
        read_response(&mut stream)
    }
}

/// Reads one response: headers parsed by httparse, body by Content-Length, chunked coding or EOF.
pub fn read_response(stream: &mut impl Read) -> Result<HttpResponse, ClientError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 8192];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut headers);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let status = parsed
                    .code
                    .ok_or_else(|| ClientError::Malformed("no status".into()))?;
                let header = |name: &str| {
                    parsed
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
                };
                let content_type = header("content-type");
                let headers = parsed
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).trim().to_string(),
                        )
                    })
                    .collect();
                let length = header("content-length");
                let chunked =
                    header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
                let mut body = buf.split_off(head_len);
                let body = if status == 204 || status == 304 || (100..200).contains(&status) {
                    Vec::new()
                } else if let Some(length) = length {
                    let length: usize = length
                        .parse()
                        .ok()
                        .filter(|l| *l <= MAX_RESPONSE_BYTES)
                        .ok_or_else(|| {
                            ClientError::Malformed(format!("content-length {length:?}"))
                        })?;
                    while body.len() < length {
                        let n = stream.read(&mut chunk)?;
                        if n == 0 {
                            return Err(ClientError::Malformed(
                                "body shorter than content-length".into(),
                            ));
                        }
                        body.extend_from_slice(&chunk[..n]);
                    }
                    body.truncate(length);
                    body
                } else {
                    read_to_end_bounded(stream, &mut body)?;
                    if chunked {
                        dechunk(&body)?
                    } else {
                        body
                    }
                };
                return Ok(HttpResponse {
                    status,
                    content_type,
                    headers,
                    body,
                });
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(ClientError::Malformed(e.to_string())),
        }
        if buf.len() > 64 * 1024 {
            return Err(ClientError::Malformed("response headers too large".into()));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(ClientError::Malformed(
                "connection closed before a complete response".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn read_to_end_bounded(stream: &mut impl Read, body: &mut Vec<u8>) -> Result<(), ClientError> {
    stream
        .take((MAX_RESPONSE_BYTES + 1 - body.len().min(MAX_RESPONSE_BYTES)) as u64)
        .read_to_end(body)?;
    if body.len() > MAX_RESPONSE_BYTES {
        return Err(ClientError::Malformed("response too large".into()));
    }
    Ok(())
}

/// Decodes a complete chunked body.
fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, ClientError> {
    let mut out = Vec::new();
    loop {
        let (used, size) = match httparse::parse_chunk_size(data) {
            Ok(httparse::Status::Complete(v)) => v,
            _ => return Err(ClientError::Malformed("bad chunk".into())),
        };
        let size =
            usize::try_from(size).map_err(|_| ClientError::Malformed("chunk too large".into()))?;
        if size == 0 {
            return Ok(out);
        }
        let rest = &data[used..];
        if rest.len() < size + 2 {
            return Err(ClientError::Malformed("truncated chunk".into()));
        }
        out.extend_from_slice(&rest[..size]);
        data = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_length_chunked_and_eof_bodies() {
        let r = read_response(&mut &b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}extra"[..]).expect("len");
        assert_eq!(
            (r.status, r.body.as_slice(), r.content_type.as_deref()),
            (200, &b"{}"[..], Some("application/json"))
        );
        let r = read_response(&mut &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"[..]).expect("chunked");
        assert_eq!(r.body, b"abcde");
        let r = read_response(&mut &b"HTTP/1.1 204 No Content\r\n\r\n"[..]).expect("204");
        assert_eq!((r.status, r.body.len()), (204, 0));
        let r = read_response(&mut &b"HTTP/1.0 400 Bad\r\n\r\n{\"fault_message\":\"no\"}"[..])
            .expect("eof");
        assert_eq!(r.fault_message(), "no");
    }

    #[test]
    fn rejects_broken_responses() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab"[..],
            b"garbage\r\n\r\n",
            b"HTTP/1.1 200",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ] {
            assert!(
                read_response(&mut &bad[..]).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
