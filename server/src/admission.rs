//! `Admission`: the per-pod and per-IP connection limits, checked before the upgrade.
//!
//! A slot is held by an [`AdmissionGuard`] for the life of the connection and given
//! back when it drops, however the connection ends.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use dashmap::DashMap;

pub struct Admission {
    inner: Arc<Inner>,
}

struct Inner {
    open: AtomicU32,
    per_ip: DashMap<IpAddr, u32>,
    max: u32,
    max_per_ip: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `limits.maxConnections` reached: HTTP 503, try another pod.
    PodFull,
    /// `limits.maxConnectionsPerIp` reached: HTTP 429.
    TooManyFromIp,
}

/// One admitted connection's slot.
pub struct AdmissionGuard {
    inner: Arc<Inner>,
    ip: IpAddr,
}

impl Admission {
    pub fn new(max: u32, max_per_ip: u32) -> Self {
        Self {
            inner: Arc::new(Inner {
                open: AtomicU32::new(0),
                per_ip: DashMap::new(),
                max,
                max_per_ip,
            }),
        }
    }

    pub fn try_admit(&self, ip: IpAddr) -> Result<AdmissionGuard, Refusal> {
        let inner = &self.inner;
        inner
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < inner.max).then_some(n + 1)
            })
            .map_err(|_| Refusal::PodFull)?;
        let mut count = inner.per_ip.entry(ip).or_insert(0);
        if *count >= inner.max_per_ip {
            drop(count);
            inner.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::TooManyFromIp);
        }
        *count += 1;
        Ok(AdmissionGuard {
            inner: inner.clone(),
            ip,
        })
    }

    pub fn open(&self) -> u32 {
        self.inner.open.load(Ordering::Acquire)
    }
}

impl Drop for AdmissionGuard {
    fn drop(&mut self) {
        self.inner.open.fetch_sub(1, Ordering::AcqRel);
        // Remove the entry at zero so the map only holds IPs with open connections.
        self.inner.per_ip.remove_if_mut(&self.ip, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_pod_and_per_ip_and_frees_slots_on_drop() {
        let a = Admission::new(3, 2);
        let ip1 = IpAddr::from([10, 0, 0, 1]);
        let ip2 = IpAddr::from([10, 0, 0, 2]);
        let g1 = a.try_admit(ip1).unwrap();
        let _g2 = a.try_admit(ip1).unwrap();
        assert_eq!(a.try_admit(ip1).err(), Some(Refusal::TooManyFromIp));
        let _g3 = a.try_admit(ip2).unwrap();
        assert_eq!(a.try_admit(ip2).err(), Some(Refusal::PodFull));
        drop(g1);
        assert_eq!(a.open(), 2);
        assert!(a.try_admit(ip1).is_ok());
        assert_eq!(a.inner.per_ip.len(), 2);
    }
}
