//! SIGTERM on one of two replicas (real binaries on a real nats-server) while clients
//! publish and a request is in flight: nothing is lost, everyone lands on the survivor.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;

use crate::binary::start_binary;
use crate::harness::*;

const GRACE_SECONDS: u64 = 6;

/// The test app, with a short grace period, written where the binary can read it,
/// beside the JWT Secret it references.
fn app_files() -> (PathBuf, PathBuf) {
    let app = with(
        TEST_APP,
        &[(
            "heartbeat: {intervalSeconds: 25, timeoutSeconds: 10}",
            &format!(
                "heartbeat: {{intervalSeconds: 25, timeoutSeconds: 10}}\n  drain: {{gracePeriodSeconds: {GRACE_SECONDS}}}"
            ),
        )],
    );
    let (_, app, secrets) = app_files_in_temp_dir(&app);
    (app, secrets)
}

#[tokio::test]
async fn sigterm_hands_clients_to_the_other_replica_without_losing_work() {
    let nats = NatsServer::start().await;
    let (app, secrets) = app_files();
    let args = |instance: &'static str| {
        vec![
            "--app".to_owned(),
            app.display().to_string(),
            "--secrets-dir".to_owned(),
            secrets.display().to_string(),
            "--nats-url".to_owned(),
            nats.url(),
            "--instance".to_owned(),
            instance.to_owned(),
        ]
    };
    let a_args = args("a");
    let b_args = args("b");
    let mut a = start_binary(&a_args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let b = start_binary(&b_args.iter().map(String::as_str).collect::<Vec<_>>()).await;

    // A backend that takes its time: the reply must still reach the client on A.
    let backend = nats.client().await;
    let mut questions = backend
        .subscribe("sb.tests.test.rpc.questions")
        .await
        .unwrap();
    nats.wait_for_subscription("sb.tests.test.rpc.questions")
        .await;
    let replier = backend.clone();
    tokio::spawn(async move {
        while let Some(msg) = questions.next().await {
            tokio::time::sleep(Duration::from_millis(800)).await;
            if let Some(reply) = msg.reply {
                replier
                    .publish(reply, json!({"answer": "slow but sure"}).to_string().into())
                    .await
                    .unwrap();
            }
        }
    });

    let mut watcher = Client::connect(&b.ws).await;
    watcher.call("JOIN", "w", json!({"roomId": "r"})).await;
    nats.wait_for_subscription("sb.tests.test.t.room.r").await;
    let mut on_a = Vec::new();
    for i in 0..3 {
        let mut c = Client::connect(&a.ws).await;
        c.call("JOIN", &format!("j{i}"), json!({"roomId": "r"}))
            .await;
        on_a.push(c);
    }
    // Wait until A, too, is subscribed on NATS (two subscriptions on the subject).
    for _ in 0..100 {
        if nats
            .subscriptions()
            .await
            .iter()
            .filter(|s| *s == "sb.tests.test.t.room.r")
            .count()
            == 2
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // In flight when the signal lands: one request, and publishes not yet acknowledged.
    on_a[0]
        .send(json!({"type": "ASK", "meta": {"correlationId": "slow"}, "payload": {"q": 1}}))
        .await;
    for n in 0..5 {
        on_a[1]
            .tell(
                "SAY",
                json!({"roomId": "r", "text": format!("in flight {n}")}),
            )
            .await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let signalled = Instant::now();
    a.sigterm().await;

    for (i, c) in on_a.iter_mut().enumerate() {
        let (frames, code) = c
            .frames_until_close(Duration::from_secs(GRACE_SECONDS))
            .await;
        assert_eq!(code, 1001, "client {i}: {frames:?}");
        let drain = frames
            .iter()
            .find(|f| f["type"] == "$ws:drain")
            .unwrap_or_else(|| panic!("client {i}: no $ws:drain in {frames:?}"));
        let after = drain["payload"]["reconnectAfterMs"].as_u64();
        assert!(after.is_some_and(|ms| ms >= 100), "client {i}: {drain}");
        if i == 0 {
            let answer = frames.iter().find(|f| f["meta"]["correlationId"] == "slow");
            assert_eq!(
                answer.map(|f| &f["type"]),
                Some(&json!("ANSWER")),
                "the in-flight reply comes before the close: {frames:?}"
            );
        }
    }
    let status = tokio::time::timeout(Duration::from_secs(GRACE_SECONDS), a.child.wait())
        .await
        .expect("A must exit within the grace period")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(signalled.elapsed() < Duration::from_secs(GRACE_SECONDS));

    // Everything A accepted before the signal crossed to B.
    let mut texts = Vec::new();
    while let Some(m) = watcher.try_recv(Duration::from_millis(500)).await {
        texts.push(m["payload"]["text"].as_str().unwrap_or_default().to_owned());
    }
    for n in 0..5 {
        assert!(
            texts.contains(&format!("in flight {n}")),
            "lost a publish: {texts:?}"
        );
    }

    // The clients come back on B and keep receiving.
    let mut moved = Vec::new();
    for i in 0..3 {
        let mut c = Client::connect(&b.ws).await;
        assert_eq!(c.open["instance"], "b");
        c.call("JOIN", &format!("again{i}"), json!({"roomId": "r"}))
            .await;
        moved.push(c);
    }
    watcher
        .tell("SAY", json!({"roomId": "r", "text": "welcome to b"}))
        .await;
    for c in &mut moved {
        assert_eq!(c.recv().await["payload"]["text"], "welcome to b");
    }
    let _ = std::fs::remove_dir_all(app.parent().unwrap());
}
