//! Purpose-built hostile plugins: each misbehaviour is contained, the right
//! limit is reported, the error policy applies, and the next call is served.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use switchyard_host::config::OnError;
use switchyard_host::plugin::set::AUTHORIZER_FAILED;
use switchyard_host::plugin::wit::{authorizer, types};
use switchyard_host::plugin::{
    AuthAction, AuthDecision, CallError, Delivery, LoadError, LoadOptions, LoadedPlugin,
    RouteOutcome,
};
use switchyard_host::routing::{Event, EventId, Topic};
use switchyard_host::subject::Subject;

fn hostile(memory_mb: u32) -> LoadedPlugin {
    hostile_within(memory_mb, Duration::from_millis(10))
}

fn hostile_within(memory_mb: u32, timeout: Duration) -> LoadedPlugin {
    let mut opts = LoadOptions::new("hostile", switchyard_fixtures::hostile());
    opts.memory_mb = memory_mb;
    opts.timeout = timeout;
    LoadedPlugin::load(&engine(), Some(cache()), opts).expect("load hostile")
}

fn subscribe(topic: &str) -> authorizer::Action {
    authorizer::Action::Subscribe(types::Topic {
        name: topic.to_owned(),
    })
}

fn subject() -> types::Subject {
    switchyard_host::plugin::set::wit_subject(&Subject::new("u", "s"))
}

fn assert_serves_next_call(p: &LoadedPlugin) {
    let d = p
        .authorize(&subject(), &[subscribe("fine")])
        .expect("next call served");
    assert!(matches!(d[..], [authorizer::Decision::Allow]));
}

#[test]
fn an_infinite_loop_times_out_and_the_next_call_is_served() {
    let p = hostile(16);
    let err = p
        .authorize(&subject(), &[subscribe("loop")])
        .expect_err("must not return");
    assert_eq!(err, CallError::Timeout { timeout_ms: 10 });
    assert_eq!(p.metrics().timeouts.load(Ordering::Relaxed), 1);
    assert_serves_next_call(&p);
}

#[test]
fn a_call_is_stopped_for_the_cpu_it_used_not_the_time_it_waited_for_a_core() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use switchyard_host::plugin::budget::thread_cpu_time;
    let p = hostile(16);
    assert_serves_next_call(&p);
    // More busy threads than cores: the call's thread gets a fraction of
    // one, as plugin threads do beside a reload's compilation.
    let stop = Arc::new(AtomicBool::new(false));
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let hogs: Vec<_> = (0..4 * cores)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::black_box(0u64);
                }
            })
        })
        .collect();
    let before = thread_cpu_time();
    let err = p
        .authorize(&subject(), &[subscribe("loop")])
        .expect_err("must not return");
    let ran = thread_cpu_time() - before;
    stop.store(true, Ordering::Relaxed);
    for h in hogs {
        h.join().expect("hog");
    }
    assert_eq!(err, CallError::Timeout { timeout_ms: 10 });
    // Stopped by the wall clock it would have run a fraction of its 10 ms.
    assert!(
        ran >= Duration::from_millis(10),
        "stopped after running {ran:?}"
    );
}

#[test]
fn unbounded_allocation_hits_the_memory_cap_and_the_next_call_is_served() {
    // Growing to the cap takes a few milliseconds of host calls (more on a
    // busy machine, in a debug build): the deadline must not come first.
    let p = hostile_within(8, Duration::from_secs(5));
    let err = p
        .authorize(&subject(), &[subscribe("alloc")])
        .expect_err("must not return");
    assert_eq!(err, CallError::MemoryLimit { memory_mb: 8 });
    assert_eq!(p.metrics().memory_limits.load(Ordering::Relaxed), 1);
    assert_serves_next_call(&p);
}

#[test]
fn a_panic_traps_and_the_poisoned_instance_is_replaced() {
    let p = hostile(16);
    assert_serves_next_call(&p);
    let instances = p.metrics().instantiations.load(Ordering::Relaxed);
    let err = p
        .authorize(&subject(), &[subscribe("trap")])
        .expect_err("must trap");
    assert!(matches!(err, CallError::Trap(_)), "{err:?}");
    assert_eq!(p.metrics().traps.load(Ordering::Relaxed), 1);
    assert_serves_next_call(&p);
    assert_eq!(
        p.metrics().instantiations.load(Ordering::Relaxed),
        instances + 1,
        "the trapped instance was discarded and a fresh one made"
    );
}

