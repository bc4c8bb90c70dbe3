//! `ServiceAddress`: the virtual IP (VIP) the control plane allocated to a Service, and the
//! IPv4 range VIPs come from.
//!
//! Why a kind of its own, written only by the control plane (like `TrustBundle`): a VIP must
//! be stable and stored, visible in `trellis get`, and shared by every replica, but it must
//! never make a user's apply of the Service conflict or differ from what the user wrote. So
//! the Service stays the user's, and `ServiceAddress/<namespace>/<service>` (same namespace and
//! name as its Service) holds the address. Proxies receive the addresses of the services in
//! their view: the sidecar's DNS answers mesh names with them and captured connections to
//! `VIP:port` are routed as that service.
//!
//! VIPs are IPv4 only for now (an A record per name); the default range is `240.240.0.0/16`,
//! the one Istio's DNS auto-allocation uses: class E, never routed, so a VIP can only mean a
//! mesh service.
use crate::meta::ObjectMeta;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// The range VIPs are allocated from unless the MeshConfig names another.
pub const DEFAULT_SERVICE_ADDRESS_RANGE: &str = "240.240.0.0/16";

/// [`DEFAULT_SERVICE_ADDRESS_RANGE`], parsed.
pub const DEFAULT_RANGE: Ipv4Cidr = Ipv4Cidr {
    network: Ipv4Addr::new(240, 240, 0, 0),
    prefix: 16,
};

/// Shortest prefix a VIP range may have (a /8 is 16 million addresses, plenty).
pub const MIN_RANGE_PREFIX: u8 = 8;
/// Longest prefix a VIP range may have (a /30 has two usable addresses).
pub const MAX_RANGE_PREFIX: u8 = 30;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceAddress {
    pub metadata: ObjectMeta,
    pub spec: ServiceAddressSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceAddressSpec {
    /// The VIP, an IPv4 literal inside the mesh's `serviceAddressRange`.
    pub address: String,
}

impl ServiceAddressSpec {
    /// The address, if it is a valid IPv4 literal (validation guarantees it for stored ones).
    pub fn ip(&self) -> Option<Ipv4Addr> {
        self.address.parse().ok()
    }
}

/// An IPv4 network in CIDR notation (`240.240.0.0/16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

/// Why a CIDR text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not IPv4 CIDR notation (address/prefix, e.g. 240.240.0.0/16)")]
    Syntax(String),
    #[error("prefix /{0} is longer than /32")]
    Prefix(u8),
    #[error("{text:?} has host bits set; the network is {network}")]
    HostBits { text: String, network: Ipv4Cidr },
}

impl Ipv4Cidr {
    pub fn new(network: Ipv4Addr, prefix: u8) -> Result<Self, CidrError> {
        if prefix > 32 {
            return Err(CidrError::Prefix(prefix));
        }
        let cidr = Self { network, prefix };
        let masked = Ipv4Addr::from(u32::from(network) & cidr.mask());
        if masked != network {
            return Err(CidrError::HostBits {
                text: format!("{network}/{prefix}"),
                network: Self {
                    network: masked,
                    prefix,
                },
            });
        }
        Ok(cidr)
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }

    /// The addresses VIPs may take, lowest first: every address but the network's first and
    /// last (its own address and broadcast, which some stacks treat specially).
    pub fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> {
        let first = u32::from(self.network);
        let last = first | !self.mask();
        (first.saturating_add(1)..last).map(Ipv4Addr::from)
    }

    /// How many addresses [`Self::hosts`] yields.
    pub fn host_count(&self) -> u64 {
        (1u64 << (32 - u32::from(self.prefix))).saturating_sub(2)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, CidrError> {
        let syntax = || CidrError::Syntax(s.to_string());
        let (addr, prefix) = s.split_once('/').ok_or_else(syntax)?;
        let network: Ipv4Addr = addr.parse().map_err(|_| syntax())?;
        if prefix.is_empty() || prefix.len() > 2 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        let prefix: u8 = prefix.parse().map_err(|_| syntax())?;
        Self::new(network, prefix)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_iterates_the_default_range() {
        let c: Ipv4Cidr = DEFAULT_SERVICE_ADDRESS_RANGE.parse().unwrap();
        assert_eq!(c, DEFAULT_RANGE);
        assert_eq!(c.prefix(), 16);
        let mut hosts = c.hosts();
        assert_eq!(hosts.next(), Some(Ipv4Addr::new(240, 240, 0, 1)));
        assert_eq!(c.hosts().last(), Some(Ipv4Addr::new(240, 240, 255, 254)));
        assert_eq!(c.host_count(), 65534);
        assert_eq!(c.hosts().count() as u64, c.host_count());
        assert!(c.contains(Ipv4Addr::new(240, 240, 7, 9)));
        assert!(!c.contains(Ipv4Addr::new(240, 241, 0, 1)));
        assert_eq!(c.to_string(), "240.240.0.0/16");
    }

    #[test]
    fn refuses_bad_text_by_name() {
        for bad in [
            "",
            "240.240.0.0",
            "240.240.0.0/",
            "240.240.0.0/x",
            "a/16",
            "1.2.3.4/+8",
        ] {
            assert!(
                matches!(bad.parse::<Ipv4Cidr>(), Err(CidrError::Syntax(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            "10.0.0.0/33".parse::<Ipv4Cidr>(),
            Err(CidrError::Prefix(33))
        );
        let e = "10.0.0.1/24".parse::<Ipv4Cidr>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"10.0.0.1/24\" has host bits set; the network is 10.0.0.0/24"
        );
    }

    #[test]
    fn tiny_and_whole_ranges() {
        let c: Ipv4Cidr = "10.0.0.0/30".parse().unwrap();
        let hosts: Vec<_> = c.hosts().collect();
        assert_eq!(
            hosts,
            [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)]
        );
        let all: Ipv4Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(8, 8, 8, 8)));
        let one: Ipv4Cidr = "10.0.0.7/32".parse().unwrap();
        assert_eq!(one.hosts().count(), 0);
        assert_eq!(one.host_count(), 0);
    }
}
