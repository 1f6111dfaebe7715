//! Property tests of the pure rules in `herald::domain` that face hostile input: endpoint URLs,
//! event type names and subscription patterns, signatures, `data` parsing and minifying.

use axum::http::{HeaderMap, HeaderValue};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use herald::domain::endpoint::{MAX_URL_LEN, generate_secret, validate_url};
use herald::domain::event::{minify, parse_data};
use herald::domain::event_type::{MAX_NAME_LEN, Pattern, WEBHOOK_TEST, subscribed, validate_name};
use herald::domain::net::is_blocked;
use herald::domain::signing::{secret_key, sign, signature_header};
use proptest::prelude::*;
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Endpoint URLs
// ---------------------------------------------------------------------------------------------

/// Hosts that are sometimes fine and often not: names, `localhost`, IPv4 and IPv6 literals
/// (many inside refused ranges), and the odd spellings the URL parser turns into addresses.
fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9-]{1,12}(\\.[a-z0-9-]{1,12}){0,3}",
        Just("localhost".to_owned()),
        Just("LocalHost.".to_owned()),
        "[a-z]{1,8}\\.localhost",
        any::<u32>().prop_map(|n| std::net::Ipv4Addr::from(n).to_string()),
        (
            prop::sample::select(vec![0u8, 10, 100, 127, 169, 172, 192, 198, 203, 224, 240, 255]),
            any::<[u8; 3]>()
        )
            .prop_map(|(a, [b, c, d])| format!("{a}.{b}.{c}.{d}")),
        any::<u32>().prop_map(|n| n.to_string()),
        any::<u32>().prop_map(|n| format!("0x{n:x}")),
        any::<u128>().prop_map(|n| format!("[{}]", std::net::Ipv6Addr::from(n))),
        any::<u32>().prop_map(|n| format!("[::ffff:{}]", std::net::Ipv4Addr::from(n))),
        any::<u32>().prop_map(|n| format!("[64:ff9b::{}]", std::net::Ipv4Addr::from(n))),
        any::<u32>().prop_map(|n| format!("[2002:{:x}:{:x}::1]", n >> 16, n & 0xffff)),
        Just("[::1]".to_owned()),
        Just("[fe80::1%25eth0]".to_owned()),
        "[^/?#@]{0,12}",
    ]
}

/// URL-shaped strings: a scheme, optional userinfo, a host, port, path, query and fragment.
fn url_like() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec![
            "https://",
            "http://",
            "HTTPS://",
            "ftp://",
            "https:",
            "https:///",
            "//",
            "",
        ]),
        prop::option::of(prop_oneof!["[a-z]{0,5}", "[a-z]{1,5}:[a-z]{0,5}", Just(":".to_owned())]),
        host(),
        prop::option::of(0u32..70_000),
        prop_oneof!["(/[a-zA-Z0-9._~%-]{0,10}){0,4}", "/[a-z]{2030,2060}"],
        prop::option::of("[a-z=&%]{0,10}"),
        prop::option::of("[a-z]{0,5}"),
    )
        .prop_map(|(scheme, user, host, port, path, query, fragment)| {
            let mut url = scheme.to_owned();
            if let Some(user) = user {
                url.push_str(&user);
                url.push('@');
            }
            url.push_str(&host);
            if let Some(port) = port {
                url.push_str(&format!(":{port}"));
            }
            url.push_str(&path);
            if let Some(query) = query {
                url.push('?');
                url.push_str(&query);
            }
            if let Some(fragment) = fragment {
                url.push('#');
                url.push_str(&fragment);
            }
            url
        })
}

