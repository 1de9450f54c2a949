//! Smoke runs of every `chatroom-bench` scenario against a real server, on both
//! stores: correctness only (nothing lost, duplicated or out of order; no failures).
//! Speed is measured by running the program itself (BENCHMARKS.md), never here.

use chatroom_testkit as common;
use chatroom_testkit::on_both_stores;

use serde_json::Value;

use common::{Backend, TestApp, TestServer};

on_both_stores!(every_bench_scenario_runs_clean);

/// Runs the bench against `server` with `args`; its JSON report.
async fn bench(server: &TestServer, args: &[&str]) -> Value {
    common::bench(&server.addr.to_string(), args).await
}

async fn every_bench_scenario_runs_clean(backend: Backend) {
    let app = TestApp::start(backend).await;
    let pid = std::process::id().to_string();

    let fanout = bench(
        app.server(),
        &[
            "fanout",
            "--subscribers",
            "20",
            "--connections",
            "2",
            "--duration",
            "1",
            "--lead",
            "16",
            "--server-pid",
            &pid,
        ],
    )
    .await;
    assert_eq!(fanout["scenario"], "fanout");
    common::assert_fanout_clean(&fanout);
    let published = fanout["published"].as_u64().unwrap();
    assert!(published > 0);
    assert_eq!(fanout["delivered"].as_u64().unwrap(), published * 20);
    assert!(fanout["deliveries_per_sec"].as_f64().unwrap() > 0.0);
    assert!(fanout["latency_ms"]["p99"].as_f64().is_some());
    assert!(fanout["server_cpu_us_per_delivery"].as_f64().unwrap() >= 0.0);

    let paced = bench(
        app.server(),
        &[
            "fanout",
            "--subscribers",
            "5",
            "--connections",
            "1",
            "--duration",
            "1",
            "--rate",
            "20",
        ],
    )
    .await;
    let published = paced["published"].as_u64().unwrap();
    assert!(
        (15..=25).contains(&published),
        "about 20 messages at 20/s, got {published}"
    );
    assert_eq!(paced["lost"].as_u64(), Some(0));

    for transport in [&[][..], &["--unary"][..]] {
        let mut args = vec![
            "ingest",
            "--rooms",
            "3",
            "--duration",
            "1",
            "--connections",
            "2",
        ];
        args.extend_from_slice(transport);
        let ingest = bench(app.server(), &args).await;
        assert!(ingest["acked"].as_u64().unwrap() > 0);
        assert_eq!(ingest["failed"].as_u64(), Some(0));
        assert!(ingest["acked_per_sec"].as_f64().unwrap() > 0.0);
    }

    let joins = bench(
        app.server(),
        &["joins", "--users", "20", "--concurrency", "4"],
    )
    .await;
    assert_eq!(joins["operations"].as_u64(), Some(20));
    assert_eq!(joins["failed"].as_u64(), Some(0));

    let idle = bench(
        app.server(),
        &[
            "idle",
            "--subscribers",
            "20",
            "--connections",
            "2",
            "--server-pid",
            &pid,
            "--burst",
            "5",
            "--settle",
            "0",
        ],
    )
    .await;
    assert_eq!(idle["subscribers"].as_u64(), Some(20));
    assert!(idle["server_kib_per_stream"].as_f64().is_some());
    assert!(idle["server_kib_per_stream_after_burst"].as_f64().is_some());

    // Many small rooms: every room's publisher reaches its own streams and no other.
    let rooms = bench(
        app.server(),
        &[
            "rooms",
            "--rooms",
            "5",
            "--streams-per-room",
            "3",
            "--connections",
            "2",
            "--rate",
            "10",
            "--duration",
            "1",
            "--settle",
            "0",
            "--idle-after",
            "0",
            "--server-pid",
            &pid,
        ],
    )
    .await;
    assert_eq!(rooms["scenario"], "rooms");
    let published = rooms["published"].as_u64().unwrap();
    assert!(
        (25..=60).contains(&published),
        "about 10 messages a second in each of 5 rooms, got {published}"
    );
    assert_eq!(rooms["delivered"].as_u64(), Some(published * 3));
    assert_eq!(rooms["lost"].as_u64(), Some(0));
    assert_eq!(rooms["out_of_order"].as_u64(), Some(0));
    for figure in [
        "server_kib_per_room",
        "server_kib_per_stream",
        "server_kib_per_room_after_traffic",
        "server_cpu_us_per_delivery",
    ] {
        assert!(rooms[figure].as_f64().is_some(), "{figure} reported");
    }
}
