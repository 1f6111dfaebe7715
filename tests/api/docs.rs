//! The documentation tells the truth: the README's walk-through runs as written against a real
//! `herald` and `herald receive`; every configuration key is in `docs/configuration.md`, whose
//! sample `herald.toml` holds the defaults; every link between the README, `docs/` and
//! `deploy/README.md` points at a file and heading that exist.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::free_port;

const BIN: &str = env!("CARGO_BIN_EXE_herald");
/// Where the walk-through's commands sit in the README.
const BEGIN: &str = "<!-- walkthrough:begin -->";
const END: &str = "<!-- walkthrough:end -->";
/// The walk-through's own addresses, replaced by free ports for the run.
const SERVER_ADDRESS: &str = "127.0.0.1:8080";
const RECEIVER_ADDRESS: &str = "127.0.0.1:9000";
/// Generous for a debug build on a busy machine: the run takes a few seconds.
const WALK_THROUGH_LIMIT: Duration = Duration::from_secs(180);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The ```sh blocks between the walk-through markers, in order.
fn walk_through_commands(readme: &str) -> String {
    let start = readme.find(BEGIN).expect("the README marks the walk-through's start");
    let end = readme.find(END).expect("the README marks the walk-through's end");
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in readme[start..end].lines() {
        match &mut current {
            None if line.trim_end() == "```sh" => current = Some(Vec::new()),
            None => {}
            Some(block) if line.trim_end() == "```" => {
                blocks.push(block.join("\n"));
                current = None;
            }
            Some(block) => block.push(line),
        }
    }
    assert!(current.is_none(), "a ```sh block of the walk-through is not closed");
    blocks.join("\n")
}

/// Kills a process group, whatever is left of it.
fn kill_group(pgid: u32) {
    let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pgid}")]).stderr(Stdio::null()).status();
}

#[test]
fn the_readme_walk_through_has_no_literal_ids_or_secrets() {
    let script = walk_through_commands(&read(&root().join("README.md")));
    let literal = literal_value(&script);
    assert!(literal.is_none(), "the walk-through's commands carry a literal value: {literal:?}");
    assert!(script.contains(SERVER_ADDRESS) && script.contains(RECEIVER_ADDRESS), "{script}");
}

/// A literal id (`dlv_01M…`), secret (`whsec_…`) or token (`hrld_…`) in a command, if any: the
/// commands must take them from shell variables so that they can be pasted as they are.
fn literal_value(script: &str) -> Option<String> {
    for word in script.split(|c: char| !(c.is_ascii_alphanumeric() || "_+/=".contains(c))) {
        for prefix in ["tnt_", "tok_", "ep_", "evt_", "dlv_", "att_"] {
            if let Some(rest) = word.strip_prefix(prefix)
                && rest.len() == 26
                && rest.chars().all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
            {
                return Some(word.to_owned());
            }
        }
        for prefix in ["whsec_", "hrld_"] {
            if word.strip_prefix(prefix).is_some_and(|rest| rest.len() >= 8) {
                return Some(word.to_owned());
            }
        }
    }
    None
}

