//! Who the client is at the network level: the TCP peer, or, when the peer
//! is one of our own proxies, the address those proxies recorded.
//!
//! Pure: a peer address, the request headers and `TRUSTED_PROXIES` in, an
//! address (or "unknown") out. REST, the Socket.IO handshake, the device
//! record, the audit trail and analytics all get the client from
//! [`resolve`], through `Authenticator::caller`.
//!
//! The rule:
//! 1. Addresses are canonical: `::ffff:a.b.c.d` is the IPv4 address
//!    `a.b.c.d`, for the peer, the trusted proxies' hops and restrictions alike.
//! 2. A peer that is not a trusted proxy is the client; its headers are
//!    ignored, since anyone can write them.
//! 3. From a trusted proxy, the chain is every `X-Forwarded-For` line joined
//!    in order (a list header may arrive as several lines, RFC 9110 §5.3;
//!    HAProxy appends a line), or the `for=` of every `Forwarded` element
//!    (RFC 7239), over all its lines. A hop is `ip`, `ip:port`, `[v6]` or
//!    `[v6]:port` (quoted in `Forwarded`).
//! 4. The chain is walked from the right past trusted proxies; the first hop
//!    that is not one is the client. If that hop does not parse (`unknown`,
//!    an obfuscated `_name`, garbage, an element without `for=`), the client
//!    is **unknown**: the proxy we trust vouched for nothing we can check,
//!    and anything left of it was written by the client. (Skipping the bad
//!    hop, as we once did, believed the client's own entry.)
//! 5. If every hop is a trusted proxy, the left-most is the client; a
//!    trusted peer that sent neither header is itself the client.
//! 6. **Both headers present:** each is resolved, and the client is known
//!    only when both name the same address. A proxy that maintains one of
//!    the headers usually passes the other through untouched, so whichever
//!    one we preferred, a client could write it and pick its own address
//!    behind a proxy that maintains only the other. Requiring agreement
//!    fails closed without configuration; the cost is that a client that
//!    arrives with the other header already set (by itself or an outbound
//!    corporate proxy) is unknown, which only matters to IP-restricted keys.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::http::{header::FORWARDED, HeaderMap, HeaderValue};
use ipnet::IpNet;

const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// A chain longer than this is not a real proxy chain; its client is
/// unknown. Bounds the work a request can cause.
pub const MAX_HOPS: usize = 64;

/// The resolved client of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientAddr {
    /// `None` when unknown: no peer, or a chain that does not say.
    pub ip: Option<IpAddr>,
    /// Whether the TCP peer is a trusted proxy, so that the other headers
    /// proxies set (the country header) may be believed.
    pub via_trusted_proxy: bool,
}

/// `::ffff:a.b.c.d` as `a.b.c.d`; every other address as it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// A network of IPv4-mapped IPv6 addresses (`::ffff:10.0.0.0/104`) as the
/// IPv4 network it maps (`10.0.0.0/8`), so it matches canonical addresses.
pub fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        other => other,
    }
}

/// Whether `ip` is one of `trusted`, both taken canonically.
pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = canonical(ip);
    trusted.iter().any(|net| canonical_net(*net).contains(&ip))
}

/// The client of a request from `peer` carrying `headers`; see the module
/// documentation for the rule.
pub fn resolve(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[IpNet]) -> ClientAddr {
    let Some(peer) = peer.map(canonical) else {
        return ClientAddr::default();
    };
    if !is_trusted(peer, trusted) {
        return ClientAddr {
            ip: Some(peer),
            via_trusted_proxy: false,
        };
    }
    let xff = walk(x_forwarded_for_hops(headers), trusted);
    let fwd = walk(forwarded_hops(headers), trusted);
    let ip = match (xff, fwd) {
        (Walk::Absent, Walk::Absent) => Some(peer),
        (Walk::Client(ip), Walk::Absent) | (Walk::Absent, Walk::Client(ip)) => ip,
        (Walk::Client(a), Walk::Client(b)) => a.filter(|a| Some(*a) == b),
    };
    ClientAddr {
        ip,
        via_trusted_proxy: true,
    }
}