/// What outside dev mode an accepted URL must be.
fn assert_safe_url(text: &str) -> Result<(), TestCaseError> {
    prop_assert!(text.len() <= MAX_URL_LEN, "accepted a URL of {} characters", text.len());
    let parsed = url::Url::parse(text);
    prop_assert!(parsed.is_ok(), "accepted {text:?}, which does not parse");
    let parsed = parsed.unwrap();
    prop_assert_eq!(parsed.scheme(), "https", "accepted {:?}", text);
    prop_assert!(!parsed.cannot_be_a_base(), "accepted {text:?}, which is not hierarchical");
    prop_assert!(
        parsed.username().is_empty() && parsed.password().is_none(),
        "accepted userinfo in {text:?}"
    );
    prop_assert!(parsed.fragment().is_none(), "accepted a fragment in {text:?}");
    match parsed.host() {
        None => prop_assert!(false, "accepted {text:?} without a host"),
        Some(url::Host::Ipv4(ip)) => {
            prop_assert!(!is_blocked(ip.into()), "accepted refused address {ip} in {text:?}")
        }
        Some(url::Host::Ipv6(ip)) => {
            prop_assert!(!is_blocked(ip.into()), "accepted refused address {ip} in {text:?}")
        }
        Some(url::Host::Domain(name)) => {
            prop_assert!(!name.is_empty(), "accepted an empty host in {text:?}");
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            prop_assert!(
                name != "localhost" && !name.ends_with(".localhost"),
                "accepted localhost: {text:?}"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn validate_url_never_panics_on_arbitrary_strings(text in any::<String>(), dev in any::<bool>()) {
        let accepted = validate_url(&text, dev, &[]).is_ok();
        if accepted && !dev {
            assert_safe_url(&text)?;
        }
    }

    #[test]
    fn urls_accepted_outside_dev_mode_are_public_https(text in url_like()) {
        // Dev mode may be laxer but must not panic either.
        let _ = validate_url(&text, true, &[]);
        if validate_url(&text, false, &[]).is_ok() {
            assert_safe_url(&text)?;
        }
    }

    #[test]
    fn refused_literal_addresses_are_refused(ip in any::<u32>().prop_map(std::net::Ipv4Addr::from)) {
        let url = format!("https://{ip}/hook");
        prop_assert_eq!(validate_url(&url, false, &[]).is_ok(), !is_blocked(ip.into()), "{}", url);
        let mapped = format!("https://[::ffff:{ip}]/hook");
        prop_assert_eq!(validate_url(&mapped, false, &[]).is_ok(), !is_blocked(ip.into()), "{}", mapped);
    }
}

// ---------------------------------------------------------------------------------------------
// Event type names and subscription patterns
// ---------------------------------------------------------------------------------------------

/// `^[a-z0-9_]+(\.[a-z0-9_]+)+$`, at most 128 bytes, written out by hand.
fn is_valid_name(name: &str) -> bool {
    let segment_ok =
        |s: &str| !s.is_empty() && s.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'));
    name.len() <= MAX_NAME_LEN && name.split('.').count() >= 2 && name.split('.').all(segment_ok)
}

/// Valid names of every length up to and past the limit.
fn valid_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9_]{1,10}(\\.[a-z0-9_]{1,10}){1,5}",
        "[a-z]{60,66}\\.[a-z0-9_]{58,66}",
        "[a-z_]{1,3}\\.[a-z]{1,3}",
    ]
}

