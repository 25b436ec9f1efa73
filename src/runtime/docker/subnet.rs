//! The address pool of deployment networks: each network gets a small subnet (a /28 by
//! default) of `NETWORK_POOL`, held in a [`SubnetBook`] while its network exists and freed
//! with it. Docker's default address pools hold about 30 bridge networks; this pool holds
//! thousands, whether or not the daemon was configured for it.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Mutex;

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

    /// Picks a free subnet, at random among those not `used`.
    pub fn pick(&self, used: impl Fn(&String) -> bool) -> Option<String> {
        crate::domain::pick_free(u64::from(self.len()), |i| self.subnet(i as u32), used)
    }
}

/// The subnets of this instance's networks, by deployment id: those made, being made, and
/// those found in Docker at start-up. A subnet is taken under the book's lock, so that two
/// creates never pick the same one. A subnet that another Docker network holds (another
/// instance's, or one made by hand) is not in the book: Docker refuses it, and the caller
/// takes another while avoiding every subnet Docker knows.
#[derive(Debug)]
pub struct SubnetBook {
    pool: SubnetPool,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    by_deployment: HashMap<String, String>,
    seeded: bool,
}

impl SubnetBook {
    /// An empty book over `pool`.
    pub fn new(pool: SubnetPool) -> SubnetBook {
        SubnetBook {
            pool,
            held: Mutex::default(),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pool.
    pub fn pool(&self) -> SubnetPool {
        self.pool
    }

    /// Takes a free subnet of the pool that is not in `avoid` for `deployment_id` (which
    /// gives back any it held); `None` when every subnet is held or avoided.
    pub fn take(&self, deployment_id: &str, avoid: &HashSet<String>) -> Option<String> {
        let mut held = self.held();
        held.by_deployment.remove(deployment_id);
        let taken: HashSet<&String> = held.by_deployment.values().collect();
        let subnet = self.pool.pick(|s| taken.contains(s) || avoid.contains(s))?;
        held.by_deployment
            .insert(deployment_id.to_owned(), subnet.clone());
        Some(subnet)
    }

    /// Gives back the subnet of `deployment_id` (its network is gone, or was never made).
    pub fn give_back(&self, deployment_id: &str) {
        self.held().by_deployment.remove(deployment_id);
    }

    /// Records the subnets of this instance's networks found in Docker, the first time only:
    /// later listings may race a removal, and a subnet recorded after its network went would
    /// never be given back.
    pub fn seed(&self, found: impl IntoIterator<Item = (String, String)>) {
        let mut held = self.held();
        if std::mem::replace(&mut held.seeded, true) {
            return;
        }
        for (deployment_id, subnet) in found {
            held.by_deployment.entry(deployment_id).or_insert(subnet);
        }
    }

    /// Subnets held now.
    pub fn len(&self) -> usize {
        self.held().by_deployment.len()
    }

    /// Whether no subnet is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
            let s = p.pick(|s| used.contains(s)).expect("free");
            assert!(used.insert(s));
        }
        assert_eq!(p.pick(|s| used.contains(s)), None);
    }

    #[test]
    fn the_book_never_gives_one_subnet_twice_and_takes_back_what_goes() {
        let book = SubnetBook::new(SubnetPool::parse("10.0.0.0/26", 28).expect("valid"));
        let avoid = HashSet::from(["10.0.0.0/28".to_owned()]);
        let got: HashSet<String> = ["a", "b", "c"]
            .iter()
            .map(|d| book.take(d, &avoid).expect("free"))
            .collect();
        assert_eq!(got.len(), 3);
        assert!(!got.contains("10.0.0.0/28"), "avoided");
        assert_eq!(book.take("d", &avoid), None, "held or avoided");
        book.give_back("b");
        assert!(book.take("d", &avoid).is_some());
        // Taking again for one deployment gives back what it held first.
        assert!(book.take("d", &avoid).is_some());
        assert_eq!(book.len(), 3);
    }

    #[test]
    fn only_the_first_listing_seeds_the_book() {
        let book = SubnetBook::new(SubnetPool::parse("10.0.0.0/26", 28).expect("valid"));
        book.seed([("a".to_owned(), "10.0.0.16/28".to_owned())]);
        book.seed([("b".to_owned(), "10.0.0.32/28".to_owned())]);
        assert_eq!(book.len(), 1);
        let avoid = HashSet::new();
        for d in ["x", "y", "z"] {
            assert_ne!(book.take(d, &avoid).as_deref(), Some("10.0.0.16/28"));
        }
    }
}