#[test]
fn the_readme_walk_through_runs_as_written() {
    let readme = read(&root().join("README.md"));
    let server_port = free_port();
    let receiver_port = std::iter::repeat_with(free_port).find(|port| *port != server_port).expect("a port");
    let server = format!("127.0.0.1:{server_port}");
    let receiver = format!("127.0.0.1:{receiver_port}");
    let script =
        walk_through_commands(&readme).replace(SERVER_ADDRESS, &server).replace(RECEIVER_ADDRESS, &receiver);

    // `cd "$(mktemp -d)"` lands in this directory, where the test can read what was left.
    let tmp = tempfile::tempdir().expect("temp dir");
    let script_path = tmp.path().join("walk-through.sh");
    std::fs::write(&script_path, &script).expect("write the script");
    let stdout_path = tmp.path().join("stdout");
    let stderr_path = tmp.path().join("stderr");
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).expect("work dir");

    let bin_dir = Path::new(BIN).parent().expect("the binary's directory");
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut command = Command::new("bash");
    command
        .args(["-euo", "pipefail"])
        .arg(&script_path)
        .current_dir(tmp.path())
        .env("PATH", path)
        .env("TMPDIR", &work)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        // Its own process group, so that Herald and the receiver it starts go with it.
        .process_group(0);
    for (key, _) in std::env::vars() {
        // No settings of the caller's, and no proxy between curl and 127.0.0.1.
        if key.starts_with("HERALD_") || key == "RUST_LOG" || key.to_ascii_lowercase().ends_with("_proxy") {
            command.env_remove(key);
        }
    }
    let mut child = command.spawn().expect("bash runs");
    let pgid = child.id();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for bash") {
            break Some(status);
        }
        if started.elapsed() > WALK_THROUGH_LIMIT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    kill_group(pgid);
    let _ = child.wait();

    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let folder = std::fs::read_dir(&work)
        .expect("read the temp dir")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.join("herald.db").exists());
    let left = |name: &str| {
        folder.as_ref().and_then(|f| std::fs::read_to_string(f.join(name)).ok()).unwrap_or_default()
    };
    let report = format!(
        "--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- herald.log\n{}\n--- receiver.out\n{}",
        left("herald.log"),
        left("receiver.out")
    );
    let status = status
        .unwrap_or_else(|| panic!("the walk-through did not finish within {WALK_THROUGH_LIMIT:?}\n{report}"));
    assert!(status.success(), "the walk-through failed ({status})\n{report}");
    eprintln!("the walk-through ran in {:.1}s", started.elapsed().as_secs_f64());

    for expected in [
        "Admin token (shown once, store it now): hrld_",
        "idempotent-replayed: true",
        "\"status\": \"delivered\"",
        "\"error_kind\": \"connect\"",
        "HTTP/1.1 422",
        "\"field\": \"statuss\"",
        "\"lag_seconds\"",
        &format!("http://{server}/dashboard#token=hrld_"),
    ] {
        assert!(stdout.contains(expected), "the walk-through printed no `{expected}`\n{report}");
    }
    assert!(folder.is_some(), "the walk-through started Herald in a fresh folder\n{report}");
    // Both events reached the receiver, signed with the endpoint's secret, and were answered 200.
    let received: BTreeSet<String> = left("receiver.out")
        .lines()
        .filter(|line| line.contains(" workflow.completed verified ") && line.contains("answer=200"))
        .filter_map(|line| line.split(' ').next().map(str::to_owned))
        .collect();
    assert_eq!(received.len(), 2, "the receiver verified two events\n{report}");
}

/// Every key of `Config`, as `(file key, environment variable)`: `listen` and `HERALD_LISTEN`,
/// `[delivery] timeout` and `HERALD_DELIVERY__TIMEOUT`.
fn configuration_keys() -> Vec<(String, String)> {
    let defaults = serde_json::to_value(herald::config::Config::default()).expect("serialize the defaults");
    let mut keys = Vec::new();
    for (name, value) in defaults.as_object().expect("an object") {
        match value {
            Value::Object(section) => {
                for key in section.keys() {
                    keys.push((
                        format!("[{name}] {key}"),
                        format!("HERALD_{}__{}", name.to_uppercase(), key.to_uppercase()),
                    ));
                }
            }
            _ => keys.push((name.clone(), format!("HERALD_{}", name.to_uppercase()))),
        }
    }
    keys
}

/// The first ```toml block of `text`.
fn toml_block(text: &str) -> String {
    let start = text.find("```toml\n").expect("a sample herald.toml") + "```toml\n".len();
    let end = start + text[start..].find("\n```").expect("the sample's end");
    text[start..end].to_owned()
}

