//! The iptables rules of `--intercept`, as data (so tests can read them) and as commands.
//!
//! Everything lives in the `nat` table, in chains named `TRELLIS_*`, reached by one jump each
//! from `OUTPUT` and `PREROUTING`:
//!
//! ```text
//! OUTPUT     -> TRELLIS_OUTPUT:  mark == proxy mark       RETURN   (the proxy's own sockets)
//!                                udp/tcp-SYN dport 53      REDIRECT dns port   (with --dns)
//!                                -o lo                     RETURN   (loopback left alone)
//!                                -d excluded CIDR          RETURN
//!                                tcp dport excluded port   RETURN   (the control plane's always)
//!                                tcp SYN                   REDIRECT outbound capture port
//! PREROUTING -> TRELLIS_INBOUND: tcp dport excluded port   RETURN
//!                                tcp SYN                   REDIRECT inbound listener port
//! ```
//!
//! Why these choices:
//! - **Only a SYN is redirected** (`--syn`): a new connection is captured from its first
//!   packet, and a connection that was open before the rules were installed is left alone.
//!   The nat table decides once per conntrack entry, on the first packet conntrack sees; where
//!   nothing used conntrack before the rules (a fresh network namespace, a host without a
//!   firewall), that first packet of an already open connection is a mid-stream segment, and
//!   redirecting it to a listener that never saw the handshake only gets it reset. The
//!   sidecar's own control-plane connections (its xDS stream and registration, opened before
//!   it installs the rules) are such connections: without `--syn` the control plane's replies
//!   were redirected to the inbound listener and both were reset on every start.
//! - **A socket mark, not the proxy's uid**, exempts the proxy's traffic: on a host the app and
//!   the sidecar often run as the same user (root on many VMs); a uid rule would then exempt the
//!   app too. Every upstream socket of a capturing proxy carries the mark (`crate::sockopt`).
//! - **DNS before loopback**: a host resolver on `127.0.0.53` must be captured too.
//! - **Removal is by name**: jumps are deleted while they exist, then the chains flushed and
//!   deleted, so removing is the same whether the rules are whole, partial (a crash during
//!   install) or absent. Install removes first, so it is idempotent and cleans up after a
//!   `kill -9`.
//!
//! IPv4 only (VIPs are IPv4); IPv6 traffic is not captured.
use std::net::Ipv4Addr;

pub const OUTPUT_CHAIN: &str = "TRELLIS_OUTPUT";
pub const INBOUND_CHAIN: &str = "TRELLIS_INBOUND";

/// What to capture, and where to send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    /// Port of the captured-outbound listener (on 127.0.0.1).
    pub outbound_port: u16,
    /// Port of the inbound listener; inbound capture is off when `None`.
    pub inbound_port: Option<u16>,
    /// Port of the DNS answerer; DNS capture is off when `None`.
    pub dns_port: Option<u16>,
    /// `SO_MARK` of the proxy's own sockets.
    pub mark: u32,
    /// Outbound TCP destination ports left alone (the control plane's among them).
    pub exclude_outbound_ports: Vec<u16>,
    /// Inbound TCP ports left alone (e.g. 22).
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destinations left alone: `(network, prefix)`.
    pub exclude_cidrs: Vec<(Ipv4Addr, u8)>,
}

fn s(items: &[&str]) -> Vec<String> {
    items.iter().map(|x| x.to_string()).collect()
}

impl RuleSet {
    /// `iptables` argument lists that install the rules, in order (after [`removal`]).
    pub fn install(&self) -> Vec<Vec<String>> {
        let nat = |mut rest: Vec<String>| {
            let mut v = s(&["-t", "nat"]);
            v.append(&mut rest);
            v
        };
        let mut out = vec![nat(s(&["-N", OUTPUT_CHAIN]))];
        let append = |rule: &[&str]| {
            let mut v = s(&["-A", OUTPUT_CHAIN]);
            v.extend(rule.iter().map(|x| x.to_string()));
            nat(v)
        };
        let mark = format!("{:#x}", self.mark);
        out.push(append(&["-m", "mark", "--mark", &mark, "-j", "RETURN"]));
        if let Some(dns) = self.dns_port {
            let dns = dns.to_string();
            out.push(append(&[
                "-p",
                "udp",
                "--dport",
                "53",
                "-j",
                "REDIRECT",
                "--to-ports",
                &dns,
            ]));
            out.push(append(&[
                "-p",
                "tcp",
                "--syn",
                "--dport",
                "53",
                "-j",
                "REDIRECT",
                "--to-ports",
                &dns,
            ]));
        }
        out.push(append(&["-o", "lo", "-j", "RETURN"]));
        for (net, prefix) in &self.exclude_cidrs {
            out.push(append(&["-d", &format!("{net}/{prefix}"), "-j", "RETURN"]));
        }
        for port in sorted(&self.exclude_outbound_ports) {
            out.push(append(&[
                "-p",
                "tcp",
                "--dport",
                &port.to_string(),
                "-j",
                "RETURN",
            ]));
        }
        let to = self.outbound_port.to_string();
        out.push(append(&[
            "-p",
            "tcp",
            "--syn",
            "-j",
            "REDIRECT",
            "--to-ports",
            &to,
        ]));
        if let Some(inbound) = self.inbound_port {
            out.push(nat(s(&["-N", INBOUND_CHAIN])));
            for port in sorted(&self.exclude_inbound_ports) {
                out.push(nat(s(&[
                    "-A",
                    INBOUND_CHAIN,
                    "-p",
                    "tcp",
                    "--dport",
                    &port.to_string(),
                    "-j",
                    "RETURN",
                ])));
            }
            out.push(nat(s(&[
                "-A",
                INBOUND_CHAIN,
                "-p",
                "tcp",
                "--syn",
                "-j",
                "REDIRECT",
                "--to-ports",
                &inbound.to_string(),
            ])));
            out.push(nat(s(&[
                "-I",
                "PREROUTING",
                "1",
                "-p",
                "tcp",
                "-j",
                INBOUND_CHAIN,
            ])));
        }
        // The jump last: nothing is captured before every rule above is in place.
        out.push(nat(s(&["-I", "OUTPUT", "1", "-j", OUTPUT_CHAIN])));
        out
    }
}

