//! Builds every plugin the tests load, for wasm32-wasip2, with
//! `scripts/build-plugins` (which installs the target if it is missing).

use std::path::PathBuf;
use std::process::Command;

const PACKAGES: &[&str] = &[
    "acl",
    "chat-router",
    "redact",
    "hostile",
    "hostile-import",
    "wrong-world",
];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("workspace root").to_path_buf();
    for dir in [
        "wit",
        "guest-sdk",
        "plugins",
        "tests/fixtures",
        "scripts/build-plugins",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    let status = Command::new("bash")
        .arg(root.join("scripts/build-plugins"))
        .args(PACKAGES)
        .status()
        .expect("running scripts/build-plugins");
    if !status.success() {
        panic!(
            "building the test plugins for wasm32-wasip2 failed ({status}); \
             is the target installed? `rustup target add wasm32-wasip2`"
        );
    }
    let out = root.join("target/wasm/wasm32-wasip2/plugin");
    println!("cargo:rustc-env=SWITCHYARD_FIXTURE_DIR={}", out.display());
}
