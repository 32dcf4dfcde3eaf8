//! `OutageLog`: how a NATS outage shows in the logs. The client retries every 100 ms
//! growing to 2 s, and reports each failed attempt; a line per attempt would bury
//! everything else. So: one warning when the outage starts (the URL, and the cause a
//! direct TCP probe gives, since the client's own error says only "IO error"), then
//! lines at the 2nd, 4th, 8th, … failure with the count so far, and one line when the
//! connection is back.

use std::time::Duration;

use tokio::net::TcpStream;

/// Counts failed connection attempts and says when one is worth a line.
#[derive(Debug, Default)]
pub struct OutageLog {
    failures: u64,
}

impl OutageLog {
    /// A connection attempt failed. Returns the failures so far when this one should be
    /// logged: the 1st, 2nd, 4th, 8th, …
    pub fn failed(&mut self) -> Option<u64> {
        self.failures += 1;
        self.failures.is_power_of_two().then_some(self.failures)
    }

    /// Connected. Returns how many attempts had failed, if any (the outage that ended).
    pub fn connected(&mut self) -> Option<u64> {
        let failures = std::mem::take(&mut self.failures);
        (failures > 0).then_some(failures)
    }
}

/// The `host:port` of the first server in a NATS URL list (`nats://user:pw@host:4222,…`).
pub fn first_address(urls: &str) -> String {
    let first = urls.split(',').next().unwrap_or_default().trim();
    let rest = first.split_once("://").map_or(first, |(_, r)| r);
    let host_port = rest.split('/').next().unwrap_or_default();
    let host_port = host_port.rsplit_once('@').map_or(host_port, |(_, h)| h);
    let has_port = match host_port.rsplit_once(':') {
        // `[::1]` alone has colons but no port.
        Some((host, port)) => {
            !host.is_empty() && !port.contains(']') && port.parse::<u16>().is_ok()
        }
        None => false,
    };
    if has_port {
        host_port.to_owned()
    } else {
        format!("{host_port}:4222")
    }
}

/// Why `address` cannot be reached, as the operating system says it: "Connection
/// refused", a DNS failure, a timeout. `None` when TCP connects (so the trouble is in
/// the NATS handshake: TLS, credentials, or not a NATS server).
pub async fn probe(address: &str) -> Option<String> {
    match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(address)).await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("no answer within 2 s".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_logged_at_its_start_then_ever_less_often_then_at_its_end() {
        let mut log = OutageLog::default();
        let logged: Vec<u64> = (0..40).filter_map(|_| log.failed()).collect();
        assert_eq!(logged, [1, 2, 4, 8, 16, 32]);
        assert_eq!(log.connected(), Some(40));
        assert_eq!(log.connected(), None, "no outage, no line");
        assert_eq!(log.failed(), Some(1), "the next outage starts over");
    }

    #[test]
    fn the_first_server_s_address_is_found_in_a_url_list() {
        for (urls, address) in [
            ("nats://127.0.0.1:4222", "127.0.0.1:4222"),
            ("nats://nats.default.svc", "nats.default.svc:4222"),
            ("tls://user:secret@nats:7422/x", "nats:7422"),
            ("nats://a:1, nats://b:2", "a:1"),
            ("localhost:4333", "localhost:4333"),
            ("nats://[::1]:4222", "[::1]:4222"),
            ("nats://[::1]", "[::1]:4222"),
        ] {
            assert_eq!(first_address(urls), address, "{urls}");
        }
    }
}
