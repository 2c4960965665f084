//! Network partitions between `ringstore node` processes on one machine,
//! for tests and benchmarks.
//!
//! Each node of a [`crate::ProcCluster`] started with its own loopback
//! address (`127.x.y.<id>`) sends and receives peer traffic from that
//! address, while clients reach it from 127.0.0.1. A [`Partition`] drops
//! packets between chosen node addresses with iptables rules in a chain of
//! its own (jumped to from `INPUT`; loopback packets pass there once, so a
//! drop is silent, as on a real network: no reset, no error, the sender's
//! TCP just retransmits). Client traffic is never touched. The chain is
//! removed when the guard drops, also on a panic, and chains left behind
//! by a killed test process are removed by the next one.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{bail, Context as _};

const CHAIN_PREFIX: &str = "RS-PART-";

fn iptables(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("iptables").arg("-w").args(args).output().context("running iptables")?;
    if !out.status.success() {
        bail!("iptables {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether this machine lets the test change the firewall (root with
/// iptables). Tests that need it fail, never skip, without it: CI runs as root.
pub fn available() -> anyhow::Result<()> {
    iptables(&["-S", "INPUT"]).map(|_| ()).context("partition tests need iptables as root")
}

/// Drops peer traffic between node addresses until healed or dropped.
pub struct Partition {
    chain: String,
}

impl Partition {
    /// A new, empty (nothing cut) partition chain.
    pub fn new() -> anyhow::Result<Self> {
        available()?;
        remove_stale_chains();
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let chain = format!("{CHAIN_PREFIX}{}-{n}", std::process::id());
        iptables(&["-N", &chain])?;
        let p = Partition { chain };
        iptables(&["-I", "INPUT", "1", "-j", &p.chain])?;
        Ok(p)
    }

    /// Drops every packet between `a` and `b`, both ways.
    pub fn cut(&self, a: Ipv4Addr, b: Ipv4Addr) -> anyhow::Result<()> {
        for (s, d) in [(a, b), (b, a)] {
            iptables(&["-A", &self.chain, "-s", &s.to_string(), "-d", &d.to_string(), "-j", "DROP"])?;
        }
        Ok(())
    }

    /// Drops about `percent` % of the packets between `a` and `b`, both
    /// ways, each packet at random (`-m statistic`): a lossy link, not a cut.
    pub fn lose(&self, a: Ipv4Addr, b: Ipv4Addr, percent: u8) -> anyhow::Result<()> {
        let p = format!("{:.2}", f64::from(percent.min(100)) / 100.0);
        for (s, d) in [(a, b), (b, a)] {
            let (s, d) = (s.to_string(), d.to_string());
            iptables(&[
                "-A",
                &self.chain,
                "-s",
                &s,
                "-d",
                &d,
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &p,
                "-j",
                "DROP",
            ])?;
        }
        Ok(())
    }

    /// Cuts `node` off from every address in `others`.
    pub fn isolate(&self, node: Ipv4Addr, others: &[Ipv4Addr]) -> anyhow::Result<()> {
        others.iter().filter(|o| **o != node).try_for_each(|o| self.cut(node, *o))
    }

    /// Removes every cut; the chain stays for the next.
    pub fn heal(&self) -> anyhow::Result<()> {
        iptables(&["-F", &self.chain]).map(|_| ())
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = iptables(&["-D", "INPUT", "-j", &self.chain]);
        let _ = iptables(&["-F", &self.chain]);
        let _ = iptables(&["-X", &self.chain]);
    }
}

/// Chains of test processes that no longer run (killed before their
/// guards dropped).
fn remove_stale_chains() {
    let Ok(rules) = iptables(&["-S"]) else { return };
    for line in rules.lines() {
        let Some(chain) = line.strip_prefix("-N ").filter(|c| c.starts_with(CHAIN_PREFIX)) else { continue };
        let pid = chain[CHAIN_PREFIX.len()..].split('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| p != std::process::id() && !std::path::Path::new(&format!("/proc/{p}")).exists()) {
            let _ = iptables(&["-D", "INPUT", "-j", chain]);
            let _ = iptables(&["-F", chain]);
            let _ = iptables(&["-X", chain]);
        }
    }
}