#[test]
fn writing_to_stderr_then_panicking_is_contained() {
    let p = hostile(16);
    let err = p
        .authorize(&subject(), &[subscribe("stderr")])
        .expect_err("must trap");
    assert!(matches!(err, CallError::Trap(_)), "{err:?}");
    assert_serves_next_call(&p);
}

#[test]
fn healthy_instances_are_reused_between_calls() {
    let p = hostile(16);
    for _ in 0..20 {
        assert_serves_next_call(&p);
    }
    assert_eq!(p.metrics().instantiations.load(Ordering::Relaxed), 1);
    assert_eq!(p.metrics().calls.load(Ordering::Relaxed), 20);
}

#[test]
fn a_burst_waits_for_the_instance_limit_instead_of_failing() {
    let mut opts = LoadOptions::new("hostile", switchyard_fixtures::hostile());
    opts.max_instances = 2;
    // A generous deadline: on a loaded machine a busy call must not time out.
    opts.timeout = Duration::from_secs(2);
    let p = LoadedPlugin::load(&engine(), Some(cache()), opts).expect("load");
    // Each call keeps its instance busy for milliseconds, so callers
    // beyond the limit must wait for one to be released.
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..5 {
                    let d = p
                        .authorize(&subject(), &[subscribe("slow")])
                        .expect("served after waiting");
                    assert!(matches!(d[..], [authorizer::Decision::Allow]));
                    assert!(p.live_instances() <= 2);
                }
            });
        }
    });
    assert_eq!(p.metrics().calls.load(Ordering::Relaxed), 40);
    assert!(p.metrics().instantiations.load(Ordering::Relaxed) <= 2);
}

fn topic(s: &str) -> Topic {
    Topic::parse(s).expect("topic")
}

#[test]
fn authorization_fails_closed_when_the_authorizer_breaks() {
    let set = load(&[spec("hostile", &switchyard_fixtures::hostile(), &[">"], "")]).expect("load");
    let who = Subject::new("u", "s");
    for bad in ["loop", "trap", "alloc"] {
        let d = set.authorize(
            &who,
            &[AuthAction::Subscribe(topic(bad)), AuthAction::Connect],
        );
        assert_eq!(
            d[0],
            AuthDecision::Deny(AUTHORIZER_FAILED.to_owned()),
            "{bad}"
        );
        // The whole batch was one failed call: everything in it is denied.
        assert_eq!(
            d[1],
            AuthDecision::Deny(AUTHORIZER_FAILED.to_owned()),
            "{bad}"
        );
    }
    assert_eq!(
        set.authorize(&who, &[AuthAction::Subscribe(topic("ok"))]),
        [AuthDecision::Allow]
    );
}

fn event(t: &str) -> Event {
    Event::new(EventId { epoch: 0xe, seq: 1 }, topic(t), b"{}".to_vec())
}

#[test]
fn routing_and_transform_failures_follow_on_error() {
    let mut drop_spec = spec("hostile", &switchyard_fixtures::hostile(), &[">"], "");
    drop_spec.on_error = OnError::Drop;
    let drop_set = load(&[drop_spec.clone()]).expect("load");
    let mut pass_spec = drop_spec;
    pass_spec.on_error = OnError::Pass;
    let pass_set = load(&[pass_spec]).expect("load");

    let events = [event("trap"), event("ok")];
    assert_eq!(drop_set.route(&events)[0], RouteOutcome::Drop);
    assert_eq!(pass_set.route(&events)[0], RouteOutcome::AsPublished);
    // A failed batch fails every event in it under `drop`.
    assert_eq!(drop_set.route(&events)[1], RouteOutcome::Drop);
    assert_eq!(
        drop_set.route(&[event("ok")]),
        [RouteOutcome::Deliver {
            topics: vec!["ok".into()],
            users: vec![]
        }]
    );

    let who = Subject::new("u", "s");
    let (a, b) = (drop_set.audience(&who), pass_set.audience(&who));
    assert_eq!(
        drop_set.transform(&event("loop"), &[&a]),
        [Delivery::Withheld]
    );
    assert_eq!(
        pass_set.transform(&event("loop"), &[&b]),
        [Delivery::Original]
    );
    assert_eq!(
        drop_set.transform(&event("ok"), &[&a]),
        [Delivery::Original]
    );
}

