//! Which destinations the operator may connect to on behalf of an external Broker.
//!
//! A namespace tenant writes an external Broker's URLs, so without a limit the operator could
//! be made to connect anywhere its network reaches (cloud metadata endpoints, the API server,
//! other tenants' services). It therefore connects only where its administrator allows: IP
//! ranges (`10.0.0.0/8`) and host names listed exactly (`nats.example.com`). Any other host name
//! is allowed only if it resolves and every address it resolves to lies in an allowed range, so
//! a Service name (`events-nats.shop.svc`) passes through its ClusterIP, while an ExternalName
//! Service that points outside, or a name that resolves to a metadata endpoint, does not. The
//! client also never follows server-advertised URLs (see the connection module). A name is
//! resolved when it is checked; a DNS answer that changes later is not re-checked.

use std::net::IpAddr;

use ipnet::IpNet;

/// The default destinations: the private IPv4 ranges, where cluster Services and pods live.
/// Loopback, link-local (cloud metadata) and public addresses must be allowed explicitly.
pub const DEFAULT_ALLOWED: &[&str] = &["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"];

/// The parsed allow-list.
#[derive(Clone, Debug, Default)]
pub struct Destinations {
    nets: Vec<IpNet>,
    hosts: Vec<String>,
}

/// Why a destination was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(
        "{0} is not a valid broker URL (expected nats://, tls://, amqp://, amqps://, http:// or https:// and host:port)"
    )]
    BadUrl(String),
    #[error(
        "{host} is not an allowed broker destination (allowed: {allowed}); the operator's administrator sets --allowed-broker-destinations"
    )]
    NotAllowed { host: String, allowed: String },
}

fn normalize(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

impl Destinations {
    /// Parses entries: an IP, a CIDR or an exact host name.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        let mut d = Self::default();
        for e in entries
            .iter()
            .map(|e| e.as_ref().trim())
            .filter(|e| !e.is_empty())
        {
            if let Ok(net) = e.parse::<IpNet>() {
                d.nets.push(net);
            } else if let Ok(ip) = e.parse::<IpAddr>() {
                d.nets.push(IpNet::from(ip));
            } else if e
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            {
                d.hosts.push(normalize(e));
            } else {
                return Err(format!("{e:?} is neither an IP range nor a host name"));
            }
        }
        Ok(d)
    }

    fn describe(&self) -> String {
        let mut all: Vec<String> = self.hosts.clone();
        all.extend(self.nets.iter().map(ToString::to_string));
        if all.is_empty() {
            "nothing".into()
        } else {
            all.join(", ")
        }
    }

    fn ip_allowed(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// Checks one URL. `resolve` looks up the addresses of a host name that is not listed.
    pub fn check(
        &self,
        url: &str,
        resolve: impl Fn(&str, u16) -> Vec<IpAddr>,
    ) -> Result<(), Refused> {
        let (host, port) = host_port(url).ok_or_else(|| Refused::BadUrl(url.to_string()))?;
        let refused = || Refused::NotAllowed {
            host: host.to_string(),
            allowed: self.describe(),
        };
        if let Ok(ip) = host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<IpAddr>()
        {
            return if self.ip_allowed(ip) {
                Ok(())
            } else {
                Err(refused())
            };
        }
        if self.hosts.contains(&normalize(host)) {
            return Ok(());
        }
        let ips = resolve(host, port);
        if !ips.is_empty() && ips.iter().all(|ip| self.ip_allowed(*ip)) {
            Ok(())
        } else {
            Err(refused())
        }
    }
}

/// The schemes of broker URLs and their default ports.
const SCHEMES: [(&str, u16); 6] = [
    ("nats://", 4222),
    ("tls://", 4222),
    ("amqp://", 5672),
    ("amqps://", 5671),
    ("http://", 80),
    ("https://", 443),
];

/// The host and port of a broker URL (`nats://host:port`, `amqp://host:port`, a management API
/// `http://host:port/prefix`), with the scheme's default port when left out.
pub fn host_port(url: &str) -> Option<(&str, u16)> {
    let (rest, default_port) = SCHEMES
        .iter()
        .find_map(|(scheme, port)| url.strip_prefix(scheme).map(|r| (r, *port)))?;
    let web = url.starts_with("http");
    let rest = match rest.split_once('/') {
        Some((authority, _)) if web => authority,
        Some(_) => return None,
        None => rest,
    };
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    if rest.is_empty() {
        return None;
    }
    match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && !h.is_empty() => Some((h, p.parse().ok()?)),
        _ => Some((rest, default_port)),
    }
}

