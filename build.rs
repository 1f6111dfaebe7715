//! Test variants that need something besides Rust — a PostgreSQL server, a Python with the
//! Standard Webhooks library, Node, Chromium with chromedriver — are compiled as ignored when it is not
//! configured, so the test runner's summary counts them as ignored instead of passed (Rust's
//! runner cannot skip a test once it runs). Nothing here changes the `herald` binary, but a
//! changed or added migration rebuilds it: `sqlx::migrate!` embeds `migrations/` when the crate
//! compiles, and without this a build after a new migration alone kept the old set.

use std::path::Path;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=migrations");
    variant("herald_test_postgres", "HERALD_TEST_POSTGRES_URL", |url| !url.trim().is_empty());
    variant("herald_test_python", "HERALD_TEST_PYTHON", |python| !python.trim().is_empty());
    variant("herald_test_node", "HERALD_TEST_NODE", |node| !node.trim().is_empty());
    variant("herald_test_browser", "HERALD_TEST_CHROMEDRIVER", |driver| Path::new(driver).exists());
}

/// Sets `cfg` when the environment variable `var` passes `usable` (chromedriver also counts when
/// the variable is unset and `/usr/bin/chromedriver` exists).
fn variant(cfg: &str, var: &str, usable: impl Fn(&str) -> bool) {
    println!("cargo::rustc-check-cfg=cfg({cfg})");
    println!("cargo::rerun-if-env-changed={var}");
    let value = match std::env::var(var) {
        Ok(value) => value,
        Err(_) if var == "HERALD_TEST_CHROMEDRIVER" => "/usr/bin/chromedriver".to_owned(),
        Err(_) => String::new(),
    };
    if usable(&value) {
        println!("cargo::rustc-cfg={cfg}");
    }
}
