//! `switchboard-operator`: reconciles `RealtimeApp` resources into running Switchboard
//! servers. [`controller`] holds reconcile and its error policy, [`resources`] the pure
//! functions that build each owned object, [`crd`] the generated CustomResourceDefinition,
//! [`leader`] the Lease that keeps two replicas from both reconciling, [`metrics`] what
//! `/metrics` exports, [`jetstream`] the apps' history streams on NATS.

pub mod backoff;
pub mod controller;
pub mod crd;
pub mod jetstream;
pub mod leader;
pub mod metrics;
pub mod resources;
