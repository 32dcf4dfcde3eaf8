//! The PROXY protocol (v1 text and v2 binary, as HAProxy specifies it), which cloud
//! load balancers put before a connection's first byte to say whose connection it is
//! (`spec.network.proxyProtocol`; README, "Behind proxies"). With it on, every
//! connection must start with a header; one that does not is closed before HTTP.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The v2 signature.
const V2: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 header is at most this long, CRLF included.
const V1_MAX: usize = 107;
/// The longest header read: v2's fixed part plus the longest address block it allows
/// here (Unix sockets, 216 bytes), and TLVs within reason.
const MAX: usize = 16 + 536;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no PROXY protocol header")]
    Missing,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    #[error("the PROXY protocol header did not arrive in time")]
    Timeout,
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads and consumes the header: the source it names, or `None` for a header that
/// names none (v2 `LOCAL`, a health check; v1 `UNKNOWN`).
pub async fn read_header(
    stream: &mut TcpStream,
    within: Duration,
) -> Result<Option<SocketAddr>, ProxyError> {
    let mut buf = [0u8; MAX];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf))
            .await
            .map_err(|_| ProxyError::Timeout)??;
        if n == 0 {
            return Err(ProxyError::Missing);
        }
        match parse(&buf[..n])? {
            Some((length, source)) => {
                let mut consumed = vec![0u8; length];
                stream.read_exact(&mut consumed).await?;
                return Ok(source);
            }
            // Not all of it yet: wait for more bytes.
            None => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// `Some((header length, source))` once `bytes` hold a whole header, `None` while
/// they may still become one.
fn parse(bytes: &[u8]) -> Result<Option<(usize, Option<SocketAddr>)>, ProxyError> {
    if bytes.len() < V2.len() {
        let could_be = V2.starts_with(bytes) || b"PROXY ".starts_with(&bytes[..bytes.len().min(6)]);
        return if could_be {
            Ok(None)
        } else {
            Err(ProxyError::Missing)
        };
    }
    if bytes.starts_with(V2) {
        return parse_v2(bytes);
    }
    if bytes.starts_with(b"PROXY ") {
        return parse_v1(bytes);
    }
    Err(ProxyError::Missing)
}

fn parse_v1(bytes: &[u8]) -> Result<Option<(usize, Option<SocketAddr>)>, ProxyError> {
    let Some(end) = bytes.windows(2).position(|w| w == b"\r\n") else {
        return if bytes.len() >= V1_MAX {
            Err(ProxyError::Malformed(
                "v1 header without CRLF within 107 bytes",
            ))
        } else {
            Ok(None)
        };
    };
    let line = std::str::from_utf8(&bytes[..end])
        .map_err(|_| ProxyError::Malformed("v1 header is not ASCII"))?;
    let fields: Vec<&str> = line.split(' ').collect();
    let source = match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => None,
        [
            "PROXY",
            family @ ("TCP4" | "TCP6"),
            src,
            _dst,
            sport,
            _dport,
        ] => {
            let ip: IpAddr = src
                .parse()
                .map_err(|_| ProxyError::Malformed("v1 source address"))?;
            if ip.is_ipv4() != (*family == "TCP4") {
                return Err(ProxyError::Malformed("v1 address of the wrong family"));
            }
            let port: u16 = sport
                .parse()
                .map_err(|_| ProxyError::Malformed("v1 source port"))?;
            Some(SocketAddr::new(ip, port))
        }
        _ => return Err(ProxyError::Malformed("v1 header fields")),
    };
    Ok(Some((end + 2, source)))
}

fn parse_v2(bytes: &[u8]) -> Result<Option<(usize, Option<SocketAddr>)>, ProxyError> {
    if bytes.len() < 16 {
        return Ok(None);
    }
    let (version, command) = (bytes[12] >> 4, bytes[12] & 0x0f);
    if version != 2 {
        return Err(ProxyError::Malformed("v2 version"));
    }
    let length = 16 + usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    if length > MAX {
        return Err(ProxyError::Malformed("v2 header too long"));
    }
    if bytes.len() < length {
        return Ok(None);
    }
    let body = &bytes[16..length];
    let source = match (command, bytes[13]) {
        // LOCAL: the balancer's own connection (a health check).
        (0, _) => None,
        // PROXY over TCP/IPv4, TCP/IPv6.
        (1, 0x11) if body.len() >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([body[8], body[9]]),
            ))
        }
        (1, 0x21) if body.len() >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            let ip = Ipv6Addr::from(octets);
            Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([body[32], body[33]]),
            ))
        }
        // Another family (UNSPEC, Unix) names no IP source.
        (1, _) => None,
        _ => return Err(ProxyError::Malformed("v2 command")),
    };
    Ok(Some((length, source)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_headers_name_their_source() {
        let v1 = b"PROXY TCP4 203.0.113.5 10.0.0.1 51000 8080\r\nGET / HTTP/1.1\r\n";
        let (len, src) = parse(v1).unwrap().unwrap();
        assert_eq!((len, src), (44, Some("203.0.113.5:51000".parse().unwrap())));
        let unknown = b"PROXY UNKNOWN\r\n";
        assert_eq!(parse(unknown).unwrap(), Some((15, None)));
        let mut v2 = V2.to_vec();
        v2.extend_from_slice(&[
            0x21, 0x11, 0, 12, 198, 51, 100, 7, 10, 0, 0, 1, 0xC3, 0x50, 0x1F, 0x90,
        ]);
        assert_eq!(
            parse(&v2).unwrap(),
            Some((28, Some("198.51.100.7:50000".parse().unwrap())))
        );
        // Partial headers wait; anything else is refused.
        assert_eq!(parse(&v2[..20]).unwrap(), None);
        assert_eq!(parse(b"PROXY TCP4 1.2").unwrap(), None);
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\n"),
            Err(ProxyError::Missing)
        ));
        assert!(parse(b"PROXY TCP4 ::1 ::1 1 2\r\n").is_err());
    }
}
