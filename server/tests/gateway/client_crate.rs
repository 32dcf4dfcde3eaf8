//! The `switchboard-client` crate against real servers: requests, deliveries and typed
//! errors on one replica, and a subscriber that reconnects on its own after a drain
//! and recovers every publication on the other replica (JetStream).

use std::time::Duration;

use serde_json::json;
use switchboard_client::{Backoff, Client as SdkClient, ClientOptions, State};
use switchboard_tests::Client;

use crate::harness::*;
use crate::history::{HISTORY_APP, assert_in_order_once};
use crate::history_nats::replica_of;

fn options(urls: &[String]) -> ClientOptions {
    let mut options = ClientOptions::new(urls[0].clone());
    options.urls = urls.to_vec();
    options.backoff = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
    };
    options
}

#[tokio::test]
async fn requests_deliveries_and_typed_errors() {
    let server = TestServer::start(HISTORY_APP).await;
    let client = SdkClient::connect(options(&[server.url()]));
    let info = client.ready().await.unwrap();
    assert_eq!(info["app"], "hist");
    let mut said = client.on("SAID");
    let room = client.subscribe("JOIN", json!({"id": "c"})).await.unwrap();
    assert_eq!(room.topic().as_deref(), Some("room:c"));
    let ack = client
        .request("SAY", json!({"id": "c", "n": 1}))
        .await
        .unwrap();
    assert_eq!(ack.payload["topic"], "room:c");
    let delivery = tokio::time::timeout(WAIT, said.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(delivery.payload["n"], 1);
    assert_eq!(
        room.position().map(|p| p.0),
        delivery.meta("offset").and_then(|o| o.as_u64())
    );

    let refused = client
        .request("NO_SUCH_ROUTE", json!({}))
        .await
        .unwrap_err();
    assert_eq!(refused.code, "UNIMPLEMENTED");
    assert!(!refused.retryable);
    client.close();
    assert_eq!(client.state(), State::Closed);
    let closed = client
        .request("SAY", json!({"id": "c", "n": 2}))
        .await
        .unwrap_err();
    assert_eq!(closed.code, "UNAVAILABLE");
    server.stop().await;
}

#[tokio::test]
async fn a_subscriber_recovers_everything_across_a_drain_on_its_own() {
    const TOTAL: u64 = 200;
    let nats = NatsServer::start().await;
    let a = replica_of(HISTORY_APP, &nats, "a").await;
    let b = replica_of(HISTORY_APP, &nats, "b").await;
    let client = SdkClient::connect(options(&[a.url(), b.url()]));
    let mut said = client.on("SAID");
    let room = client.subscribe("JOIN", json!({"id": "d"})).await.unwrap();
    assert_eq!(client.ready().await.unwrap()["instance"], "a");

    let b_url = b.url();
    let publisher = tokio::spawn(async move {
        let mut p = Client::connect(&b_url).await;
        for n in 1..=TOTAL {
            p.tell("SAY", json!({"id": "d", "n": n})).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        p
    });
    let mut got = Vec::new();
    while got.len() < 20 {
        let frame = tokio::time::timeout(WAIT, said.recv())
            .await
            .unwrap()
            .unwrap();
        got.push(frame.payload["n"].as_u64().unwrap());
    }
    a.stop().await;
    while got.last() != Some(&TOTAL) {
        let frame = tokio::time::timeout(Duration::from_secs(20), said.recv())
            .await
            .expect("every publication arrives")
            .unwrap();
        got.push(frame.payload["n"].as_u64().unwrap());
    }
    assert_in_order_once(&got, TOTAL);
    assert_eq!(room.recovered(), Some((true, None)));
    assert_eq!(client.state(), State::Open);
    assert_eq!(client.ready().await.unwrap()["instance"], "b");
    drop(publisher.await.unwrap());
    client.close();
    b.stop().await;
}