/// Resolves with the system resolver (blocking; call from a blocking context or accept a
/// short stall: it runs only for host names no pattern matches).
pub fn system_resolve(host: &str, port: u16) -> Vec<IpAddr> {
    use std::net::ToSocketAddrs;
    (host, port)
        .to_socket_addrs()
        .map(|a| a.map(|s| s.ip()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_dns(_: &str, _: u16) -> Vec<IpAddr> {
        Vec::new()
    }

    fn to_cluster_ip(_: &str, _: u16) -> Vec<IpAddr> {
        vec!["10.96.0.12".parse().unwrap()]
    }

    #[test]
    fn every_engine_url_yields_its_host_and_port() {
        assert_eq!(host_port("amqp://10.0.0.5"), Some(("10.0.0.5", 5672)));
        assert_eq!(host_port("amqps://mq.svc:5671"), Some(("mq.svc", 5671)));
        assert_eq!(
            host_port("http://mq.svc:15672/rabbitmq"),
            Some(("mq.svc", 15672))
        );
        assert_eq!(host_port("https://mq.svc"), Some(("mq.svc", 443)));
        assert_eq!(host_port("amqp://mq.svc/vhost"), None, "no path on AMQP");
        assert_eq!(host_port("ftp://mq.svc"), None);
    }

    #[test]
    fn defaults_allow_cluster_services_and_private_ranges_only() {
        let d = Destinations::parse(DEFAULT_ALLOWED).unwrap();
        assert!(
            d.check("nats://events-nats.shop.svc:4222", to_cluster_ip)
                .is_ok()
        );
        assert!(
            d.check("nats://EVENTS-nats.shop.svc.cluster.local.", to_cluster_ip)
                .is_ok()
        );
        assert!(d.check("nats://10.1.2.3:4222", no_dns).is_ok());
        assert!(d.check("tls://192.168.1.10:4222", no_dns).is_ok());
        for denied in [
            "nats://127.0.0.1:4222",
            "nats://169.254.169.254:80",
            "nats://8.8.8.8:4222",
            "nats://[::1]:4222",
        ] {
            assert!(
                matches!(d.check(denied, no_dns), Err(Refused::NotAllowed { .. })),
                "{denied}"
            );
        }
    }

    #[test]
    fn a_service_name_that_resolves_outside_the_ranges_is_refused() {
        // An ExternalName Service is a *.svc name whose CNAME points anywhere.
        let d = Destinations::parse(DEFAULT_ALLOWED).unwrap();
        let to_metadata = |_: &str, _: u16| vec!["169.254.169.254".parse().unwrap()];
        let mixed =
            |_: &str, _: u16| vec!["10.0.0.1".parse().unwrap(), "203.0.113.9".parse().unwrap()];
        assert!(
            d.check("nats://sneaky.tenant.svc:4222", to_metadata)
                .is_err()
        );
        assert!(
            d.check("nats://sneaky.tenant.svc:4222", mixed).is_err(),
            "every address must be allowed"
        );
    }

    #[test]
    fn exactly_listed_names_are_trusted() {
        let d = Destinations::parse(&["nats.example.com"]).unwrap();
        assert!(d.check("nats://nats.example.com:4222", no_dns).is_ok());
        assert!(d.check("nats://NATS.example.com.:4222", no_dns).is_ok());
        assert!(d.check("nats://other.example.com:4222", no_dns).is_err());
        assert!(
            Destinations::parse(&["*.svc"]).is_err(),
            "patterns are not accepted"
        );
    }

    #[test]
    fn unmatched_names_are_judged_by_what_they_resolve_to() {
        let d = Destinations::parse(DEFAULT_ALLOWED).unwrap();
        let to_metadata = |_: &str, _: u16| vec!["169.254.169.254".parse().unwrap()];
        let to_private = |_: &str, _: u16| vec!["10.0.0.7".parse().unwrap()];
        assert!(
            d.check("nats://evil.example.com:4222", to_metadata)
                .is_err()
        );
        assert!(d.check("nats://nats.internal:4222", to_private).is_ok());
        assert!(
            d.check("nats://unknown.example.com:4222", no_dns).is_err(),
            "unresolvable names are refused"
        );
    }

    #[test]
    fn loopback_must_be_allowed_explicitly() {
        let d = Destinations::parse(&["127.0.0.1/32"]).unwrap();
        assert!(d.check("nats://127.0.0.1:4222", no_dns).is_ok());
        assert!(d.check("nats://127.0.0.2:4222", no_dns).is_err());
        assert!(d.check("nats://user:pass@127.0.0.1:4222", no_dns).is_ok());
    }

    #[test]
    fn malformed_entries_and_urls_are_reported() {
        assert!(Destinations::parse(&["not a host!"]).is_err());
        let d = Destinations::parse(DEFAULT_ALLOWED).unwrap();
        assert!(matches!(
            d.check("ftp://10.0.0.1", no_dns),
            Err(Refused::BadUrl(_))
        ));
        assert_eq!(host_port("nats://h:5222"), Some(("h", 5222)));
        assert_eq!(host_port("tls://h"), Some(("h", 4222)));
    }
}
