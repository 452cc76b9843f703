//! Property tests of the decoders that take untrusted input: whatever a
//! sender puts in an Alertmanager body, a flagd definition or context, or a
//! matcher, the decoder answers (a value or an error) and never panics.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use firebreak_domain::decode;
use firebreak_domain::flagd::FlagDefinition;
use firebreak_domain::matcher::Matcher;
use firebreak_domain::EventKind;
use proptest::prelude::*;
use serde_json::{json, Value};

/// Any JSON value, a few levels deep, with strings that include the
/// characters decoders trip on.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        "\\PC{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("var"),
            Just("if"),
            Just("fractional"),
            Just("sem_ver"),
            Just("in"),
            Just("starts_with"),
            Just("=="),
            Just("$ref")
        ]
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    "\\PC{0,8}",
                    Just("var".to_string()),
                    Just("if".to_string()),
                    Just("fractional".to_string()),
                    Just("sem_ver".to_string()),
                    Just("in".to_string()),
                    Just("==".to_string()),
                    Just("cat".to_string()),
                ],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An Alertmanager webhook shaped as Alertmanager sends it, with any labels,
/// annotations and times.
fn alertmanager_body() -> impl Strategy<Value = Value> {
    let alert = (
        prop::collection::btree_map("\\PC{0,10}", "\\PC{0,20}", 0..6),
        prop::collection::btree_map("\\PC{0,10}", "\\PC{0,40}", 0..3),
        prop_oneof![Just("firing"), Just("resolved"), Just("weird")],
        prop_oneof![
            Just("2026-12-05T06:00:00Z".to_string()),
            Just("0001-01-01T00:00:00Z".to_string()),
            "\\PC{0,25}"
        ],
        "\\PC{0,16}",
    )
        .prop_map(|(labels, annotations, status, starts, fingerprint)| {
            json!({"status": status, "labels": labels, "annotations": annotations,
                   "startsAt": starts, "endsAt": "0001-01-01T00:00:00Z",
                   "generatorURL": "http://prometheus/graph", "fingerprint": fingerprint})
        });
    (prop::collection::vec(alert, 0..8), "\\PC{0,20}").prop_map(|(alerts, receiver)| {
        json!({"version": "4", "groupKey": "{}:{}", "truncatedAlerts": 0, "status": "firing",
               "receiver": receiver, "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
               "externalURL": "http://alertmanager", "alerts": alerts})
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_body_of_any_kind_is_decoded_or_refused(body in any_json(), bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let text = body.to_string();
        for kind in EventKind::ALL {
            let _ = decode(kind, text.as_bytes(), chrono::Utc::now());
            let _ = decode(kind, &bytes, chrono::Utc::now());
        }
    }

    #[test]
    fn alertmanager_bodies_keep_every_alert_or_name_the_field(body in alertmanager_body()) {
        let sent = body["alerts"].as_array().unwrap().len();
        match decode(EventKind::Alert, body.to_string().as_bytes(), chrono::Utc::now()) {
            Ok(decoded) => prop_assert_eq!(decoded.len(), sent),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn flagd_targeting_of_any_shape_evaluates_or_is_refused(targeting in any_json(), context in any_json()) {
        let raw = json!({"state": "ENABLED", "variants": {"on": true, "off": false},
                         "defaultVariant": "off", "targeting": targeting});
        if let Ok(flag) = serde_json::from_value::<FlagDefinition>(raw) {
            if flag.validate().is_ok() {
                let _ = flag.evaluate("k", &context, 1_700_000_000);
                let _ = flag.evaluate("k", &json!({"targetingKey": "user-1", "v": context}), 0);
            }
        }
    }

    #[test]
    fn matchers_parse_or_refuse_and_print_back_the_same(input in "\\PC{0,40}", labels in prop::collection::btree_map("\\PC{0,8}", "\\PC{0,12}", 0..4)) {
        if let Ok(m) = Matcher::parse(&input) {
            let printed = m.to_string();
            let again = Matcher::parse(&printed).unwrap();
            prop_assert_eq!(&again, &m, "{} printed as {}", input, printed);
            let labels: BTreeMap<String, String> = labels;
            prop_assert_eq!(m.matches(&labels), again.matches(&labels));
        }
    }

    #[test]
    fn matchers_built_from_any_label_and_value_round_trip(name in "[a-zA-Z_][a-zA-Z0-9_]{0,10}", value in "\\PC{0,20}", op in prop_oneof![Just("="), Just("!=")]) {
        let quoted = serde_json::to_string(&value).unwrap();
        let m = Matcher::parse(&format!("{name}{op}{quoted}")).unwrap();
        let labels: BTreeMap<String, String> = [(name.clone(), value.clone())].into();
        prop_assert_eq!(m.matches(&labels), op == "=");
    }
}
