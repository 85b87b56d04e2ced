//! `switchyard plugin check` and `switchyard plugin test`, run as a user runs them.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};

fn switchyard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run switchyard")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn check_lists_the_interfaces_and_imports_of_each_example() {
    for (file, interface) in [
        (switchyard_fixtures::acl(), "authorizer"),
        (switchyard_fixtures::chat_router(), "router"),
        (switchyard_fixtures::redact(), "transformer"),
    ] {
        let out = switchyard(&["plugin", "check", path(&file)]);
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            stdout.contains(&format!("interfaces: {interface}")),
            "{stdout}"
        );
        assert!(stdout.contains("switchyard:plugin/host@0.1.0"), "{stdout}");
        assert!(stdout.contains("sha256:"), "{stdout}");
    }
}

#[test]
fn check_refuses_non_components_wrong_worlds_and_unknown_imports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, "hello").expect("write");
    let cases = [
        (junk, "is not a WebAssembly file"),
        (
            switchyard_fixtures::wrong_world(),
            "exports none of the Switchyard interfaces",
        ),
        (
            switchyard_fixtures::hostile_import(),
            "imports `evil:net/socket`",
        ),
    ];
    for (file, message) in cases {
        let out = switchyard(&["plugin", "check", path(&file)]);
        assert!(!out.status.success());
        let stderr = text(&out.stderr);
        assert!(stderr.contains(message), "{stderr}");
    }
}

fn write_json(dir: &Path, name: &str, v: &Value) -> String {
    let p = dir.join(name);
    std::fs::write(&p, v.to_string()).expect("write");
    p.to_string_lossy().into_owned()
}

fn run_test(file: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["plugin", "test", path(file)];
    args.extend_from_slice(extra);
    let out = switchyard(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json output")
}

#[test]
fn test_runs_each_example_and_prints_its_decision() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let room = write_json(
        d,
        "room.json",
        &json!({"topic": "chat.room.42", "data": {"text": "hi", "mentions": ["bob"]}, "sender": "alice"}),
    );
    let member = write_json(d, "member.json", &json!({"sub": "alice", "rooms": ["42"]}));
    let acl_config = d.join("acl.toml");
    std::fs::write(
        &acl_config,
        "rules = [{ topic = \"chat.room.{r}\", claim = \"rooms\", claim_value = \"{r}\" }]",
    )
    .expect("write");

    let acl = run_test(
        &switchyard_fixtures::acl(),
        &[
            "--event",
            &room,
            "--subject",
            &member,
            "--config",
            path(&acl_config),
        ],
    );
    assert_eq!(acl["authorizer"]["subscribe"]["decision"], "allow", "{acl}");
    assert_eq!(acl["authorizer"]["connect"]["decision"], "allow");
    let stranger = write_json(d, "stranger.json", &json!({"sub": "eve"}));
    let acl = run_test(
        &switchyard_fixtures::acl(),
        &[
            "--event",
            &room,
            "--subject",
            &stranger,
            "--config",
            path(&acl_config),
        ],
    );
    assert_eq!(acl["authorizer"]["publish"]["decision"], "deny", "{acl}");

    let router = run_test(&switchyard_fixtures::chat_router(), &["--event", &room]);
    assert_eq!(
        router["router"],
        json!({"decision": "deliver", "topics": ["chat.room.42"], "users": ["bob"]})
    );

    let contact = write_json(
        d,
        "contact.json",
        &json!({"topic": "crm.c", "data": {"email": "a@b.c", "n": 1}}),
    );
    let redact_config = d.join("redact.toml");
    std::fs::write(&redact_config, "fields = [\"email\"]").expect("write");
    let redact = run_test(
        &switchyard_fixtures::redact(),
        &["--event", &contact, "--config", path(&redact_config)],
    );
    assert_eq!(redact["transformer"]["audience"], "public");
    assert_eq!(
        redact["transformer"]["result"]["replace"]["data"],
        json!({"email": "***", "n": 1})
    );
}

#[test]
fn test_reports_a_contained_failure_and_guest_output_reaches_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = write_json(
        dir.path(),
        "e.json",
        &json!({"topic": "stderr", "data": {}}),
    );
    let out = switchyard(&[
        "plugin",
        "test",
        path(&switchyard_fixtures::hostile()),
        "--event",
        &e,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["authorizer"]["decision"], "deny", "fails closed: {v}");
    assert_eq!(v["authorizer"]["error"]["kind"], "trap");
    assert_eq!(v["router"]["error"]["kind"], "trap");
    let log = text(&out.stderr);
    assert!(
        log.contains("hostile plugin writing to stderr"),
        "guest stderr in the log: {log}"
    );
    assert!(
        log.contains("asked to trap after writing to stderr"),
        "panic message in the log: {log}"
    );

    let e = write_json(
        dir.path(),
        "loop.json",
        &json!({"topic": "loop", "data": {}}),
    );
    let v: Value = serde_json::from_slice(
        &switchyard(&[
            "plugin",
            "test",
            path(&switchyard_fixtures::hostile()),
            "--event",
            &e,
        ])
        .stdout,
    )
    .expect("json");
    assert_eq!(v["router"]["error"]["kind"], "timeout", "{v}");
}

#[test]
fn test_refuses_a_malformed_event_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = write_json(dir.path(), "bad.json", &json!({"topik": "x"}));
    let out = switchyard(&[
        "plugin",
        "test",
        path(&switchyard_fixtures::acl()),
        "--event",
        &e,
    ]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("topik"), "{}", text(&out.stderr));
}
