//! `relay.toml` and a tenant file as the operator (or a broken deployment tool) wrote
//! them: loading returns a configuration or a list of `file: key: message` problems, and
//! never panics. The first byte picks which file the rest of the input is.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;

/// A relay.toml that validates, for inputs that are a tenant file.
const RELAY: &str = "[state]\npath = \"state.db\"\nkey_file = \"state.key\"\n\
                     [sinks.out]\ntype = \"file\"\npath = \"out\"\n";

/// A tenant file that validates, for inputs that are relay.toml.
const TENANT: &str = "tenant_id = \"6b1e1f3c-1d2a-4c8e-9a7b-0c2d3e4f5a61\"\nsinks = [\"out\"]\n\
                      [auth]\nkind = \"client_secret\"\n\
                      client_id = \"0b4c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3\"\n\
                      client_secret = { env = \"SECRET\" }\n";

fuzz_target!(|data: &[u8]| {
    let Some((&which, text)) = data.split_first() else {
        return;
    };
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let (relay, tenant): (&[u8], &[u8]) = if which & 1 == 0 {
        (text, TENANT.as_bytes())
    } else {
        (RELAY.as_bytes(), text)
    };
    let tenants = dir.path().join("tenants.d");
    if std::fs::create_dir(&tenants).is_err()
        || std::fs::write(dir.path().join("relay.toml"), relay).is_err()
        || std::fs::write(tenants.join("contoso.toml"), tenant).is_err()
    {
        return;
    }
    let env: HashMap<String, String> = [
        ("SECRET", "s3cret"),
        ("HTTPS_PROXY", "http://10.0.0.1:3128"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    match relay_config::load(&relay_config::LoadOptions::new(
        dir.path().join("relay.toml"),
        &env,
    )) {
        Ok(config) => {
            let _ = format!("{config:?}");
        }
        Err(errors) => {
            assert!(!errors.problems().is_empty(), "an error without a problem");
            let _ = errors.to_string();
        }
    }
});
