//! The SSRF guard at send time: a DNS resolver for reqwest that drops every resolved address in a
//! refused range (loopback, private, link-local, CGNAT, multicast, reserved… see `domain::net`),
//! unless an allow-listed CIDR opens it. reqwest connects to the addresses this resolver returns,
//! so the checked address is the one connected to (no second lookup; DNS rebinding fails).
//! Literal-IP URLs never reach a resolver: `Guard::check_url` covers them before sending.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::domain::net::is_blocked;

/// Which addresses deliveries may reach.
#[derive(Clone, Debug, Default)]
pub struct Guard {
    /// Dev mode: everything is allowed.
    pub open: bool,
    /// Ranges opened despite being refused by default.
    pub allow: Vec<IpNet>,
}

/// A delivery target refused by the guard.
#[derive(Debug, thiserror::Error)]
#[error("blocked address: `{host}` resolves only to refused addresses ({addresses})")]
pub struct Blocked {
    host: String,
    addresses: String,
}

impl Guard {
    /// Whether `ip` may be connected to.
    pub fn permits(&self, ip: IpAddr) -> bool {
        if self.open || !is_blocked(ip) {
            return true;
        }
        let mapped = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.allow.iter().any(|net| net.contains(&ip) || mapped.is_some_and(|m| net.contains(&m)))
    }

    /// Refuses a URL whose host is a literal IP address the guard does not permit.
    pub fn check_url(&self, url: &str) -> Result<(), Blocked> {
        let Ok(parsed) = url::Url::parse(url) else { return Ok(()) };
        let ip = match parsed.host() {
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
            _ => return Ok(()),
        };
        if self.permits(ip) {
            Ok(())
        } else {
            Err(Blocked { host: ip.to_string(), addresses: ip.to_string() })
        }
    }
}

/// reqwest's resolver, filtered by a `Guard`.
pub struct GuardedResolver {
    guard: Arc<Guard>,
}

impl GuardedResolver {
    /// A resolver enforcing `guard`.
    pub fn new(guard: Arc<Guard>) -> GuardedResolver {
        GuardedResolver { guard }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.guard.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let permitted: Vec<SocketAddr> =
                resolved.iter().copied().filter(|a| guard.permits(a.ip())).collect();
            if permitted.is_empty() && !resolved.is_empty() {
                let addresses = resolved.iter().map(|a| a.ip().to_string()).collect::<Vec<_>>().join(", ");
                return Err(Box::new(Blocked { host, addresses }) as Box<dyn std::error::Error + Send + Sync>);
            }
            let addrs: Addrs = Box::new(permitted.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_refuses_private_addresses_unless_allowed() {
        let closed = Guard::default();
        assert!(!closed.permits("127.0.0.1".parse().expect("ip")));
        assert!(!closed.permits("::ffff:10.1.2.3".parse().expect("ip")));
        assert!(closed.permits("93.184.216.34".parse().expect("ip")));
        let allowing = Guard { open: false, allow: vec!["10.20.0.0/16".parse().expect("cidr")] };
        assert!(allowing.permits("10.20.3.4".parse().expect("ip")));
        assert!(allowing.permits("::ffff:10.20.3.4".parse().expect("ip")));
        assert!(!allowing.permits("10.21.0.1".parse().expect("ip")));
        assert!(Guard { open: true, allow: vec![] }.permits("127.0.0.1".parse().expect("ip")));
        assert!(closed.check_url("https://169.254.169.254/latest/meta-data").is_err());
        assert!(closed.check_url("https://[::1]:8443/").is_err());
        assert!(closed.check_url("https://example.com/").is_ok());
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused() {
        let resolver = GuardedResolver::new(Arc::new(Guard::default()));
        let name: Name = "localhost".parse().expect("a name");
        let error = resolver.resolve(name).await.err().expect("refused");
        assert!(error.to_string().contains("blocked address"), "{error}");
        let open = GuardedResolver::new(Arc::new(Guard { open: true, allow: vec![] }));
        let mut addrs =
            open.resolve("localhost".parse().expect("a name")).await.expect("allowed in dev mode");
        assert!(addrs.next().is_some_and(|a| a.ip().is_loopback()));
    }
}
