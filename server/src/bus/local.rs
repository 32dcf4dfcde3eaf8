//! The in-process bus: one replica, no NATS. Deliveries go straight to local subscribers;
//! routes that need backends (`request`, `forward`) answer UNAVAILABLE.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use switchboard_spec::{Identity, Topic};

use super::{Bus, Delivery, DrainFuture, RpcError, RpcFuture, SubscribedFuture};
use crate::topics::TopicRegistry;

pub struct LocalBus {
    registry: Arc<TopicRegistry>,
}

impl LocalBus {
    pub fn new(registry: Arc<TopicRegistry>) -> Self {
        Self { registry }
    }
}

impl Bus for LocalBus {
    fn publish(&self, delivery: Delivery) {
        self.registry.fan_out(&delivery);
    }

    fn topic_active(&self, _topic: &Topic) -> Option<SubscribedFuture> {
        None
    }

    fn topic_inactive(&self, _topic: &Topic) {}

    fn request(
        &self,
        _subject: &str,
        _payload: Bytes,
        _identity: &Identity,
        _timeout: Duration,
    ) -> RpcFuture {
        Box::pin(async { Err(RpcError::NoBus) })
    }

    fn forward(
        &self,
        _subject: &str,
        _payload: Bytes,
        _identity: &Identity,
    ) -> Result<(), RpcError> {
        Err(RpcError::NoBus)
    }

    fn drain(&self) -> DrainFuture {
        Box::pin(async {})
    }

    fn is_ready(&self) -> bool {
        true
    }
}
