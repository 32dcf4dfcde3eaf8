//! The name a process goes by: in `$ws:open.instance`, connection ids, the operator's
//! Events and Lease, and every exported span's `service.instance.id`.
//!
//! In Kubernetes it is the pod name (`POD_NAME`, from the downward API). Run by hand, it
//! is the machine's host name, read from the system: `$HOSTNAME` is a shell variable
//! that most shells do not export, so reading only the environment gave random names.

/// `explicit` (a flag or `POD_NAME`), else `$HOSTNAME`, else the system's host name,
/// else `fallback`; empty values count as unset.
pub fn instance_name(explicit: Option<&str>, fallback: impl FnOnce() -> String) -> String {
    explicit
        .map(str::to_owned)
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .or_else(system_host_name)
        .unwrap_or_else(fallback)
}

/// gethostname(2), when it yields UTF-8.
fn system_host_name() -> Option<String> {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_name_wins_and_the_system_name_stands_in_for_it() {
        assert_eq!(instance_name(Some("pod-7"), || "x".into()), "pod-7");
        let system = system_host_name().expect("this machine has a host name");
        // With neither the flag nor $HOSTNAME, the system's name (not the fallback).
        if std::env::var("HOSTNAME").is_err() {
            assert_eq!(instance_name(None, || "fallback".into()), system);
        }
        assert_ne!(instance_name(Some(""), || "fallback".into()), "");
    }
}
