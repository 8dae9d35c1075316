//! The C header (`include/lodge_client.h`) is what cbindgen makes of `src/ffi.rs` now: a change
//! to the ABI that is not reflected in the header fails here.

#[test]
fn the_c_header_is_current() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let cfg = cbindgen::Config::from_file(format!("{dir}/cbindgen.toml")).unwrap();
    let mut fresh = Vec::new();
    cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(cfg)
        .generate()
        .expect("cbindgen reads src/ffi.rs")
        .write(&mut fresh);
    let path = format!("{dir}/include/lodge_client.h");
    if std::env::var_os("LODGE_BLESS").is_some() {
        std::fs::write(&path, &fresh).unwrap();
        return;
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "include/lodge_client.h is stale: run `LODGE_BLESS=1 cargo test -p lodge-client --test header` and commit it"
    );
    let h = String::from_utf8(fresh).unwrap();
    for f in [
        "lodge_call_join",
        "lodge_call_leave",
        "lodge_call_stats",
        "lodge_call_set_mute",
    ] {
        assert!(h.contains(f), "{f} is exported");
    }
    // The header's ABI version is the library's.
    assert!(
        h.contains(&format!(
            "#define LODGE_CLIENT_ABI {}\n",
            lodge_client::ffi::ABI
        )),
        "cbindgen.toml's LODGE_CLIENT_ABI must equal ffi::ABI ({})",
        lodge_client::ffi::ABI
    );
    assert_eq!(
        lodge_client::ffi::lodge_client_abi(),
        lodge_client::ffi::ABI
    );
}
