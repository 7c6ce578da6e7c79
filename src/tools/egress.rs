//! Where `http` tools may connect: every address a tool request would reach is checked, after
//! DNS resolution, against the special-purpose ranges of the IANA registries (RFC 6890), so a
//! tool (or a DNS answer, or a DNS rebinding between two lookups) cannot make the controller
//! call its own loopback services, the private network or a cloud metadata endpoint.
//!
//! | refused range | class | source |
//! |---|---|---|
//! | `127.0.0.0/8`, `::1` | `loopback` | RFC 1122 §3.2.1.3, RFC 4291 §2.5.3 |
//! | `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16` | `private` | RFC 1918 |
//! | `100.64.0.0/10` | `shared` (carrier-grade NAT) | RFC 6598 |
//! | `169.254.0.0/16` (incl. the metadata service `169.254.169.254`), `fe80::/10` | `link-local` | RFC 3927, RFC 4291 §2.5.6 |
//! | `fc00::/7` (incl. AWS's `fd00:ec2::254`), `fec0::/10` | `unique-local` | RFC 4193, RFC 3879 |
//! | `224.0.0.0/4`, `ff00::/8` | `multicast` | RFC 5771, RFC 4291 §2.7 |
//! | `0.0.0.0/8`, `::` | `unspecified` | RFC 1122 §3.2.1.3, RFC 4291 §2.5.2 |
//! | `255.255.255.255` | `broadcast` | RFC 919 |
//! | `240.0.0.0/4`, `192.0.0.0/24`, `198.18.0.0/15` | `reserved` | RFC 1112, RFC 6890, RFC 2544 |
//! | `::ffff:0:0/96`, `64:ff9b::/96`, `::a.b.c.d` | the class of the embedded IPv4 address | RFC 4291 §2.5.5, RFC 6052 |
//!
//! A profile allows such an address for named hosts only (`tools_allow_private_hosts =
//! ["tools.internal", "127.0.0.1"]`): the name in the tool's URL, compared without case and
//! trailing dot; an IP literal is allowed by writing it. Names resolve through [`GuardedResolver`]
//! (a `reqwest::dns::Resolve`, <https://docs.rs/reqwest/latest/reqwest/dns/trait.Resolve.html>)
//! on every new connection, so the address connected to is the address checked; reqwest does not
//! call resolvers for IP literals, which [`check_literal`] checks before the request is sent.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// A tool request refused because of where it would connect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "host {host} resolves to {ip} ({class} address), which tools may not reach; allow the host by name in the profile's tools_allow_private_hosts if it is meant"
)]
pub struct EgressRefused {
    /// The host of the URL (name or IP literal), lower case.
    pub host: String,
    /// The refused address.
    pub ip: IpAddr,
    /// Its class (`loopback`, `private`, `link-local`, ...; see the module table).
    pub class: &'static str,
}

/// The class of a refused address (see the module table), `None` for a public address.
pub fn refused_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => v6_class(v6),
    }
}

fn v4_class(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (127, _, _) => "loopback",
        (10, _, _) | (192, 168, _) => "private",
        (172, 16..=31, _) => "private",
        (100, 64..=127, _) => "shared",
        (169, 254, _) => "link-local",
        (0, _, _) => "unspecified",
        (224..=239, _, _) => "multicast",
        _ if ip.is_broadcast() => "broadcast",
        (240..=255, _, _) | (192, 0, 0) | (198, 18..=19, _) => "reserved",
        _ => return None,
    })
}

fn v6_class(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    let s = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_class(v4);
    }
    // NAT64 well-known prefix (RFC 6052) and the deprecated IPv4-compatible form.
    if (s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4]) || s[..6] == [0; 6] {
        let [.., hi, lo] = s;
        return v4_class(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        ));
    }
    match s[0] {
        x if x & 0xffc0 == 0xfe80 => Some("link-local"),
        x if x & 0xfe00 == 0xfc00 || x & 0xffc0 == 0xfec0 => Some("unique-local"),
        x if x & 0xff00 == 0xff00 => Some("multicast"),
        _ => None,
    }
}