#[test]
fn a_probe_slower_than_the_call_deadline_is_not_a_refusal() {
    // The probe asks whether the plugin works, not how fast a first call
    // is: on a loaded machine one can miss a 10 ms deadline by scheduling.
    let set = load(&[spec(
        "hostile",
        &switchyard_fixtures::hostile(),
        &[">"],
        "slow_probe_ms = 40",
    )]);
    assert!(set.is_ok(), "{:?}", set.err());
    // Past the probe, calls have the call deadline again (10 ms, not the
    // probe's 2 s): a spinning call is cut off well before the probe's.
    let set = set.expect("loaded");
    let p = set.get("hostile").expect("the hostile plugin");
    let started = std::time::Instant::now();
    let err = p
        .authorize(&subject(), &[subscribe("loop")])
        .expect_err("must not return");
    assert_eq!(err, CallError::Timeout { timeout_ms: 10 });
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "cut off after {:?}: the probe's deadline stayed",
        started.elapsed()
    );
}

#[test]
fn a_plugin_whose_config_it_rejects_is_refused_at_load() {
    let err = load(&[spec(
        "hostile",
        &switchyard_fixtures::hostile(),
        &[">"],
        "refuse = true",
    )])
    .err()
    .expect("refused");
    assert!(matches!(err, LoadError::Probe { .. }), "{err}");
    let redact = load(&[spec("redact", &switchyard_fixtures::redact(), &[">"], "")]);
    assert!(
        matches!(redact, Err(LoadError::Probe { .. })),
        "redact needs `fields`"
    );
}

#[test]
fn a_component_importing_an_unknown_interface_is_refused() {
    let err = load(&[spec(
        "smuggler",
        &switchyard_fixtures::hostile_import(),
        &[">"],
        "",
    )])
    .err()
    .expect("refused");
    match err {
        LoadError::UnknownImport { import, .. } => assert_eq!(import, "evil:net/socket"),
        other => panic!("wrong error: {other}"),
    }
}

#[test]
fn components_of_the_wrong_world_and_non_components_are_refused() {
    let err = load(&[spec("cmd", &switchyard_fixtures::wrong_world(), &[">"], "")])
        .err()
        .expect("refused");
    assert!(
        matches!(err, LoadError::WrongWorld { ref exports, .. } if exports.contains("wasi:cli/run")),
        "{err}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let text = dir.path().join("text.wasm");
    std::fs::write(&text, "not wasm").expect("write");
    assert!(matches!(
        load(&[spec("t", &text, &[">"], "")]),
        Err(LoadError::NotWasm { .. })
    ));
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").expect("write");
    assert!(matches!(
        load(&[spec("c", &core, &[">"], "")]),
        Err(LoadError::CoreModule { .. })
    ));
    let missing = dir.path().join("missing.wasm");
    assert!(matches!(
        load(&[spec("m", &missing, &[">"], "")]),
        Err(LoadError::Read { .. })
    ));
}

#[test]
fn config_may_not_enable_an_interface_the_component_lacks() {
    use switchyard_host::plugin::Interface;
    let s = with_interfaces(
        spec("acl", &switchyard_fixtures::acl(), &[">"], ACL_CONFIG),
        &[Interface::Router],
    );
    assert!(matches!(
        load(&[s]),
        Err(LoadError::MissingInterface { .. })
    ));
}

#[test]
fn a_plugin_sees_no_environment_files_or_network() {
    let p = hostile(16);
    let events = [switchyard_host::plugin::set::wit_event(&event("sandbox"))];
    let out = p.route(&events).expect("route");
    let switchyard_host::plugin::wit::router::RouteDecision::Deliver(r) = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(
        r.users,
        [
            "env=0",
            "args=0",
            "fs_root=false",
            "fs_file=false",
            "fs_write=false",
            "net=false",
            "dns=false"
        ]
    );
}