fn sorted(ports: &[u16]) -> Vec<u16> {
    let mut v = ports.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

/// One step of removal: a jump to delete while it exists, or a chain to flush and delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// Delete this rule (`-D`) until iptables says it is gone (bounded).
    Jump(Vec<String>),
    /// Flush and delete this chain, if it exists.
    Chain(&'static str),
}

/// Everything [`RuleSet::install`] can have added, whatever the options were.
pub fn removal() -> Vec<Removal> {
    vec![
        Removal::Jump(s(&["-t", "nat", "-D", "OUTPUT", "-j", OUTPUT_CHAIN])),
        Removal::Jump(s(&[
            "-t",
            "nat",
            "-D",
            "PREROUTING",
            "-p",
            "tcp",
            "-j",
            INBOUND_CHAIN,
        ])),
        Removal::Chain(OUTPUT_CHAIN),
        Removal::Chain(INBOUND_CHAIN),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(r: &RuleSet) -> Vec<String> {
        r.install().iter().map(|a| a.join(" ")).collect()
    }

    fn base() -> RuleSet {
        RuleSet {
            outbound_port: 15002,
            inbound_port: Some(15006),
            dns_port: Some(15053),
            mark: 0x1337,
            exclude_outbound_ports: vec![15010, 15010],
            exclude_inbound_ports: vec![22],
            exclude_cidrs: vec![(Ipv4Addr::new(169, 254, 0, 0), 16)],
        }
    }

    #[test]
    fn own_traffic_first_dns_before_loopback_jump_last() {
        let rules = joined(&base());
        let pos = |needle: &str| {
            rules
                .iter()
                .position(|r| r.contains(needle))
                .unwrap_or_else(|| panic!("no rule with {needle}: {rules:#?}"))
        };
        assert!(
            pos("--mark 0x1337 -j RETURN") < pos("-p udp --dport 53 -j REDIRECT --to-ports 15053")
        );
        assert!(pos("--dport 53 -j REDIRECT") < pos("-o lo -j RETURN"));
        assert!(
            pos("-p tcp --syn --dport 53 -j REDIRECT --to-ports 15053") < pos("-o lo -j RETURN")
        );
        // Every TCP redirect takes only a connection's first packet, so connections open
        // before the rules are left alone.
        for r in rules
            .iter()
            .filter(|r| r.contains("-p tcp") && r.contains("REDIRECT"))
        {
            assert!(r.contains("-p tcp --syn "), "{r}");
        }
        assert!(pos("-o lo -j RETURN") < pos("-p tcp --syn -j REDIRECT --to-ports 15002"));
        assert!(
            pos("-d 169.254.0.0/16 -j RETURN") < pos("-p tcp --syn -j REDIRECT --to-ports 15002")
        );
        assert!(pos("--dport 15010 -j RETURN") < pos("-p tcp --syn -j REDIRECT --to-ports 15002"));
        assert_eq!(
            rules.iter().filter(|r| r.contains("--dport 15010")).count(),
            1,
            "deduplicated"
        );
        assert!(
            pos("-A TRELLIS_INBOUND -p tcp --dport 22 -j RETURN")
                < pos("-A TRELLIS_INBOUND -p tcp --syn -j REDIRECT --to-ports 15006")
        );
        assert_eq!(
            rules.last().unwrap(),
            "-t nat -I OUTPUT 1 -j TRELLIS_OUTPUT"
        );
        assert!(rules.iter().all(|r| r.starts_with("-t nat ")));
    }

    #[test]
    fn without_dns_or_inbound_those_rules_are_absent() {
        let r = RuleSet {
            dns_port: None,
            inbound_port: None,
            ..base()
        };
        let rules = joined(&r).join("\n");
        assert!(!rules.contains("--dport 53"), "{rules}");
        assert!(!rules.contains("TRELLIS_INBOUND"), "{rules}");
        assert!(!rules.contains("PREROUTING"), "{rules}");
    }

    #[test]
    fn removal_undoes_every_jump_and_chain_install_adds() {
        let install = base().install();
        let removal = removal();
        for rule in install.iter().filter(|a| a.contains(&"-I".to_string())) {
            // The jump as installed, with -I CHAIN 1 replaced by -D CHAIN.
            let mut as_delete: Vec<String> = rule.clone();
            let i = as_delete.iter().position(|a| a == "-I").unwrap();
            as_delete[i] = "-D".into();
            as_delete.remove(i + 2);
            assert!(
                removal.contains(&Removal::Jump(as_delete.clone())),
                "{as_delete:?}"
            );
        }
        for rule in install.iter().filter(|a| a.contains(&"-N".to_string())) {
            let chain = rule.last().unwrap();
            assert!(
                removal
                    .iter()
                    .any(|r| matches!(r, Removal::Chain(c) if c == chain)),
                "{chain}"
            );
        }
    }
}