/// A host as compared with the allowlist: lower case, without a trailing dot or IPv6 brackets.
pub fn normalize_host(host: &str) -> String {
    host.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// Hosts allowed to resolve to refused addresses (normalized with [`normalize_host`]).
pub type Allowlist = Arc<BTreeSet<String>>;

/// Checks a URL host that is an IP literal (reqwest connects to literals without a resolver).
/// Names pass here; [`GuardedResolver`] checks what they resolve to.
///
/// # Errors
/// [`EgressRefused`] for a refused address not in `allow`.
pub fn check_literal(url: &reqwest::Url, allow: &BTreeSet<String>) -> Result<(), EgressRefused> {
    let host = normalize_host(url.host_str().unwrap_or_default());
    let Ok(ip) = host.parse::<IpAddr>() else {
        return Ok(());
    };
    match refused_class(ip) {
        Some(class) if !allow.contains(&host) => Err(EgressRefused { host, ip, class }),
        _ => Ok(()),
    }
}

/// The `reqwest::dns::Resolve` of the tools' HTTP client: resolves with the system resolver
/// (`getaddrinfo` through [`tokio::net::lookup_host`]) and fails the lookup with
/// [`EgressRefused`] when any answer is a refused address, unless the name is in its allowlist.
#[derive(Debug, Clone, Default)]
pub struct GuardedResolver {
    allow: Allowlist,
}

impl GuardedResolver {
    /// A resolver allowing refused addresses for the names in `allow` only.
    pub fn new(allow: Allowlist) -> Self {
        GuardedResolver { allow }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = normalize_host(name.as_str());
        let allowed = self.allow.contains(&host);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if !allowed {
                if let Some((ip, class)) = addrs
                    .iter()
                    .find_map(|a| refused_class(a.ip()).map(|c| (a.ip(), c)))
                {
                    return Err(Box::new(EgressRefused { host, ip, class }) as _);
                }
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The [`EgressRefused`] behind a failed request, if that is why it failed.
pub fn refusal<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a EgressRefused> {
    let mut e: Option<&'a (dyn std::error::Error + 'static)> = Some(error);
    while let Some(err) = e {
        if let Some(r) = err.downcast_ref::<EgressRefused>() {
            return Some(r);
        }
        e = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(s: &str) -> Option<&'static str> {
        refused_class(s.parse().unwrap())
    }

    #[test]
    fn classifies_special_purpose_addresses() {
        for (ip, want) in [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("::1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "shared"),
            ("100.127.255.254", "shared"),
            ("169.254.169.254", "link-local"),
            ("fe80::1", "link-local"),
            ("fd00:ec2::254", "unique-local"),
            ("fc00::1", "unique-local"),
            ("224.0.0.1", "multicast"),
            ("ff02::1", "multicast"),
            ("0.0.0.0", "unspecified"),
            ("::", "unspecified"),
            ("255.255.255.255", "broadcast"),
            ("240.0.0.1", "reserved"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("::10.0.0.1", "private"),
        ] {
            assert_eq!(class(ip), Some(want), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "93.184.216.34",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(class(ip), None, "{ip}");
        }
    }

    #[test]
    fn literal_hosts_are_checked_against_the_allowlist() {
        let none = BTreeSet::new();
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        let e = check_literal(&url("http://169.254.169.254/latest/meta-data"), &none).unwrap_err();
        assert_eq!(
            (e.class, e.host.as_str()),
            ("link-local", "169.254.169.254")
        );
        assert!(check_literal(&url("http://[::ffff:7f00:1]:8080/"), &none).is_err());
        assert!(check_literal(&url("http://tools.internal/x"), &none).is_ok());
        assert!(check_literal(&url("https://8.8.8.8/"), &none).is_ok());
        let allow: BTreeSet<String> = ["127.0.0.1".to_string(), "::1".to_string()].into();
        assert!(check_literal(&url("http://127.0.0.1:9/x"), &allow).is_ok());
        assert!(check_literal(&url("http://[::1]:9/x"), &allow).is_ok());
        assert!(check_literal(&url("http://127.0.0.2:9/x"), &allow).is_err());
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_of_loopback_unless_allowed() {
        use reqwest::dns::Resolve;
        let name = || "localhost".parse::<reqwest::dns::Name>().unwrap();
        let err = GuardedResolver::default()
            .resolve(name())
            .await
            .err()
            .expect("localhost is refused");
        let refused = refusal(err.as_ref()).expect("an EgressRefused");
        assert_eq!(refused.class, "loopback");
        let allow: Allowlist = Arc::new(["localhost".to_string()].into());
        let addrs: Vec<SocketAddr> = GuardedResolver::new(allow)
            .resolve(name())
            .await
            .unwrap()
            .collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
        assert!(!addrs.is_empty());
    }
}
