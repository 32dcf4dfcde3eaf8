//! `client_ip`: whose connection this is, when proxies stand in front of the pods
//! (README, "Behind proxies"). Only a peer in `spec.network.trustedProxies` is believed
//! about who it forwards for; the client is the rightmost hop that is not a trusted
//! proxy, so a client cannot pass itself off as someone else by sending the header
//! itself: the proxies append to it, and the walk stops at the first hop they did not
//! vouch for.

use std::net::{IpAddr, SocketAddr};

use hyper::HeaderMap;
use ipnet::IpNet;

/// The client's address: `peer` itself unless `peer` is trusted, else the rightmost
/// untrusted hop of `Forwarded` (RFC 7239; when present) or `X-Forwarded-For`. A hop
/// that cannot be read (`unknown`, an obfuscated name, garbage) ends the walk at the
/// last address known.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let mut client = peer;
    for hop in hops(headers).into_iter().rev() {
        let Some(ip) = hop else {
            return client;
        };
        client = ip;
        if !is_trusted(ip, trusted) {
            return ip;
        }
    }
    client
}

pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip.to_canonical()))
}

/// Every hop the headers list, left (the original client) to right (the last proxy).
fn hops(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let forwarded: Vec<&str> = headers
        .get_all("forwarded")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if !forwarded.is_empty() {
        return forwarded
            .iter()
            .flat_map(|line| line.split(','))
            .map(|element| {
                element.split(';').find_map(|pair| {
                    let (key, value) = pair.split_once('=')?;
                    key.trim()
                        .eq_ignore_ascii_case("for")
                        .then(|| parse_node(value.trim().trim_matches('"')))
                })?
            })
            .collect();
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|line| line.split(','))
        .map(|hop| parse_node(hop.trim()))
        .collect()
}

/// `192.0.2.1`, `192.0.2.1:80`, `2001:db8::1`, `[2001:db8::1]:80`, `[2001:db8::1]`.
fn parse_node(text: &str) -> Option<IpAddr> {
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            text.strip_prefix('[')
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse().ok())
        })
        .map(|ip: IpAddr| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_client_is_the_rightmost_hop_no_trusted_proxy_vouches_for() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let xff = headers(&[("x-forwarded-for", "203.0.113.9, 198.51.100.4, 10.1.2.3")]);
        // The ingress (10.9.9.9) forwards; 10.1.2.3 is another trusted hop; 198.51.100.4
        // is the first that no trusted proxy is: everything left of it is its claim.
        assert_eq!(
            client_ip(ip("10.9.9.9"), &xff, &trusted),
            ip("198.51.100.4")
        );
        // From an untrusted peer the header is ignored.
        assert_eq!(
            client_ip(ip("192.0.2.50"), &xff, &trusted),
            ip("192.0.2.50")
        );
        // Several header lines are one list, in order.
        let split = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "10.1.2.3"),
        ]);
        assert_eq!(
            client_ip(ip("10.9.9.9"), &split, &trusted),
            ip("203.0.113.9")
        );
        // Only trusted hops: the leftmost is the best that is known.
        let inside = headers(&[("x-forwarded-for", "10.0.0.1, 10.0.0.2")]);
        assert_eq!(client_ip(ip("10.9.9.9"), &inside, &trusted), ip("10.0.0.1"));
        // No header: the proxy itself.
        assert_eq!(
            client_ip(ip("10.9.9.9"), &HeaderMap::new(), &trusted),
            ip("10.9.9.9")
        );
    }

    #[test]
    fn forwarded_is_read_before_x_forwarded_for_and_unreadable_hops_stop_the_walk() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()];
        let h = headers(&[
            (
                "forwarded",
                r#"for=192.0.2.60;proto=https, for="[2001:db8::17]:4711";by=10.0.0.1"#,
            ),
            ("x-forwarded-for", "203.0.113.1"),
        ]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("2001:db8::17"));
        let hidden = headers(&[("forwarded", "for=192.0.2.60, for=_hidden, for=10.0.0.5")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &hidden, &trusted), ip("10.0.0.5"));
        // An IPv4 peer seen as IPv6-mapped is the same address.
        let mapped = headers(&[("x-forwarded-for", "192.0.2.1")]);
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.1"), &mapped, &trusted),
            ip("192.0.2.1")
        );
    }
}
