//! A small synchronous HTTP/1.1 server for metrics, health and the
//! dashboard: OS threads and blocking sockets, no async runtime.
//!
//! It is deliberately narrow: one request per connection (`Connection:
//! close`), bounded request sizes, read and write timeouts, and a fixed
//! pool of threads fed by a bounded channel, so a slow or hostile client
//! can hold at most one thread for a few seconds and a flood is turned away
//! with `503` instead of spawning threads.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Longest request line plus headers.
const MAX_HEAD: usize = 16 * 1024;
/// Longest request body (forms are small).
const MAX_BODY: usize = 64 * 1024;
/// How long a client may take to send its request or read the response.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections waiting for a thread before new ones get `503`.
const BACKLOG: usize = 64;

/// A parsed request.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path, percent-decoded, without the query string.
    pub path: String,
    /// Query string pairs, decoded.
    pub query: Vec<(String, String)>,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Request {
    /// A header's value (name in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A query parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        value_of(&self.query, name)
    }

    /// The body as `application/x-www-form-urlencoded` pairs.
    pub fn form(&self) -> Vec<(String, String)> {
        parse_pairs(&String::from_utf8_lossy(&self.body))
    }

    /// A cookie's value.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n == "cookie")
            .flat_map(|(_, v)| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.to_string())
    }
}

/// A response to send.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Extra headers (Content-Type, Location, Set-Cookie, …).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with a body of the given content type.
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: body.into(),
        }
    }

    /// Plain text.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response::new(status, "text/plain; charset=utf-8", body.into())
    }

    /// JSON.
    pub fn json(status: u16, value: &impl serde::Serialize) -> Response {
        Response::new(
            status,
            "application/json",
            serde_json::to_vec_pretty(value).unwrap_or_default(),
        )
    }

    /// HTML.
    pub fn html(status: u16, body: impl Into<String>) -> Response {
        Response::new(status, "text/html; charset=utf-8", body.into())
    }

    /// A `303 See Other` to `location` (after a form POST).
    pub fn redirect(location: &str) -> Response {
        let mut response = Response::text(303, "");
        response.headers.push(("Location".into(), location.into()));
        response
    }

    /// Adds a header.
    #[must_use]
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// What serves requests; runs on several threads at once.
pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// Binds `addr` now (so a taken port is an error at start-up, not later)
/// and serves it with `threads` threads for the life of the process.
pub fn serve(addr: &str, threads: usize, handler: Handler) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind(addr).map_err(|e| {
        format!("cannot listen on {addr}: {e} (choose another HOST:PORT, or free that one)")
    })?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let (tx, rx) = crossbeam_channel::bounded::<TcpStream>(BACKLOG);
    for index in 0..threads.max(1) {
        let rx = rx.clone();
        let handler = Arc::clone(&handler);
        let _: JoinHandle<()> = std::thread::Builder::new()
            .name(format!("mongoq-http-{index}"))
            .spawn(move || {
                for stream in rx {
                    handle_connection(stream, &handler);
                }
            })
            .map_err(|e| format!("cannot start an HTTP thread: {e}"))?;
    }
    std::thread::Builder::new()
        .name("mongoq-http-accept".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if let Err(crossbeam_channel::TrySendError::Full(mut stream)) = tx.try_send(stream)
                {
                    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
                    let _ = write_response(
                        &mut stream,
                        &Response::text(503, "busy: too many connections, try again\n"),
                        false,
                    );
                }
            }
        })
        .map_err(|e| format!("cannot start the HTTP accept thread: {e}"))?;
    Ok(local)
}

fn handle_connection(mut stream: TcpStream, handler: &Handler) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let (response, head_only) = match read_request(&mut stream) {
        Ok(request) => {
            let caught =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(&request)));
            (
                caught.unwrap_or_else(|_| Response::text(500, "internal error\n")),
                request.method == "HEAD",
            )
        }
        Err(status) => (
            Response::text(status, format!("bad request ({status})\n")),
            false,
        ),
    };
    let _ = write_response(&mut stream, &response, head_only);
}

/// Reads one request; an error is the status to answer with.
fn read_request(stream: &mut TcpStream) -> Result<Request, u16> {
    let mut reader = BufReader::new(stream.take((MAX_HEAD + MAX_BODY) as u64));
    let mut head_bytes = 0;
    let mut line = String::new();
    let mut read_line = |reader: &mut BufReader<_>, line: &mut String| -> Result<(), u16> {
        line.clear();
        let n = reader.read_line(line).map_err(|_| 400u16)?;
        head_bytes += n;
        if n == 0 || head_bytes > MAX_HEAD {
            return Err(if n == 0 { 400 } else { 431 });
        }
        Ok(())
    };
    read_line(&mut reader, &mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().ok_or(400u16)?.to_string();
    let target = parts.next().ok_or(400u16)?.to_string();
    let mut headers = Vec::new();
    loop {
        read_line(&mut reader, &mut line)?;
        let trimmed = line.trim_end_matches(['\r', '\n']);
        if trimmed.is_empty() {
            break;
        }
        let (name, value) = trimmed.split_once(':').ok_or(400u16)?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(Ok(0), |(_, v)| v.parse::<usize>().map_err(|_| 400u16))?;
    if length > MAX_BODY {
        return Err(413);
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).map_err(|_| 400u16)?;
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    Ok(Request {
        method,
        path: percent_decode(path),
        query: parse_pairs(query),
        headers,
        body,
    })
}

/// Writes the response; for a HEAD request, only its head.
fn write_response(
    stream: &mut TcpStream,
    response: &Response,
    head_only: bool,
) -> std::io::Result<()> {
    let reason = match response.status {
        200 => "OK",
        303 => "See Other",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    };
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n",
        response.status,
        response.body.len()
    );
    for (name, value) in &response.headers {
        // Header values are ours, but never let one end the head early.
        let value: String = value.chars().filter(|c| *c != '\r' && *c != '\n').collect();
        let _ = write!(head, "{name}: {value}\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if !head_only {
        stream.write_all(&response.body)?;
    }
    stream.flush()
}

/// The value of the first pair called `name`.
pub fn value_of<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// `a=1&b=x%20y` → pairs, decoded (`+` is a space).
pub fn parse_pairs(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (
                percent_decode(&name.replace('+', " ")),
                percent_decode(&value.replace('+', " ")),
            )
        })
        .collect()
}

/// Decodes `%XX` escapes; invalid ones are kept as they are.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' && index + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(high), Some(low)) = (hex(bytes[index + 1]), hex(bytes[index + 2])) {
                out.push((high * 16 + low) as u8);
                index += 3;
                continue;
            }
        }
        out.push(bytes[index]);
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Encodes a query-string value.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_and_queries_decode() {
        assert_eq!(
            parse_pairs("a=1&b=x+y%21&c"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y!".into()),
                ("c".into(), String::new())
            ]
        );
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%é1"), "%é1");
        assert_eq!(percent_decode(&percent_encode("é <x>&")), "é <x>&");
    }
}