#[test]
fn every_configuration_key_is_in_the_configuration_reference() {
    let reference = read(&root().join("docs/configuration.md"));
    let keys = configuration_keys();
    assert!(keys.len() > 40, "{keys:?}");
    let rows: HashMap<String, &str> = reference
        .lines()
        .filter_map(|line| {
            let key = line.strip_prefix("| `")?.split('`').next()?;
            Some((key.to_owned(), line))
        })
        .collect();
    let sample = toml_block(&reference);
    let mut section = String::new();
    let mut in_sample = BTreeSet::new();
    for line in sample.lines() {
        let line = line.trim_start_matches("# ").trim();
        if let Some(name) = line.strip_prefix('[').and_then(|rest| rest.split(']').next()) {
            section = name.to_owned();
        } else if let Some((key, _)) = line.split_once(" = ") {
            let key = key.trim();
            in_sample.insert(if section.is_empty() { key.to_owned() } else { format!("[{section}] {key}") });
        }
    }
    for (key, env) in &keys {
        let row = rows.get(key).unwrap_or_else(|| panic!("docs/configuration.md has no row for `{key}`"));
        assert!(row.contains(&format!("`{env}`")), "the row of `{key}` does not name `{env}`: {row}");
        assert!(in_sample.contains(key), "the sample herald.toml does not show `{key}`");
    }
    // Nothing documented that Herald does not read.
    let known: BTreeSet<&String> = keys.iter().map(|(key, _)| key).collect();
    for key in rows
        .keys()
        .filter(|key| key.starts_with('[') || key.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
    {
        if rows[key].contains("`HERALD_") {
            assert!(
                known.contains(key),
                "docs/configuration.md documents `{key}`, which Herald does not read"
            );
        }
    }
}

#[test]
fn the_sample_configuration_holds_the_defaults() {
    let sample = toml_block(&read(&root().join("docs/configuration.md")));
    let parsed: herald::config::Config = config::Config::builder()
        .add_source(config::File::from_str(&sample, config::FileFormat::Toml))
        .build()
        .expect("the sample parses")
        .try_deserialize()
        .expect("the sample is a configuration");
    assert_eq!(
        serde_json::to_value(parsed).unwrap(),
        serde_json::to_value(herald::config::Config::default()).unwrap(),
        "the sample herald.toml in docs/configuration.md differs from the defaults"
    );
}

/// GitHub's anchor for a heading: lowercase, punctuation dropped, spaces as hyphens; repeats
/// get `-1`, `-2`.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut anchors = BTreeSet::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        let Some(text) = (!fenced).then(|| heading_text(line)).flatten() else { continue };
        let slug: String = text
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let count = seen.entry(slug.clone()).or_insert(0);
        anchors.insert(if *count == 0 { slug.clone() } else { format!("{slug}-{count}") });
        *count += 1;
    }
    anchors
}

fn heading_text(line: &str) -> Option<&str> {
    let hashes = line.chars().take_while(|c| *c == '#').count();
    (1..=6).contains(&hashes).then(|| line[hashes..].strip_prefix(' ')).flatten()
}

/// The targets of the Markdown links of `markdown`, outside code.
fn link_targets(markdown: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            targets.push(after[..end].to_owned());
            rest = &after[end..];
        }
    }
    targets
}

#[test]
fn links_between_the_documents_point_at_files_and_headings_that_exist() {
    let root = root();
    let mut files = vec![root.join("README.md"), root.join("deploy/README.md")];
    for entry in std::fs::read_dir(root.join("docs")).expect("docs/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|ext| ext == "md") {
            files.push(path);
        }
    }
    let mut broken = Vec::new();
    for file in &files {
        let text = read(file);
        for target in link_targets(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            let linked =
                if path.is_empty() { file.clone() } else { file.parent().expect("a folder").join(path) };
            if !linked.exists() {
                broken.push(format!("{}: `{target}`: no such file", file.display()));
                continue;
            }
            if let Some(anchor) = anchor
                && linked.extension().is_some_and(|ext| ext == "md")
                && !anchors(&read(&linked)).contains(anchor)
            {
                broken.push(format!("{}: `{target}`: no such heading", file.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_readme_stays_a_front_page() {
    let readme = read(&root().join("README.md"));
    assert!(readme.len() <= 40 * 1024, "README.md is {} bytes; keep it under 40 KB", readme.len());
    let first_screen: String = readme.lines().take(40).collect::<Vec<_>>().join("\n");
    for word in ["webhook", "SQLite", "PostgreSQL", "cargo test"] {
        assert!(first_screen.contains(word), "the README's first screen does not mention {word}");
    }
}

/// The Rust `v1a` snippet in docs/receiving.md is the file the signature tests compile and run.
#[test]
fn the_rust_verify_snippet_in_the_docs_is_the_tested_one() {
    let root = env!("CARGO_MANIFEST_DIR");
    let docs = std::fs::read_to_string(format!("{root}/docs/receiving.md")).unwrap();
    let section = docs.split("## ed25519 signatures").nth(1).expect("the ed25519 section");
    let shown = section.split("```rust\n").nth(1).and_then(|b| b.split("```").next()).expect("a rust block");
    let tested = std::fs::read_to_string(format!("{root}/docs/snippets/verify_v1a.rs")).unwrap();
    assert_eq!(shown, tested, "docs/receiving.md and docs/snippets/verify_v1a.rs differ");
}
