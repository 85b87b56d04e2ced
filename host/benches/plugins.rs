//! Plugin call costs, measured side by side in one run: each example plugin
//! as a Wasm component on a warm instance, the same logic as native Rust,
//! instantiation from `InstancePre`, and a broadcast transform.
//!
//! `cargo bench -p switchyard-host --bench plugins` prints a table. Figures
//! are medians of several samples; compare the ratios, not the absolute
//! numbers, on a shared machine.

#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;
use switchyard_host::config::{OnError, PluginSpec};
use switchyard_host::plugin::set::{wit_event, wit_subject};
use switchyard_host::plugin::wit::{authorizer, types};
use switchyard_host::plugin::{EngineSettings, LoadOptions, LoadedPlugin, PluginEngine, PluginSet};
use switchyard_host::routing::{Event, EventId, Topic};
use switchyard_host::subject::Subject;
use switchyard_sdk::Plugin as _;

/// Median time per iteration over `samples` samples of `iters` iterations.
fn measure(samples: usize, iters: u32, mut f: impl FnMut()) -> Duration {
    // Warm up for ~100 ms: caches, branch predictors, CPU frequency.
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(100) {
        f();
    }
    let mut times: Vec<Duration> = (0..samples)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iters {
                f();
            }
            start.elapsed() / iters
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

struct Row {
    what: &'static str,
    wasm: Duration,
    native: Duration,
}

const ACL_CONFIG: &str = r#"{"default":"deny","rules":[
  {"topic":"chat.room.{room}","actions":["subscribe","publish"],"claim":"rooms","claim_value":"{room}"},
  {"topic":"admin.>","roles":["admin"]},
  {"topic":"user.{owner}","actions":["subscribe"],"user":"{owner}"}]}"#;
const REDACT_CONFIG: &str =
    r#"{"fields":["email","phone"],"reveal_roles":["support"],"staff_roles":["staff"]}"#;

fn load(engine: &PluginEngine, name: &str, path: std::path::PathBuf, config: &str) -> LoadedPlugin {
    let mut opts = LoadOptions::new(name, path);
    opts.config_json = config.to_owned();
    LoadedPlugin::load(engine, None, opts).unwrap()
}

/// A chat message of about 256 bytes of JSON.
fn chat_payload() -> serde_json::Value {
    json!({
        "text": "Hello everyone, the deploy is done and the dashboards look green. Ping me if anything looks off this afternoon, I will be around until five.",
        "mentions": ["bob", "carol"],
        "client_ts": 1763800000000u64,
        "room": "42"
    })
}

