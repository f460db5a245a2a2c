//! Who sent a request, behind reverse proxies: `X-Forwarded-For`, `-Proto` and
//! `-Host` are believed only from a peer in the configured list of trusted
//! proxies, and the client is the nearest address in `X-Forwarded-For` that is not
//! itself a trusted proxy (reading from the right, as each proxy appends). A
//! request from anyone else is its own peer, whatever headers it sends.

use ipnet::IpNet;
use std::net::IpAddr;

/// The most `X-Forwarded-For` entries read (from the right).
pub const MAX_HOPS: usize = 16;

/// The trusted proxies, from `confirm.trusted_proxies` (`10.0.0.0/8`,
/// `192.0.2.7`, `::1`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trusted(Vec<IpNet>);

impl Trusted {
    /// Parses each entry as a network or a single address.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Trusted, String> {
        let mut out = Vec::new();
        for e in entries {
            let e = e.as_ref().trim();
            let net = e
                .parse::<IpNet>()
                .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("`{e}` is not an IP address or network (CIDR)"))?;
            out.push(net);
        }
        Ok(Trusted(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The client of a request that came from `peer` with these headers.
    pub fn client(&self, peer: IpAddr, forwarded_for: &[&str]) -> IpAddr {
        let peer = canonical(peer);
        if !self.contains(peer) {
            return peer;
        }
        let hops: Vec<&str> = forwarded_for
            .iter()
            .flat_map(|h| h.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev().take(MAX_HOPS) {
            let Some(ip) = parse_hop(hop) else {
                // An entry we cannot read: the last address we trust to have
                // written the rest is as far as we go.
                return client;
            };
            client = ip;
            if !self.contains(ip) {
                return ip;
            }
        }
        client
    }

    /// `X-Forwarded-Proto`, when `peer` is trusted and it is `http` or `https`.
    pub fn proto<'a>(&self, peer: IpAddr, header: Option<&'a str>) -> Option<&'a str> {
        let h = header?.split(',').next()?.trim();
        (self.contains(peer) && matches!(h, "http" | "https")).then_some(h)
    }

    /// `X-Forwarded-Host`, when `peer` is trusted and it is a plain host[:port].
    pub fn host<'a>(&self, peer: IpAddr, header: Option<&'a str>) -> Option<&'a str> {
        let h = header?.split(',').next()?.trim();
        let plain = !h.is_empty()
            && h.len() <= 255
            && h.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
            });
        (self.contains(peer) && plain).then_some(h)
    }
}

/// An IPv4 address seen as IPv6 (`::ffff:a.b.c.d`) is the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port or in brackets.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = hop.parse::<std::net::SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    let inner = hop.strip_prefix('[')?.split(']').next()?;
    inner.parse::<IpAddr>().ok().map(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn headers_count_only_from_trusted_proxies() {
        let t = Trusted::parse(&["10.0.0.0/8", "192.0.2.7"]).expect("valid");
        // A stranger's headers are ignored.
        assert_eq!(t.client(ip("203.0.113.5"), &["1.2.3.4"]), ip("203.0.113.5"));
        assert_eq!(t.proto(ip("203.0.113.5"), Some("https")), None);
        // Through the proxy: the nearest untrusted hop.
        assert_eq!(
            t.client(ip("10.1.2.3"), &["1.2.3.4, 198.51.100.9"]),
            ip("198.51.100.9")
        );
        assert_eq!(
            t.client(ip("10.1.2.3"), &["198.51.100.9, 192.0.2.7"]),
            ip("198.51.100.9")
        );
        // Spoofed leftmost entries do not win.
        assert_eq!(
            t.client(ip("10.1.2.3"), &["6.6.6.6", "198.51.100.9"]),
            ip("198.51.100.9")
        );
        assert_eq!(t.client(ip("10.1.2.3"), &[]), ip("10.1.2.3"));
        assert_eq!(t.client(ip("10.1.2.3"), &["garbage"]), ip("10.1.2.3"));
        assert_eq!(
            t.client(ip("::ffff:10.1.2.3"), &["[2001:db8::1]:443"]),
            ip("2001:db8::1")
        );
        assert_eq!(t.proto(ip("10.0.0.1"), Some("https")), Some("https"));
        assert_eq!(t.proto(ip("10.0.0.1"), Some("gopher")), None);
        assert_eq!(
            t.host(ip("10.0.0.1"), Some("notify.example.com")),
            Some("notify.example.com")
        );
        assert_eq!(t.host(ip("10.0.0.1"), Some("a b")), None);
        assert!(Trusted::parse(&["not an ip"]).is_err());
    }
}
