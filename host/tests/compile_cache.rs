//! The compile cache: a restart deserializes instead of compiling.

mod common;

use common::engine;
use switchyard_host::plugin::{CompileCache, Interface, LoadOptions, LoadedPlugin};

fn cwasm_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("cache dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    files.sort();
    files
}

#[test]
fn a_second_load_takes_the_compiled_component_from_the_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = CompileCache::new(dir.path());
    let acl = LoadedPlugin::load(
        &engine(),
        Some(&cache),
        LoadOptions::new("acl", switchyard_fixtures::acl()),
    )
    .expect("load acl");
    let files = cwasm_files(dir.path());
    assert_eq!(files.len(), 1);
    let name = files[0]
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(name.starts_with(acl.sha256()), "{name}");

    // Plant acl's compilation under chat-router's digest: if the loader uses
    // the cache, the "chat-router" it gets is really an authorizer.
    let router_sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(
            std::fs::read(switchyard_fixtures::chat_router()).expect("read"),
        ))
    };
    let planted = dir.path().join(name.replacen(acl.sha256(), &router_sha, 1));
    std::fs::copy(&files[0], &planted).expect("plant");
    let loaded = LoadedPlugin::load(
        &engine(),
        Some(&cache),
        LoadOptions::new("chat", switchyard_fixtures::chat_router()),
    )
    .expect("load");
    assert_eq!(
        loaded.info().interfaces,
        [Interface::Authorizer, Interface::DirectAuthorizer]
    );
}

#[test]
fn a_corrupt_cache_entry_is_discarded_and_rebuilt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = CompileCache::new(dir.path());
    let opts = LoadOptions::new("router", switchyard_fixtures::chat_router());
    LoadedPlugin::load(&engine(), Some(&cache), opts.clone()).expect("first load");
    let entry = cwasm_files(dir.path()).pop().expect("entry");
    std::fs::write(&entry, b"garbage").expect("corrupt");
    let p = LoadedPlugin::load(&engine(), Some(&cache), opts).expect("second load");
    assert_eq!(p.info().interfaces, [Interface::Router]);
    assert!(
        std::fs::read(&entry).expect("rebuilt").len() > 1000,
        "entry rewritten"
    );
}