/// What walking one header's chain found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Walk {
    /// The header is absent or lists no hop.
    Absent,
    /// The client, or `None` when the chain does not say who it is.
    Client(Option<IpAddr>),
}

/// Walks `hops` (right-most first; `None` is a hop that does not parse)
/// past trusted proxies.
fn walk(hops: impl Iterator<Item = Option<IpAddr>>, trusted: &[IpNet]) -> Walk {
    let mut leftmost = None;
    for (n, hop) in hops.enumerate() {
        if n == MAX_HOPS {
            return Walk::Client(None);
        }
        match hop.map(canonical) {
            None => return Walk::Client(None),
            Some(ip) if is_trusted(ip, trusted) => leftmost = Some(ip),
            Some(ip) => return Walk::Client(Some(ip)),
        }
    }
    leftmost.map_or(Walk::Absent, |ip| Walk::Client(Some(ip)))
}

/// The lines of `name`, right-most last; a line that is not text is `None`.
fn lines<'a>(headers: &'a HeaderMap, name: &str) -> Vec<Option<&'a str>> {
    headers
        .get_all(name)
        .iter()
        .map(|v: &'a HeaderValue| v.to_str().ok())
        .collect()
}

/// The non-empty comma-separated elements of a line, right-most first
/// (empty elements are ignored, as RFC 9110 §5.6.1 asks of list headers).
fn elements_rev(line: &str) -> impl Iterator<Item = &str> {
    line.rsplit(',').map(str::trim).filter(|e| !e.is_empty())
}

/// The hops of every X-Forwarded-For line, right-most first.
fn x_forwarded_for_hops(headers: &HeaderMap) -> impl Iterator<Item = Option<IpAddr>> + '_ {
    lines(headers, X_FORWARDED_FOR).into_iter().rev().flat_map(
        |line| -> Box<dyn Iterator<Item = Option<IpAddr>> + '_> {
            match line {
                Some(line) => Box::new(elements_rev(line).map(parse_hop)),
                None => Box::new(std::iter::once(None)),
            }
        },
    )
}

/// The `for=` of every Forwarded element over every line, right-most first.
/// Elements and their parameters are split here, at separators outside
/// quoted strings (RFC 7239 §4 allows quoted values, RFC 9110 §5.6.4
/// defines them); the `rfc7239` crate then reads the one `for` parameter.
/// The crate is not given whole elements because it splits at every comma,
/// even a quoted one, and accepts a quote that never closes. A line with an
/// unclosed quote names no client at all.
fn forwarded_hops(headers: &HeaderMap) -> impl Iterator<Item = Option<IpAddr>> + '_ {
    lines(headers, FORWARDED.as_str())
        .into_iter()
        .rev()
        .flat_map(|line| -> Box<dyn Iterator<Item = Option<IpAddr>> + '_> {
            match line.map(|l| split_unquoted(l, ',')) {
                Some(Some(elements)) => Box::new(
                    elements
                        .into_iter()
                        .rev()
                        .map(str::trim)
                        .filter(|e| !e.is_empty())
                        .map(forwarded_for),
                ),
                _ => Box::new(std::iter::once(None)),
            }
        })
}