/// Strings close to names: right alphabet, wrong shape; wrong letters; empty segments; long.
fn name_like() -> impl Strategy<Value = String> {
    prop_oneof![
        valid_name(),
        "[a-z0-9_.]{0,20}",
        "[a-zA-Z0-9_.\\- *]{0,20}",
        "\\.?[a-z]{1,4}(\\.{1,2}[a-z]{0,4}){0,3}\\.?",
        "[a-z]{1,4}\\.[a-z]{1,4}[\\x00-\\x7f\u{e9}\u{130}\u{212a}]",
        "[a-z.]{120,135}",
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn validate_name_accepts_exactly_dotted_lowercase_segments(name in name_like()) {
        prop_assert_eq!(validate_name(&name).is_ok(), is_valid_name(&name), "{:?}", name);
    }

    #[test]
    fn valid_names_are_accepted(name in valid_name()) {
        prop_assert_eq!(validate_name(&name).is_ok(), name.len() <= MAX_NAME_LEN, "{:?}", name);
    }

    #[test]
    fn prefix_wildcards_match_exactly_the_names_below_the_prefix(
        prefix in "[a-z0-9_]{1,6}(\\.[a-z0-9_]{1,6}){0,2}",
        rest in "[a-z0-9_.]{0,12}",
        other in name_like(),
    ) {
        let pattern = Pattern::parse(&format!("{prefix}.*"));
        prop_assert!(pattern.is_ok(), "{prefix}.* refused: {:?}", pattern);
        let pattern = pattern.unwrap();
        let below = format!("{prefix}.{rest}");
        for name in [below.as_str(), prefix.as_str(), other.as_str(), &format!("{prefix}{rest}")] {
            prop_assert_eq!(
                pattern.matches(name),
                name.starts_with(&format!("{prefix}.")),
                "{}.* against {:?}", prefix, name
            );
        }
    }

    #[test]
    fn star_matches_everything(name in name_like()) {
        prop_assert_eq!(Pattern::parse("*"), Ok(Pattern::All));
        prop_assert!(Pattern::All.matches(&name));
        prop_assert_eq!(subscribed(&[], &name), name != WEBHOOK_TEST);
        prop_assert_eq!(subscribed(&["*".to_owned()], &name), name != WEBHOOK_TEST);
    }

    #[test]
    fn pattern_parse_never_panics_and_exact_patterns_are_valid_names(text in name_like()) {
        match Pattern::parse(&text) {
            Ok(Pattern::All) => prop_assert_eq!(text.as_str(), "*"),
            Ok(Pattern::Prefix(prefix)) => {
                prop_assert!(text.ends_with(".*"));
                prop_assert_eq!(format!("{prefix}*"), text);
            }
            Ok(Pattern::Exact(name)) => {
                prop_assert!(is_valid_name(&name), "{:?}", name);
                prop_assert_eq!(name, text);
            }
            Err(why) => prop_assert!(!why.is_empty()),
        }
    }

    #[test]
    fn test_events_are_never_subscribed(patterns in prop::collection::vec(name_like(), 0..5)) {
        let mut with_star = patterns.clone();
        with_star.push("*".to_owned());
        with_star.push("webhook.*".to_owned());
        prop_assert!(!subscribed(&patterns, WEBHOOK_TEST));
        prop_assert!(!subscribed(&with_star, WEBHOOK_TEST));
    }
}

#[test]
fn nothing_subscribes_to_webhook_test() {
    assert!(!subscribed(&[], "webhook.test"));
    assert!(!subscribed(&["webhook.test".to_owned()], "webhook.test"));
}

// ---------------------------------------------------------------------------------------------
// Signatures
// ---------------------------------------------------------------------------------------------

/// `whsec_` secrets as the API accepts them (24–64 random bytes) or generates them.
fn secret() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 24..=64)
            .prop_map(|bytes| format!("whsec_{}", STANDARD.encode(bytes))),
        Just(()).prop_map(|()| generate_secret()),
    ]
}

/// Message ids: anything a header value can carry.
fn msg_id() -> impl Strategy<Value = String> {
    prop_oneof!["msg_[A-Za-z0-9]{1,30}", "[!-~]{1,64}"]
}

fn now_seconds() -> i64 {
    chrono::Utc::now().timestamp()
}

fn headers(id: &str, timestamp: i64, signature: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("webhook-id", HeaderValue::from_str(id).unwrap());
    headers.insert("webhook-timestamp", HeaderValue::from_str(&timestamp.to_string()).unwrap());
    headers.insert("webhook-signature", HeaderValue::from_str(signature).unwrap());
    headers
}