fn main() {
    let engine = PluginEngine::new(EngineSettings::default()).unwrap();
    let mut rows = Vec::new();
    let samples = 15;

    // --- acl: authorize one subscribe -----------------------------------------
    let acl = load(&engine, "acl", switchyard_fixtures::acl(), ACL_CONFIG);
    let alice = Subject::from_claims(
        "alice",
        "s1",
        json!({"rooms": ["41", "42"], "role": "member"})
            .as_object()
            .unwrap(),
    )
    .with_id(1);
    let wit_alice = wit_subject(&alice);
    let topic = types::Topic {
        name: "chat.room.42".into(),
    };
    let actions = [authorizer::Action::Subscribe(topic)];
    let wasm = measure(samples, 20_000, || {
        black_box(
            acl.authorize(black_box(&wit_alice), black_box(&actions))
                .unwrap(),
        );
    });
    let native_acl =
        acl::Acl::new(&switchyard_sdk::Config::from_json(ACL_CONFIG).unwrap()).unwrap();
    let sdk_alice = switchyard_sdk::Subject::new("alice").with_list_claim("rooms", ["41", "42"]);
    let sdk_action = switchyard_sdk::Action::subscribe("chat.room.42");
    let native = measure(samples, 200_000, || {
        black_box(native_acl.authorize(black_box(&sdk_alice), black_box(&sdk_action)));
    });
    rows.push(Row {
        what: "acl: authorize 1 subscribe (warm)",
        wasm,
        native,
    });

    // The same call when the instance does not hold the subject yet.
    let uncached = wit_subject(&alice.clone().with_id(0));
    let wasm_full_subject = measure(samples, 20_000, || {
        black_box(
            acl.authorize(black_box(&uncached), black_box(&actions))
                .unwrap(),
        );
    });

    // --- chat-router: route one ~256-byte event ---------------------------------
    let router = load(
        &engine,
        "chat-router",
        switchyard_fixtures::chat_router(),
        "{}",
    );
    let data = chat_payload().to_string().into_bytes();
    let payload_len = data.len();
    let event = Event::new(
        EventId { epoch: 0xe, seq: 1 },
        Topic::parse("chat.room.42").unwrap(),
        data.clone(),
    );
    let wit_events = [wit_event(&event)];
    let wasm = measure(samples, 20_000, || {
        black_box(router.route(black_box(&wit_events)).unwrap());
    });
    let native_router = chat_router::ChatRouter::new(&switchyard_sdk::Config::empty()).unwrap();
    let sdk_event = switchyard_sdk::Event::bytes("chat.room.42", data.clone());
    let native = measure(samples, 200_000, || {
        black_box(native_router.route(black_box(&sdk_event)));
    });
    rows.push(Row {
        what: "chat-router: route 1 event (warm)",
        wasm,
        native,
    });

    // A batch of 32 events in one call: the fixed cost is paid once.
    let batch: Vec<types::Event> = (0..32).map(|_| wit_event(&event)).collect();
    let wasm_batch = measure(samples, 1_000, || {
        black_box(router.route(black_box(&batch)).unwrap());
    }) / 32;

    // --- redact: transform one event for one audience ---------------------------
    let redact = load(
        &engine,
        "redact",
        switchyard_fixtures::redact(),
        REDACT_CONFIG,
    );
    let contact = json!({"name": "Ann", "email": "ann@example.com", "phone": "+1 555 0100", "notes": "x".repeat(150)});
    let cevent = Event::new(
        EventId { epoch: 0xe, seq: 2 },
        Topic::parse("crm.contact").unwrap(),
        contact.to_string().into_bytes(),
    );
    let wit_cevent = wit_event(&cevent);
    let audience = ["public".to_owned()];
    let wasm = measure(samples, 20_000, || {
        black_box(
            redact
                .transform(black_box(&wit_cevent), black_box(&audience))
                .unwrap(),
        );
    });
    let native_redact =
        redact::Redact::new(&switchyard_sdk::Config::from_json(REDACT_CONFIG).unwrap()).unwrap();
    let sdk_cevent = switchyard_sdk::Event::bytes("crm.contact", contact.to_string().into_bytes());
    let native = measure(samples, 100_000, || {
        black_box(native_redact.transform(black_box(&sdk_cevent), "public"));
    });
    rows.push(Row {
        what: "redact: transform 1 event, 1 audience (warm)",
        wasm,
        native,
    });

    println!(
        "\nPlugin call cost: Wasm component on a warm instance vs the same logic as native Rust"
    );
    println!("(route event payload: {payload_len} bytes; medians of {samples} samples)\n");
    println!("| operation | wasm µs | native µs | wasm/native |");
    println!("| --- | ---: | ---: | ---: |");
    for r in &rows {
        println!(
            "| {} | {:.2} | {:.3} | {:.1}× |",
            r.what,
            us(r.wasm),
            us(r.native),
            r.wasm.as_secs_f64() / r.native.as_secs_f64()
        );
    }
    println!(
        "| chat-router: route, per event in a batch of 32 | {:.2} | | |",
        us(wasm_batch)
    );
    println!(
        "| acl: authorize, subject sent in full (first call of a session on an instance) | {:.2} | | |",
        us(wasm_full_subject)
    );

    // --- instantiation from InstancePre ----------------------------------------
    println!("\nInstantiation from InstancePre (pooling allocator), median µs:\n");
    println!("| plugin | instantiate | warm call | instantiate / warm call |");
    println!("| --- | ---: | ---: | ---: |");
    for (name, plugin, warm) in [
        ("acl", &acl, rows[0].wasm),
        ("chat-router", &router, rows[1].wasm),
        ("redact", &redact, rows[2].wasm),
    ] {
        let inst = measure(samples, 300, || plugin.instantiate_fresh().unwrap());
        println!(
            "| {name} | {:.1} | {:.2} | {:.0}× |",
            us(inst),
            us(warm),
            inst.as_secs_f64() / warm.as_secs_f64()
        );
    }

    // --- broadcast: 10,000 recipients in two audiences --------------------------
    let spec = PluginSpec {
        name: "redact".into(),
        path: switchyard_fixtures::redact(),
        topics: vec!["crm.>".into()],
        interfaces: Vec::new(),
        timeout_ms: 10,
        memory_mb: 16,
        on_error: OnError::Drop,
        max_instances: Some(2),
        config: toml::from_str("fields = [\"email\", \"phone\"]\nreveal_roles = [\"support\"]")
            .unwrap(),
    };
    let set = PluginSet::load(&engine, None, &[spec], 2).unwrap();
    let sessions: Vec<_> = (0..10_000u64)
        .map(|i| {
            let roles = if i % 2 == 0 {
                json!(["support"])
            } else {
                json!([])
            };
            set.audience(&Subject::from_claims(
                &format!("u{i}"),
                "s",
                json!({"roles": roles}).as_object().unwrap(),
            ))
        })
        .collect();
    let mut distinct = sessions.clone();
    distinct.sort_by_key(|a| format!("{a:?}"));
    distinct.dedup();
    let refs: Vec<_> = distinct.iter().collect();
    let plugin = set.get("redact").unwrap();
    let before = plugin.metrics().calls.load(Ordering::Relaxed);
    black_box(set.transform(&cevent, &refs));
    let grouped_calls = plugin.metrics().calls.load(Ordering::Relaxed) - before;
    let grouped = measure(samples, 200, || {
        black_box(set.transform(black_box(&cevent), black_box(&refs)));
    });
    let per_recipient = measure(3, 1, || {
        for a in &sessions {
            black_box(set.transform(black_box(&cevent), std::slice::from_ref(&a)));
        }
    });
    println!(
        "\nBroadcast of one event to 10,000 sessions in {} audiences (redact):\n",
        distinct.len()
    );
    println!("| strategy | transform calls per event | CPU per event |");
    println!("| --- | ---: | ---: |");
    println!(
        "| by audience (Switchyard) | {grouped_calls} (answering {} audiences) | {:.1} µs |",
        distinct.len(),
        us(grouped)
    );
    println!(
        "| per recipient (naive) | 10000 | {:.1} µs |",
        us(per_recipient)
    );
    println!(
        "\nratio naive / by audience: {:.0}×",
        per_recipient.as_secs_f64() / grouped.as_secs_f64()
    );
}
