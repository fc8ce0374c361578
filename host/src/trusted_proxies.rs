//! Which address a request comes from when it arrives through a load balancer. Behind a proxy every
//! connection's peer is the proxy, so per-client limits would count all clients as one; proxies the
//! operator names (`--trusted-proxy`) are believed about the client, through the `X-Forwarded-For`
//! header that nginx, HAProxy and cloud load balancers append to.

use std::net::IpAddr;
use std::str::FromStr;

/// Address ranges whose connections' `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<Network>);

impl TrustedProxies {
    pub fn new(networks: Vec<Network>) -> Self {
        Self(networks)
    }

    fn trusts(&self, address: IpAddr) -> bool {
        self.0.iter().any(|network| network.contains(address))
    }

    /// The client of a request whose connection comes from `peer`: the peer itself unless it is a trusted
    /// proxy; then the last address in `X-Forwarded-For` that is not a trusted proxy (each proxy appends
    /// the address it saw, so entries left of the first untrusted one could be anyone's invention).
    pub fn client(&self, peer: IpAddr, headers: &hyper::HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','));
        for entry in forwarded.rev() {
            let Ok(address) = entry.trim().parse::<IpAddr>() else {
                break;
            };
            client = address;
            if !self.trusts(address) {
                break;
            }
        }
        client
    }
}

/// An address range, `10.0.0.0/8` or one address (`127.0.0.1`, `::1`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Network {
    address: IpAddr,
    prefix: u32,
}

impl Network {
    fn contains(&self, address: IpAddr) -> bool {
        let (range, address, width) = match (self.address, address.to_canonical()) {
            (IpAddr::V4(range), IpAddr::V4(address)) => {
                (u32::from(range) as u128, u32::from(address) as u128, 32)
            }
            (IpAddr::V6(range), IpAddr::V6(address)) => {
                (u128::from(range), u128::from(address), 128)
            }
            _ => return false,
        };
        let ignored = width - self.prefix;
        ignored == 128 || range >> ignored == address >> ignored
    }
}

impl FromStr for Network {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let invalid = || format!("{text:?} is not an address or an address range (10.0.0.0/8)");
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address = address.parse::<IpAddr>().map_err(|_| invalid())?;
        let width = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix
                .parse::<u32>()
                .ok()
                .filter(|p| *p <= width)
                .ok_or_else(invalid)?,
            None => width,
        };
        Ok(Self { address, prefix })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(networks: &[&str]) -> TrustedProxies {
        TrustedProxies::new(networks.iter().map(|n| n.parse().unwrap()).collect())
    }

    fn headers(forwarded: &[&str]) -> hyper::HeaderMap {
        let mut headers = hyper::HeaderMap::new();
        for value in forwarded {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let client = trusted.client(ip("192.0.2.7"), &headers(&["203.0.113.1"]));
        assert_eq!(client, ip("192.0.2.7"));
        assert_eq!(
            TrustedProxies::default().client(ip("10.0.0.1"), &headers(&["203.0.113.1"])),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn a_trusted_peer_names_the_last_untrusted_address() {
        let trusted = proxies(&["10.0.0.0/8", "127.0.0.1"]);
        let forwarded = headers(&["198.51.100.9, 203.0.113.1", "10.1.2.3"]);
        assert_eq!(
            trusted.client(ip("127.0.0.1"), &forwarded),
            ip("203.0.113.1")
        );
        // Nothing forwarded, or nothing usable: the proxy itself.
        assert_eq!(
            trusted.client(ip("10.0.0.5"), &headers(&[])),
            ip("10.0.0.5")
        );
        assert_eq!(
            trusted.client(ip("10.0.0.5"), &headers(&["unknown"])),
            ip("10.0.0.5")
        );
        // Only trusted proxies in the chain: the first of them.
        assert_eq!(
            trusted.client(ip("10.0.0.5"), &headers(&["10.0.0.9"])),
            ip("10.0.0.9")
        );
    }

    #[test]
    fn ranges_match_by_prefix_and_family() {
        let range: Network = "10.8.0.0/14".parse().unwrap();
        assert!(range.contains(ip("10.11.255.255")) && !range.contains(ip("10.12.0.0")));
        assert!(!range.contains(ip("::1")));
        assert!("::ffff:0:0/96".parse::<Network>().is_ok());
        assert!(
            "0.0.0.0/0"
                .parse::<Network>()
                .unwrap()
                .contains(ip("192.0.2.1"))
        );
        assert!(
            "::/0"
                .parse::<Network>()
                .unwrap()
                .contains(ip("2001:db8::1"))
        );
        // An IPv4 peer on a dual-stack socket is matched as IPv4.
        assert!(
            "127.0.0.1"
                .parse::<Network>()
                .unwrap()
                .contains(ip("::ffff:127.0.0.1"))
        );
        for bad in ["10.0.0.0/33", "localhost", "10.0.0.0/", "::1/129"] {
            assert!(bad.parse::<Network>().is_err(), "{bad}");
        }
    }
}