/// `text` split at each `sep` outside a quoted string (`"…"` with `\`
/// escapes); None when a quote is left open.
fn split_unquoted(text: &str, sep: char) -> Option<Vec<&str>> {
    let (mut parts, mut start) = (Vec::new(), 0);
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in text.char_indices() {
        match (quoted, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (_, false, '"') => quoted = !quoted,
            (false, _, c) if c == sep => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    (!quoted).then_some(parts)
}

/// The address in one Forwarded element's `for=`, if it names exactly one:
/// an element with two `for` parameters names no client (the crate would
/// take the last), nor does a quoted value holding a comma.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let params = split_unquoted(element, ';')?;
    let mut fors = params.into_iter().map(str::trim).filter(|p| {
        p.split_once('=')
            .is_some_and(|(name, _)| name.trim().eq_ignore_ascii_case("for"))
    });
    let (Some(param), None) = (fors.next(), fors.next()) else {
        return None;
    };
    if param.contains(',') {
        return None;
    }
    let parsed = rfc7239::parse(param).next()?.ok()?;
    parsed.forwarded_for?.ip().copied()
}

/// One X-Forwarded-For hop: `ip`, `ip:port`, `[v6]` or `[v6]:port`.
///
/// Written here rather than taken from a crate: the crates that read this
/// header (client-ip, forwarded-header-value, http-ip) take only bare
/// addresses, so `ip:port`, which real proxies write, would fail the hop or
/// the whole header, and none of them walks past several trusted proxies.
pub fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = hop.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    hop.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .and_then(|h| h.parse::<Ipv6Addr>().ok())
        .map(IpAddr::V6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().expect("test CIDR")).collect()
    }

    /// Headers from (name, value) lines, repeated names being several lines.
    fn headers(lines: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in lines {
            map.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        map
    }

    fn client(peer: &str, lines: &[(&str, &str)]) -> Option<IpAddr> {
        resolve(Some(ip(peer)), &headers(lines), &nets(&["127.0.0.1/32"])).ip
    }

    #[test]
    fn hops_parse_in_every_form_proxies_write() {
        assert_eq!(parse_hop("203.0.113.9"), Some(ip("203.0.113.9")));
        assert_eq!(parse_hop(" 203.0.113.9:4711 "), Some(ip("203.0.113.9")));
        assert_eq!(parse_hop("2001:db8::9"), Some(ip("2001:db8::9")));
        assert_eq!(parse_hop("[2001:db8::9]"), Some(ip("2001:db8::9")));
        assert_eq!(parse_hop("[2001:db8::9]:4711"), Some(ip("2001:db8::9")));
        for bad in [
            "unknown",
            "not-an-ip",
            "_hidden",
            "",
            "1.2.3",
            "[1.2.3.4]",
            "1.2.3.4:x",
        ] {
            assert_eq!(parse_hop(bad), None, "{bad}");
        }
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_writes() {
        let peer = "198.51.100.7";
        assert_eq!(
            client(peer, &[("x-forwarded-for", "203.0.113.1")]),
            Some(ip(peer))
        );
        assert_eq!(
            client(peer, &[("forwarded", "for=203.0.113.1")]),
            Some(ip(peer))
        );
        let r = resolve(Some(ip(peer)), &HeaderMap::new(), &nets(&["127.0.0.1/32"]));
        assert!(!r.via_trusted_proxy);
    }

    #[test]
    fn the_issue_s_bypasses_are_closed() {
        let p = "127.0.0.1";
        // The right-most hop written by our proxy is the client, with a port too.
        assert_eq!(
            client(p, &[("x-forwarded-for", "198.51.100.7, 203.0.113.9:4711")]),
            Some(ip("203.0.113.9"))
        );
        assert_eq!(
            client(
                p,
                &[("x-forwarded-for", "198.51.100.7, [2001:db8::9]:4711")]
            ),
            Some(ip("2001:db8::9"))
        );
        // An unparseable hop where the client should be makes it unknown.
        for bad in ["unknown", "not-an-ip", "_obfuscated"] {
            assert_eq!(
                client(p, &[("x-forwarded-for", &format!("198.51.100.7, {bad}"))]),
                None,
                "{bad}"
            );
        }
        // Two lines are one list, in order.
        assert_eq!(
            client(
                p,
                &[
                    ("x-forwarded-for", "198.51.100.7"),
                    ("x-forwarded-for", "203.0.113.9")
                ]
            ),
            Some(ip("203.0.113.9"))
        );
        // IPv4-mapped IPv6 is the IPv4 address.
        assert_eq!(
            client(p, &[("x-forwarded-for", "::ffff:203.0.113.5")]),
            Some(ip("203.0.113.5"))
        );
    }

    #[test]
    fn trusted_hops_are_skipped_and_garbage_beyond_the_client_is_harmless() {
        let trusted = nets(&["10.0.0.0/8", "127.0.0.1/32"]);
        let h = headers(&[(
            "x-forwarded-for",
            "garbage, 203.0.113.9, 10.1.1.1:80, 10.2.2.2",
        )]);
        assert_eq!(
            resolve(Some(ip("127.0.0.1")), &h, &trusted).ip,
            Some(ip("203.0.113.9"))
        );
        // Every hop trusted: the left-most is the client.
        let h = headers(&[("x-forwarded-for", "10.3.3.3, 10.2.2.2")]);
        assert_eq!(
            resolve(Some(ip("127.0.0.1")), &h, &trusted).ip,
            Some(ip("10.3.3.3"))
        );
        // No header, or only empty elements: the proxy itself.
        for h in [headers(&[]), headers(&[("x-forwarded-for", " , ")])] {
            assert_eq!(
                resolve(Some(ip("127.0.0.1")), &h, &trusted).ip,
                Some(ip("127.0.0.1"))
            );
        }
    }

    #[test]
    fn the_peer_is_canonical_too() {
        let r = resolve(
            Some(ip("::ffff:127.0.0.1")),
            &headers(&[("x-forwarded-for", "203.0.113.9")]),
            &nets(&["127.0.0.1/32"]),
        );
        assert_eq!(r.ip, Some(ip("203.0.113.9")));
        assert!(r.via_trusted_proxy);
        let direct = resolve(Some(ip("::ffff:203.0.113.5")), &HeaderMap::new(), &[]);
        assert_eq!(direct.ip, Some(ip("203.0.113.5")));
        assert_eq!(resolve(None, &HeaderMap::new(), &[]).ip, None);
    }

    #[test]
    fn forwarded_is_read_as_rfc_7239_writes_it() {
        let p = "127.0.0.1";
        let f = |v: &str| client(p, &[("forwarded", v)]);
        assert_eq!(f("for=203.0.113.9"), Some(ip("203.0.113.9")));
        assert_eq!(f("For=\"203.0.113.9:4711\""), Some(ip("203.0.113.9")));
        assert_eq!(f("for=\"[2001:db8::1]:4711\""), Some(ip("2001:db8::1")));
        assert_eq!(
            f("for=\"[2001:db8::1]\";proto=https"),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(
            f("for=198.51.100.7;proto=http, for=203.0.113.9;by=127.0.0.1"),
            Some(ip("203.0.113.9"))
        );
        assert_eq!(
            f("for=198.51.100.7, for=127.0.0.1"),
            Some(ip("198.51.100.7"))
        );
        for bad in [
            "for=198.51.100.7, for=unknown",
            "for=198.51.100.7, for=_hidden",
            "for=198.51.100.7, proto=https",
            "for=198.51.100.7, for=2001:db8::1",
            "for=198.51.100.7, garbage",
            // A comma inside a quoted value does not end the element, whose
            // `for` then names no address.
            "for=198.51.100.7, for=\"_hidden,for=203.0.113.5\"",
            // Two `for` parameters in one element name no one client.
            "for=198.51.100.1;for=203.0.113.5",
            // A quote that never closes: the line names no client, however
            // a proxy appended to it.
            "for=\"203.0.113.5, for=198.51.100.7",
            "for=\"203.0.113.5",
        ] {
            assert_eq!(f(bad), None, "{bad}");
        }
        // Other parameters may hold quoted separators.
        for good in [
            "for=203.0.113.9;by=\"a,b\"",
            "for=203.0.113.9;by=\"a;b\";proto=https",
            "for=203.0.113.9;",
            ";for=203.0.113.9",
        ] {
            assert_eq!(f(good), Some(ip("203.0.113.9")), "{good}");
        }
        assert_eq!(f("for=\"_hidden,x\""), None);
        // Several lines are one list.
        assert_eq!(
            client(
                p,
                &[
                    ("forwarded", "for=198.51.100.7"),
                    ("forwarded", "for=203.0.113.9")
                ]
            ),
            Some(ip("203.0.113.9"))
        );
    }

    #[test]
    fn both_headers_must_agree() {
        let p = "127.0.0.1";
        assert_eq!(
            client(
                p,
                &[
                    ("x-forwarded-for", "203.0.113.9"),
                    ("forwarded", "for=203.0.113.9")
                ]
            ),
            Some(ip("203.0.113.9"))
        );
        // A client-written Forwarded passed through a proxy that appends
        // X-Forwarded-For (or the other way round) cannot pick the address.
        assert_eq!(
            client(
                p,
                &[
                    ("x-forwarded-for", "203.0.113.9"),
                    ("forwarded", "for=198.51.100.7")
                ]
            ),
            None
        );
    }

    #[test]
    fn mapped_networks_match_canonical_addresses() {
        let mapped: IpNet = "::ffff:127.0.0.0/104".parse().unwrap();
        assert_eq!(
            canonical_net(mapped),
            "127.0.0.0/8".parse::<IpNet>().unwrap()
        );
        assert!(is_trusted(ip("127.0.0.9"), &[mapped]));
        let plain: IpNet = "2001:db8::/32".parse().unwrap();
        assert_eq!(canonical_net(plain), plain);
    }

    #[test]
    fn absurdly_long_chains_are_unknown() {
        let chain = vec!["127.0.0.1"; MAX_HOPS + 1].join(",");
        assert_eq!(client("127.0.0.1", &[("x-forwarded-for", &chain)]), None);
    }

    proptest! {
        /// Whatever a client writes in front of what our proxy appends, the
        /// proxy's entry decides: the client can never choose its address.
        #[test]
        fn what_the_client_writes_never_decides(
            written in proptest::collection::vec("[ -~]{0,24}", 0..6),
            real in any::<[u8; 4]>(),
            port in proptest::option::of(any::<u16>()),
            lines in 1usize..3,
        ) {
            let real = IpAddr::from(real);
            let appended = match port {
                Some(port) => SocketAddr::new(real, port).to_string(),
                None => real.to_string(),
            };
            let written = written.join(",").replace(['\r', '\n'], "");
            let mut h = HeaderMap::new();
            let name = axum::http::HeaderName::from_static(X_FORWARDED_FOR);
            if lines == 1 {
                h.append(name, HeaderValue::from_str(&format!("{written},{appended}")).unwrap());
            } else {
                if let Ok(v) = HeaderValue::from_str(&written) {
                    h.append(name.clone(), v);
                }
                h.append(name, HeaderValue::from_str(&appended).unwrap());
            }
            let trusted = nets(&["127.0.0.1/32"]);
            let got = resolve(Some(ip("127.0.0.1")), &h, &trusted).ip;
            let want = if is_trusted(real, &trusted) { got } else { Some(canonical(real)) };
            prop_assert_eq!(got, want);
        }

        /// Any IPv4 address and its IPv4-mapped IPv6 form resolve alike.
        #[test]
        fn mapped_and_plain_ipv4_are_one_client(octets in any::<[u8; 4]>()) {
            let v4 = IpAddr::from(octets);
            let mapped = IpAddr::V6(std::net::Ipv4Addr::from(octets).to_ipv6_mapped());
            let none = HeaderMap::new();
            prop_assert_eq!(resolve(Some(mapped), &none, &[]).ip, Some(v4));
            let h = headers(&[("x-forwarded-for", &mapped.to_string())]);
            let trusted = nets(&["127.0.0.1/32"]);
            let want = if is_trusted(v4, &trusted) { Some(ip("127.0.0.1")) } else { Some(v4) };
            prop_assert_eq!(resolve(Some(ip("127.0.0.1")), &h, &trusted).ip, want);
        }
    }
}
