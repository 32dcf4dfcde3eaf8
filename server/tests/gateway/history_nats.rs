//! History and recovery across replicas, on a real nats-server with JetStream (file
//! storage): one stream per app, offsets shared by every replica, recovery on another
//! replica after a drain or a dropped connection, while publishes keep arriving, and
//! after nats-server itself restarts; presence across replicas (events, a killed
//! replica's members, 10,000 members in pages).

use std::time::Duration;

use serde_json::{Value, json};
use switchboard_tests::Client;

use crate::harness::*;
use crate::history::{
    HISTORY_APP, assert_in_order_once, expect_no_more_said, publish, recover, said,
};

/// A replica of the history app on `nats`, ready (its stream in place).
async fn replica(nats: &NatsServer, name: &str) -> TestServer {
    replica_of(HISTORY_APP, nats, name).await
}

pub async fn replica_of(yaml: &str, nats: &NatsServer, name: &str) -> TestServer {
    let s = TestServer::start_on(yaml, Some(&nats.url()), name).await;
    for _ in 0..200 {
        if s.admin_get("/readyz").await.0 == 200 {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "replica {name} never became ready: {:?}",
        s.admin_get("/readyz").await
    );
}

async fn join(c: &mut Client, id: &str) -> (u64, String) {
    let ack = c.call("JOIN", "j", json!({"id": id})).await;
    assert_eq!(ack["type"], "$ws:ack", "{ack}");
    (
        ack["payload"]["offset"].as_u64().unwrap(),
        ack["payload"]["epoch"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn replicas_share_offsets_and_a_client_recovers_on_another_replica() {
    let nats = NatsServer::start().await;
    let a = replica(&nats, "a").await;
    let b = replica(&nats, "b").await;
    let mut on_a = a.client().await;
    let (start, epoch) = join(&mut on_a, "x").await;
    let mut on_b = b.client().await;
    let (b_start, b_epoch) = join(&mut on_b, "x").await;
    assert_eq!(
        (b_start, b_epoch.as_str()),
        (start, epoch.as_str()),
        "one position for all"
    );
    let mut p = b.client().await;
    publish(&mut p, "SAY", "x", 1, 3).await;
    let seen_a = said(&mut on_a, 3).await;
    let seen_b = said(&mut on_b, 3).await;
    assert_eq!(seen_a, seen_b, "the same offsets on every replica");
    assert!(seen_a.windows(2).all(|w| w[0].1 < w[1].1), "{seen_a:?}");
    drop(on_a);
    publish(&mut p, "SAY", "x", 4, 3).await;
    let mut moved = b.client().await;
    let ack = recover(&mut moved, "JOIN", "x", seen_a[2].1, &epoch).await;
    assert_eq!(ack["recovered"], true, "{ack}");
    publish(&mut p, "SAY", "x", 7, 1).await;
    let rest: Vec<u64> = said(&mut moved, 4).await.iter().map(|(n, _)| *n).collect();
    assert_eq!(rest, [4, 5, 6, 7]);
    expect_no_more_said(&mut moved, Duration::from_millis(300)).await;
    // The history route reads the same stream from either replica.
    let page = p.call("HISTORY", "h", json!({"id": "x", "limit": 2})).await;
    let ns: Vec<u64> = page["payload"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["payload"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, [6, 7], "{page}");
    a.stop().await;
    b.stop().await;
}

/// Clients on replica A while a publisher on B never pauses; A drains (1001 with
/// `$ws:drain`); every client reconnects to B with `since` and ends holding every
/// publication exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_across_a_drain_while_publishes_keep_arriving_is_gapless() {
    const TOTAL: u64 = 300;
    let nats = NatsServer::start().await;
    let a = replica(&nats, "a").await;
    let b = replica(&nats, "b").await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = a.client().await;
        let (_, epoch) = join(&mut c, "d").await;
        clients.push((c, epoch, Vec::<u64>::new(), 0u64));
    }
    let b_url = b.url();
    let publisher = tokio::spawn(async move {
        let mut p = Client::connect(&b_url).await;
        for i in 1..=TOTAL {
            p.tell("SAY", json!({"id": "d", "n": i})).await;
            if i.is_multiple_of(4) {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        p.call("SAY", "end", json!({"id": "d", "n": TOTAL + 1}))
            .await;
    });
    // Let some arrive on A, then drain it.
    for (c, _, got, last) in &mut clients {
        for (n, offset) in said(c, 20).await {
            got.push(n);
            *last = offset;
        }
    }
    let drained = tokio::spawn(a.stop());
    for (c, epoch, got, last) in &mut clients {
        // Read what A still delivers, up to its close.
        let (frames, code) = c.frames_until_close(Duration::from_secs(20)).await;
        assert_eq!(code, 1001, "a drain closes with 1001");
        for m in frames.iter().filter(|m| m["type"] == "SAID") {
            got.push(m["payload"]["n"].as_u64().unwrap());
            *last = m["meta"]["offset"].as_u64().unwrap();
        }
        let mut moved = b.client().await;
        let ack = recover(&mut moved, "JOIN", "d", *last, epoch).await;
        assert_eq!(ack["recovered"], true, "{ack}");
        *c = moved;
    }
    drained.await.unwrap();
    for (c, _, got, _) in &mut clients {
        while got.last() != Some(&(TOTAL + 1)) {
            let m = c.recv().await;
            if m["type"] == "SAID" {
                got.push(m["payload"]["n"].as_u64().unwrap());
            }
        }
        assert_in_order_once(got, TOTAL + 1);
    }
    publisher.await.unwrap();
    b.stop().await;
}

/// A client whose TCP connection just ends (no close), while publishes go on from
/// another replica, recovers on yet another connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_after_a_lost_connection_while_publishing_has_no_gap_and_no_repeat() {
    const TOTAL: u64 = 400;
    let nats = NatsServer::start().await;
    let a = replica(&nats, "a").await;
    let b = replica(&nats, "b").await;
    let mut c = a.client().await;
    let (_, epoch) = join(&mut c, "lost").await;
    let b_url = b.url();
    let publisher = tokio::spawn(async move {
        let mut p = Client::connect(&b_url).await;
        for i in 1..=TOTAL {
            p.tell("SAY", json!({"id": "lost", "n": i})).await;
            if i.is_multiple_of(4) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        p.call("SAY", "end", json!({"id": "lost", "n": TOTAL + 1}))
            .await;
    });
    let mut got = Vec::new();
    let mut moves = 0;
    while got.last() != Some(&(TOTAL + 1)) {
        let m = c.recv().await;
        if m["type"] != "SAID" {
            continue;
        }
        got.push(m["payload"]["n"].as_u64().unwrap());
        let last = m["meta"]["offset"].as_u64().unwrap();
        if got.len().is_multiple_of(71) && moves < 4 {
            moves += 1;
            drop(c); // TCP closed without a close frame
            let to = if moves % 2 == 0 { &a } else { &b };
            c = to.client().await;
            let ack = recover(&mut c, "JOIN", "lost", last, &epoch).await;
            assert_eq!(ack["recovered"], true, "{ack}");
        }
    }
    publisher.await.unwrap();
    assert_in_order_once(&got, TOTAL + 1);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn history_survives_a_nats_server_restart() {
    let mut nats = NatsServer::start().await;
    let a = replica(&nats, "a").await;
    let mut p = a.client().await;
    let mut c = a.client().await;
    let (_, epoch) = join(&mut c, "r").await;
    publish(&mut p, "SAY", "r", 1, 2).await;
    let seen = said(&mut c, 2).await;
    drop(c);
    nats.restart().await;
    wait_for_metric(&a, "switchboard_bus_connected", 1.0).await;
    // Publishing resumes once JetStream is back (a publish may meet its restart).
    let mut stored = false;
    for _ in 0..100 {
        let ack = p.call("SAY", "again", json!({"id": "r", "n": 3})).await;
        if ack["type"] == "$ws:ack" {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stored, "publishing never resumed after the restart");
    let mut back = a.client().await;
    let ack = recover(&mut back, "JOIN", "r", seen[1].1, &epoch).await;
    assert_eq!(ack["recovered"], true, "{ack}");
    assert_eq!(
        ack["epoch"],
        epoch.as_str(),
        "file storage kept the stream: same epoch"
    );
    assert_eq!(said(&mut back, 1).await[0].0, 3);
    a.stop().await;
}

#[tokio::test]
async fn recovery_on_jetstream_is_refused_with_its_reason() {
    let nats = NatsServer::start().await;
    let a = replica(&nats, "a").await;
    let mut p = a.client().await;
    let mut c = a.client().await;
    let ack = c.call("JOIN_SMALL", "j", json!({"id": "s"})).await;
    let epoch = ack["payload"]["epoch"].as_str().unwrap().to_owned();
    let first = ack["payload"]["offset"].as_u64().unwrap();
    publish(&mut p, "SAY_SMALL", "s", 1, 15).await;
    let offsets: Vec<u64> = said(&mut c, 15).await.iter().map(|(_, o)| *o).collect();
    let cases: [(u64, &str, &str); 3] = [
        (offsets[1], epoch.as_str(), "trimmed"),
        (offsets[5], "not-the-epoch", "epoch"),
        (offsets[14] + 1000, epoch.as_str(), "epoch"),
    ];
    for (offset, e, reason) in cases {
        let mut r = a.client().await;
        let ack = recover(&mut r, "JOIN_SMALL", "s", offset, e).await;
        assert_eq!(ack["recovered"], false, "{ack}");
        assert_eq!(ack["reason"], reason, "{ack}");
        assert_eq!(ack["offset"], offsets[14], "the new position: {ack}");
    }
    let mut r = a.client().await;
    let ack = recover(&mut r, "JOIN_SMALL", "s", offsets[10], &epoch).await;
    assert_eq!(ack["recovered"], true, "{ack}");
    assert_eq!(said(&mut r, 4).await.len(), 4);
    assert!(first < offsets[0]);
    // Over the replay limit (a replica of the same app with a lower one).
    let strict = with(
        HISTORY_APP,
        &[(
            "maxRecoveryPublications: 1000",
            "maxRecoveryPublications: 3",
        )],
    );
    let b = replica_of(&strict, &nats, "b").await;
    let mut r = b.client().await;
    let ack = recover(&mut r, "JOIN_SMALL", "s", offsets[9], &epoch).await;
    assert_eq!(
        (ack["recovered"].clone(), ack["reason"].clone()),
        (json!(false), json!("limit")),
        "{ack}"
    );
    b.stop().await;

    let mut d = a.client().await;
    let b = d.call("JOIN_BRIEF", "b", json!({"id": "x"})).await;
    let from = b["payload"]["offset"].as_u64().unwrap();
    publish(&mut p, "SAY_BRIEF", "x", 1, 1).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut r = a.client().await;
    let ack = recover(&mut r, "JOIN_BRIEF", "x", from, &epoch).await;
    let outcome: (Value, Value) = (ack["recovered"].clone(), ack["reason"].clone());
    assert_eq!(outcome, (json!(false), json!("expired")), "{ack}");
    a.stop().await;
}

#[tokio::test]
async fn backend_publishes_into_a_history_topic_get_offsets_and_are_recovered() {
    let nats = NatsServer::start().await;
    let a = replica(&nats, "a").await;
    let b = replica(&nats, "b").await;
    nats.wait_for_subscription("sb.test.hist.t.room.*").await;
    let mut c = a.client().await;
    let (start, epoch) = join(&mut c, "k").await;
    let backend = nats.client().await;
    // Sent as requests, each answered once stored: the backend keeps its order.
    let mut answers = Vec::new();
    for body in [
        json!({"type": "SAID", "payload": {"id": "k", "n": 1}}),
        json!({"type": "SAID", "payload": {"id": "k", "n": "not a number"}}),
        json!({"type": "SAID", "payload": {"id": "k", "n": 2}}),
    ] {
        let reply = backend
            .request("sb.test.hist.t.room.k", body.to_string().into())
            .await
            .unwrap();
        answers.push(serde_json::from_slice::<Value>(&reply.payload).unwrap());
    }
    assert_eq!(answers[1], json!({"error": "invalid_payload"}));
    assert_eq!(answers[0]["epoch"], epoch.as_str(), "{answers:?}");
    let got = said(&mut c, 2).await;
    assert_eq!(
        got.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        [1, 2],
        "the invalid one is dropped"
    );
    assert!(got[0].1 > start && got[1].1 > got[0].1, "{got:?}");
    let offsets = (answers[0]["offset"].as_u64(), answers[2]["offset"].as_u64());
    assert_eq!(offsets, (Some(got[0].1), Some(got[1].1)), "{answers:?}");
    // Stored once (by one replica of the queue group), so recoverable from anywhere.
    let mut r = b.client().await;
    let ack = recover(&mut r, "JOIN", "k", start, &epoch).await;
    assert_eq!(ack["recovered"], true, "{ack}");
    assert_eq!(said(&mut r, 2).await, got);
    expect_no_more_said(&mut r, Duration::from_millis(300)).await;
    let rejected =
        |m: &str| m.contains("switchboard_bus_rejected_total{reason=\"invalid_payload\"} 1");
    let (ma, mb) = (a.metrics().await, b.metrics().await);
    assert!(
        rejected(&ma) ^ rejected(&mb),
        "counted once, by the replica that checked it"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn presence_spans_replicas_with_join_and_leave_events() {
    let nats = NatsServer::start().await;
    let a = replica(&nats, "a").await;
    let b = replica(&nats, "b").await;
    let mut x = a.client().await;
    join(&mut x, "p").await;
    let mut y = b.client().await;
    join(&mut y, "p").await;
    let joined = x.recv().await;
    assert_eq!(joined["type"], "$ws:join", "{joined}");
    assert_eq!(joined["payload"]["connectionId"], y.open["connectionId"]);
    let members = x.call("MEMBERS", "m", json!({"id": "p"})).await;
    assert_eq!(members["payload"]["count"], 2, "{members}");
    y.call("LEAVE", "l", json!({"id": "p"})).await;
    let left = x.recv().await;
    assert_eq!(left["type"], "$ws:leave", "{left}");
    assert_eq!(left["payload"]["userId"], y.open["user"]["id"]);
    let members = x.call("MEMBERS", "m2", json!({"id": "p"})).await;
    assert_eq!(members["payload"]["count"], 1, "{members}");
    a.stop().await;
    b.stop().await;
}

/// A replica killed with SIGKILL renews no lease: within two heartbeat intervals
/// (here 2 s; the test allows one more second for a loaded machine) the others drop
/// its members and announce their leave.
#[tokio::test]
async fn the_members_of_a_killed_replica_leave_within_two_heartbeats() {
    let nats = NatsServer::start().await;
    let app = with(
        HISTORY_APP,
        &[(
            "heartbeat: {intervalSeconds: 25, timeoutSeconds: 10}",
            "heartbeat: {intervalSeconds: 2, timeoutSeconds: 2}",
        )],
    );
    let a = replica_of(&app, &nats, "a").await;
    let mut b = ReplicaProcess::start(&app, &nats, "doomed", Some("debug")).await;
    let mut on_b = Client::connect(&b.running.ws).await;
    join(&mut on_b, "k").await;
    let mut on_a = a.client().await;
    join(&mut on_a, "k").await;
    let mut members = json!(null);
    for _ in 0..50 {
        members = on_a.call("MEMBERS", "m", json!({"id": "k"})).await;
        // The join of b's member comes before the answer that counts it.
        while members["type"] == "$ws:join" {
            members = on_a.recv().await;
        }
        if members["payload"]["count"] == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(members["payload"]["count"], 2, "{members}");
    b.running.child.kill().await.unwrap();
    let killed = std::time::Instant::now();
    let left = on_a
        .try_recv(Duration::from_secs(6))
        .await
        .expect("a leave for the dead replica's member");
    assert_eq!(left["type"], "$ws:leave", "{left}");
    assert_eq!(left["payload"]["connectionId"], on_b.open["connectionId"]);
    assert!(
        killed.elapsed() <= Duration::from_secs(5),
        "{:?}",
        killed.elapsed()
    );
    let members = on_a.call("MEMBERS", "m2", json!({"id": "k"})).await;
    assert_eq!(members["payload"]["count"], 1, "{members}");
    a.stop().await;
}

/// A replica as a process of its own: its sockets are not the test's (10,000 clients
/// and their server ends would not fit one process's file limit), and it can be killed.
struct ReplicaProcess {
    running: crate::binary::Running,
    /// Its app file and secrets, removed on drop.
    dir: std::path::PathBuf,
}

impl ReplicaProcess {
    /// Starts `app` as `instance` on `nats`, logging at `log` (`None`: the default).
    async fn start(app: &str, nats: &NatsServer, instance: &str, log: Option<&str>) -> Self {
        let (dir, app_path, secrets) = app_files_in_temp_dir(app);
        let (app_path, secrets, url) = (
            app_path.display().to_string(),
            secrets.display().to_string(),
            nats.url(),
        );
        let args = [
            "--app",
            &app_path,
            "--secrets-dir",
            &secrets,
            "--nats-url",
            &url,
            "--instance",
            instance,
        ];
        let running = crate::binary::start_binary_logging(&args, log).await;
        Self { running, dir }
    }
}

impl Drop for ReplicaProcess {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// 10,000 members of one topic, half on each replica: every replica answers all of
/// them, in pages of at most 1000 that together hold each member exactly once.
#[tokio::test]
async fn ten_thousand_members_on_two_replicas_page_through_in_thousands() {
    use futures_util::StreamExt;

    const MEMBERS: usize = 10_000;
    let nats = NatsServer::start().await;
    let app = with(
        HISTORY_APP,
        &[
            (
                "limits: {",
                "limits: {maxConnections: 20000, maxConnectionsPerIp: 20000, ",
            ),
            (
                "  routes:\n",
                "    - {pattern: \"crowd:{id}\", presence: {joinLeave: false}}\n  routes:\n    \
                 - {type: JOIN_CROWD, payload: {type: object, properties: {id: {type: string}}}, subscribe: {topic: \"crowd:{id}\"}}\n    \
                 - {type: CROWD, payload: {type: object, properties: {id: {type: string}, cursor: {type: string}}}, presence: {topic: \"crowd:{id}\"}}\n",
            ),
        ],
    );
    let a = ReplicaProcess::start(&app, &nats, "a", None).await;
    let b = ReplicaProcess::start(&app, &nats, "b", None).await;
    let urls = [a.running.ws.clone(), b.running.ws.clone()];
    let members: Vec<Client> = futures_util::stream::iter(0..MEMBERS)
        .map(|i| {
            let url = urls[i % 2].clone();
            async move {
                let mut c = Client::connect(&url).await;
                let ack = c.call("JOIN_CROWD", "j", json!({"id": "all"})).await;
                assert_eq!(ack["type"], "$ws:ack", "{ack}");
                c
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let expected: std::collections::HashSet<String> = members
        .iter()
        .map(|c| c.open["connectionId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(expected.len(), MEMBERS);

    for url in &urls {
        let mut asker = Client::connect(url).await;
        // The other replica's members arrive in batched deltas.
        let mut first = json!(null);
        for _ in 0..100 {
            first = asker.call("CROWD", "m", json!({"id": "all"})).await;
            if first["payload"]["count"] == MEMBERS {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(first["payload"]["count"], MEMBERS, "via {url}");
        let mut seen = std::collections::HashSet::new();
        let mut page = first;
        let mut pages = 0;
        loop {
            pages += 1;
            let listed = page["payload"]["members"].as_array().unwrap();
            assert!(listed.len() <= 1000, "a page of {}", listed.len());
            for m in listed {
                let id = m["connectionId"].as_str().unwrap().to_owned();
                assert!(seen.insert(id), "listed twice: {m}");
            }
            let Some(cursor) = page["payload"]["cursor"].as_str().map(str::to_owned) else {
                break;
            };
            page = asker
                .call("CROWD", "m", json!({"id": "all", "cursor": cursor}))
                .await;
        }
        assert_eq!(pages, MEMBERS / 1000, "via {url}");
        assert_eq!(seen, expected, "via {url}");
    }
    drop(members);
}

#[tokio::test]
async fn a_slow_consumer_cut_off_recovers_on_another_replica() {
    let nats = NatsServer::start().await;
    let app = with(
        HISTORY_APP,
        &[("outboundQueueMessages: 4096", "outboundQueueMessages: 16")],
    );
    let a = replica_of(&app, &nats, "a").await;
    let b = replica_of(&app, &nats, "b").await;
    crate::history::slow_consumer_recovers(&a, &b).await;
    a.stop().await;
    b.stop().await;
}
