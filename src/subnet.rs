//! The address pool of deployment networks: each network gets a small subnet (a /28 by
//! default) of `NETWORK_POOL`, recorded in its row and freed with it. Docker's default
//! address pools hold about 30 bridge networks; this pool holds thousands, whether or not
//! the daemon was configured for it.

use std::net::Ipv4Addr;

/// A pool of equal subnets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetPool {
    base: u32,
    prefix: u8,
    subnet_prefix: u8,
}

impl SubnetPool {
    /// Parses `a.b.c.d/n` and the size of each subnet (`/m`, `n <= m <= 29`).
    pub fn parse(pool: &str, subnet_prefix: u8) -> Result<SubnetPool, String> {
        let (addr, prefix) = pool
            .split_once('/')
            .ok_or_else(|| format!("`{pool}` is not of the form a.b.c.d/n"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("`{addr}` is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (8..=29).contains(p))
            .ok_or_else(|| format!("`/{prefix}` must be between /8 and /29"))?;
        if !(prefix..=29).contains(&subnet_prefix) {
            return Err(format!(
                "the subnet size /{subnet_prefix} must be between /{prefix} and /29"
            ));
        }
        let mask = u32::MAX << (32 - prefix);
        let base = u32::from(addr);
        if base & !mask != 0 {
            return Err(format!("`{pool}` has host bits set"));
        }
        Ok(SubnetPool {
            base,
            prefix,
            subnet_prefix,
        })
    }

    /// Number of subnets.
    pub fn len(&self) -> u32 {
        1 << (self.subnet_prefix - self.prefix)
    }

    /// Never true: a pool holds at least one subnet.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Subnet number `i` as `a.b.c.d/m`.
    pub fn subnet(&self, i: u32) -> String {
        let size = 1u32 << (32 - self.subnet_prefix);
        format!(
            "{}/{}",
            Ipv4Addr::from(self.base + i * size),
            self.subnet_prefix
        )
    }

    /// The gateway (first address) of a subnet written by [`SubnetPool::subnet`].
    pub fn gateway(subnet: &str) -> Option<String> {
        let (addr, _) = subnet.split_once('/')?;
        let addr: Ipv4Addr = addr.parse().ok()?;
        Some(Ipv4Addr::from(u32::from(addr) + 1).to_string())
    }

    /// Picks a free subnet: random, so that concurrent creates rarely collide (the unique
    /// index settles it when they do).
    pub fn pick(&self, used: &std::collections::HashSet<String>) -> Option<String> {
        crate::domain::pick_free(
            u64::from(self.len()),
            |i| self.subnet(i as u32),
            |s| used.contains(s),
        )
    }
}

impl std::fmt::Display for SubnetPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn slices_the_pool_into_equal_subnets() {
        let p = SubnetPool::parse("10.240.0.0/16", 28).expect("valid");
        assert_eq!(p.len(), 4096);
        assert_eq!(p.subnet(0), "10.240.0.0/28");
        assert_eq!(p.subnet(1), "10.240.0.16/28");
        assert_eq!(p.subnet(4095), "10.240.255.240/28");
        assert_eq!(
            SubnetPool::gateway("10.240.0.16/28").as_deref(),
            Some("10.240.0.17")
        );
        assert_eq!(p.to_string(), "10.240.0.0/16");
    }

    #[test]
    fn refuses_bad_pools() {
        assert!(SubnetPool::parse("10.240.0.1/16", 28).is_err());
        assert!(SubnetPool::parse("10.240.0.0/16", 30).is_err());
        assert!(SubnetPool::parse("10.240.0.0/24", 20).is_err());
        assert!(SubnetPool::parse("nonsense", 28).is_err());
    }

    #[test]
    fn picks_free_subnets_until_exhausted() {
        let p = SubnetPool::parse("10.0.0.0/26", 28).expect("valid");
        let mut used = HashSet::new();
        for _ in 0..4 {
            let s = p.pick(&used).expect("free");
            assert!(used.insert(s));
        }
        assert_eq!(p.pick(&used), None);
    }
}
