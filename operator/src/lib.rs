//! `switchboard-operator`: reconciles `RealtimeApp` resources into running Switchboard
//! servers. So far: the CustomResourceDefinition, generated from the shared spec types.

pub mod controller;
pub mod crd;
pub mod resources;