fn assert_entry_shape(entry: &str) -> Result<(), TestCaseError> {
    let encoded = entry.strip_prefix("v1,");
    prop_assert!(encoded.is_some(), "{entry:?} does not start with v1,");
    let encoded = encoded.unwrap();
    prop_assert_eq!(encoded.len(), 44, "{:?}", entry);
    prop_assert!(
        encoded.ends_with('=') && !encoded.ends_with("=="),
        "{entry:?} is not padded base64 of 32 bytes"
    );
    prop_assert!(
        encoded[..43].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/'),
        "{entry:?} is not standard base64"
    );
    prop_assert_eq!(STANDARD.decode(encoded).map(|b| b.len()).ok(), Some(32), "{:?}", entry);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn signatures_are_v1_base64_and_verify_with_the_reference_crate(
        secret in secret(),
        id in msg_id(),
        body in any::<String>(),
    ) {
        let timestamp = now_seconds();
        let signature = sign(&secret_key(&secret), &id, timestamp, body.as_bytes());
        assert_entry_shape(&signature)?;
        let webhook = standardwebhooks::Webhook::new(&secret).unwrap();
        let verified = webhook.verify(body.as_bytes(), &headers(&id, timestamp, &signature));
        prop_assert!(verified.is_ok(), "{:?}", verified);
        // A changed body does not verify.
        let tampered = format!("{body} ");
        prop_assert!(webhook.verify(tampered.as_bytes(), &headers(&id, timestamp, &signature)).is_err());
    }

    #[test]
    fn signature_headers_have_one_entry_per_key_one_space_apart(
        secrets in prop::collection::vec(secret(), 1..=3),
        id in msg_id(),
        body in any::<String>(),
    ) {
        let timestamp = now_seconds();
        let keys: Vec<Vec<u8>> = secrets.iter().map(|s| secret_key(s)).collect();
        let names: Vec<&str> = secrets.iter().map(String::as_str).collect();
        let header = signature_header(&names, &id, timestamp, body.as_bytes());
        let entries: Vec<&str> = header.split(' ').collect();
        prop_assert_eq!(entries.len(), keys.len(), "{:?}", header);
        for (entry, key) in entries.iter().zip(&keys) {
            assert_entry_shape(entry)?;
            prop_assert_eq!(*entry, sign(key, &id, timestamp, body.as_bytes()));
        }
        for secret in &secrets {
            let webhook = standardwebhooks::Webhook::new(secret).unwrap();
            let verified = webhook.verify(body.as_bytes(), &headers(&id, timestamp, &header));
            prop_assert!(verified.is_ok(), "{:?}", verified);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Event data
// ---------------------------------------------------------------------------------------------

/// Arbitrary JSON values. Floats are dyadic fractions so that their text round-trips exactly.
fn json_value() -> impl Strategy<Value = Value> {
    let text = prop_oneof!["[ \\t\\n\"\\\\{}\\[\\],:a-z]{0,8}", any::<String>()];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (any::<i32>(), 0u32..16).prop_map(|(n, shift)| Value::from(f64::from(n) / f64::from(1u32 << shift))),
        text.clone().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(text.clone(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Text that is often nearly JSON: fragments of JSON syntax glued together at random.
fn json_ish() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        prop::collection::vec(
            prop::sample::select(vec![
                "{",
                "}",
                "[",
                "]",
                ",",
                ":",
                "\"a\"",
                "\"a\":",
                "1",
                "-0",
                "1e999",
                "1.5e-7",
                "true",
                "null",
                " ",
                "\n",
                "\"\\u",
                "\\",
                "\"\\ud800\"",
                "\"",
                "{\"a\":1,\"a\":2}",
            ]),
            0..40,
        )
        .prop_map(|parts| parts.concat()),
        (1usize..300).prop_map(|depth| format!("{}{}", "{\"a\":".repeat(depth), "}".repeat(depth))),
        (1usize..300).prop_map(|depth| format!("{{\"a\":{}{}}}", "[".repeat(depth), "]".repeat(depth))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn minify_of_pretty_json_is_the_same_value(value in json_value()) {
        let pretty = serde_json::to_string_pretty(&value).unwrap();
        let minified = minify(&pretty);
        let back: Value = serde_json::from_str(&minified).unwrap();
        prop_assert_eq!(&back, &value);
        // Only whitespace goes: the result is the compact serialisation.
        prop_assert_eq!(minified, serde_json::to_string(&value).unwrap());
    }

    #[test]
    fn minify_keeps_object_data_acceptable(value in json_value()) {
        let object = serde_json::json!({ "k": value });
        let pretty = serde_json::to_string_pretty(&object).unwrap();
        prop_assert_eq!(parse_data(&pretty), Ok(object.clone()));
        prop_assert_eq!(parse_data(&minify(&pretty)), Ok(object));
    }

    #[test]
    fn parse_data_never_panics(text in json_ish()) {
        if let Ok(value) = parse_data(&text) {
            prop_assert!(value.is_object());
            let plain: Result<Value, _> = serde_json::from_str(&text);
            prop_assert_eq!(plain.ok(), Some(value));
        }
    }
}
