//! Built-in flags with flagd definitions, end to end in both modes: a flagd
//! flag file imported and exported unchanged, targeting and percentage
//! splits read by the real OpenFeature Python SDK through its OFREP
//! provider with a context, bulk evaluation with ETag/304, a kill that
//! overrides every rule, and a revert that restores the definition exactly.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use firebreak_domain::flagd::bucket;
use firebreak_tests::{client, eventually, openfeature_bool, Firebreak, TestAppBuilder};
use serde_json::{json, Value};

const FLAG: &str = "checkout.new-flow";

/// The rollout the issue describes: enterprise customers in the EU first,
/// then 10% of everyone by targeting key.
fn flag_file() -> Value {
    json!({"flags": {
        FLAG: {
            "state": "ENABLED",
            "variants": {"on": true, "off": false},
            "defaultVariant": "off",
            "targeting": {"if": [
                {"and": [
                    {"==": [{"var": "plan"}, "enterprise"]},
                    {"ends_with": [{"var": "email"}, ".eu"]}
                ]},
                "on",
                {"fractional": [["on", 10], ["off", 90]]}
            ]}
        },
        "banner.color": {
            "state": "ENABLED",
            "variants": {"red": "#c00", "blue": "#00c"},
            "defaultVariant": "red"
        }
    }})
}

/// A targeting key that flagd's bucketing puts in `variant` of the 10/90 split.
fn key_in(variant: &str) -> String {
    (0..)
        .map(|i| format!("user-{i}"))
        .find(|k| bucket(&format!("{FLAG}{k}"), &[("on", 10), ("off", 90)]) == Some(variant))
        .unwrap()
}

async fn sdk(fb: &Firebreak, token: &str, context: Value) -> Value {
    sdk_flag(fb, token, FLAG, true, context).await
}

/// One boolean evaluation by the real OpenFeature Python SDK and its OFREP
/// provider, with the caller's own default.
async fn sdk_flag(fb: &Firebreak, token: &str, flag: &str, default: bool, context: Value) -> Value {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("support/ofrep/evaluate.py");
    let python = std::env::var("FIREBREAK_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .args([
            fb.base.as_str(),
            flag,
            if default { "true" } else { "false" },
            "--bearer",
            token,
        ])
        .arg("--context")
        .arg(context.to_string())
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn flagd_targeting_kill_and_revert(app: TestAppBuilder) {
    let app = app.start().await;
    let fb = &app.fb;

    // A file with an unknown operation loads as in flagd, with a warning
    // saying where, and that flag answers PARSE_ERROR (the caller's default).
    let mut odd = flag_file();
    odd["flags"][FLAG]["targeting"] = json!({"if": [{"regex": ["a", "b"]}, "on", null]});
    let (status, body) = fb.post("/api/v1/flags/import", &odd).await;
    assert_eq!(status, 200, "{body}");
    let warnings = body["warnings"].to_string();
    assert!(
        warnings.contains(&format!("flags.{FLAG}.targeting.if[0]")) && warnings.contains("regex"),
        "{body}"
    );
    let (status, body) = fb
        .post(
            &format!("/ofrep/v1/evaluate/flags/{FLAG}"),
            &json!({"context": {"targetingKey": "u1"}}),
        )
        .await;
    assert_eq!(
        (status, body["errorCode"].clone()),
        (400, json!("PARSE_ERROR")),
        "{body}"
    );
    // An invalid file (a default variant that is not one) changes nothing and says where.
    let mut bad = flag_file();
    bad["flags"]["banner.color"]["defaultVariant"] = json!("green");
    let (status, body) = fb.post("/api/v1/flags/import", &bad).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("flags.banner.color"), "{body}");
    let (_, exported) = fb.get("/api/v1/flags/export").await;
    assert_eq!(exported, odd, "the refused import changed nothing");

    let (status, body) = fb.post("/api/v1/flags/import", &flag_file()).await;
    assert_eq!(status, 200, "{body}");
    let (_, exported) = fb.get("/api/v1/flags/export").await;
    assert_eq!(exported, flag_file(), "exported as imported");

    let reader = fb.token("checkout-sdk", &["flags:read"]).await;
    let eu = json!({"targetingKey": key_in("off"), "plan": "enterprise", "email": "ops@shop.eu"});
    let r = sdk(fb, &reader.token, eu.clone()).await;
    assert_eq!(
        (r["value"].clone(), r["variant"].clone()),
        (json!(true), json!("on")),
        "{r}"
    );
    assert_eq!(r["reason"], "TARGETING_MATCH", "{r}");
    for variant in ["on", "off"] {
        let r = sdk(
            fb,
            &reader.token,
            json!({"targetingKey": key_in(variant), "plan": "free"}),
        )
        .await;
        assert_eq!(r["variant"], variant, "flagd's bucket for this key: {r}");
        assert_eq!(r["reason"], "TARGETING_MATCH", "{r}");
    }
    let (status, body) = fb
        .post(
            &format!("/ofrep/v1/evaluate/flags/{FLAG}"),
            &json!({"context": {"plan": "free"}}),
        )
        .await;
    // A percentage split with no targeting key: the default variant, as flagd.
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["variant"].clone(), body["reason"].clone()),
        (json!("off"), json!("DEFAULT")),
        "{body}"
    );
    // OFREP metadata is the flag's own (none here), not Firebreak's bookkeeping.
    assert_eq!(body["metadata"], json!({}), "{body}");

    // Bulk: one ETag per flags-and-context; 304 while neither changes.
    let bulk = |context: Value, etag: Option<String>| {
        let url = format!("{}/ofrep/v1/evaluate/flags", fb.base);
        async move {
            let mut req = client().post(url).json(&json!({"context": context}));
            if let Some(e) = etag {
                req = req.header("if-none-match", e);
            }
            req.send().await.unwrap()
        }
    };
    let first = bulk(eu.clone(), None).await;
    assert_eq!(first.status().as_u16(), 200);
    let etag = first.headers()["etag"].to_str().unwrap().to_string();
    let flags: Value = first.json().await.unwrap();
    assert_eq!(flags["flags"].as_array().unwrap().len(), 2, "{flags}");
    assert_eq!(
        bulk(eu.clone(), Some(etag.clone())).await.status().as_u16(),
        304
    );
    assert_eq!(
        bulk(json!({"targetingKey": "x"}), Some(etag.clone()))
            .await
            .status()
            .as_u16(),
        200,
        "another context is another answer"
    );

    // A kill overrides every rule: everyone gets the off variant.
    let (status, action) = fb
        .post(
            "/api/v1/actions",
            &json!({"kind": "kill_switch", "flag": FLAG, "reason": "checkout errors"}),
        )
        .await;
    assert_eq!(status, 202, "{action}");
    let id = action["id"].as_i64().unwrap();
    eventually(
        "the kill switch verified",
        Duration::from_secs(20),
        || async {
            let (_, a) = fb.get(&format!("/api/v1/actions/{id}")).await;
            (a["status"] == "succeeded").then_some(())
        },
    )
    .await;
    let r = sdk(fb, &reader.token, eu.clone()).await;
    assert_eq!(
        (r["value"].clone(), r["reason"].clone()),
        (json!(false), json!("DISABLED")),
        "{r}"
    );
    assert_eq!(r["variant"], "off");
    let r = sdk(fb, &reader.token, json!({"targetingKey": key_in("on")})).await;
    assert_eq!(r["value"], false, "{r}");
    assert_eq!(
        bulk(eu.clone(), Some(etag)).await.status().as_u16(),
        200,
        "the kill changed the answer"
    );

    // The revert restores the exact definition, rules and percentages included.
    let (status, reverted) = fb
        .post(&format!("/api/v1/actions/{id}/revert"), &json!({}))
        .await;
    assert_eq!(status, 200, "{reverted}");
    let (_, exported) = fb.get("/api/v1/flags/export").await;
    assert_eq!(exported, flag_file());
    let r = sdk(fb, &reader.token, eu).await;
    assert_eq!(
        (r["value"].clone(), r["reason"].clone()),
        (json!(true), json!("TARGETING_MATCH")),
        "{r}"
    );

    // Plain flags keep their meaning: on/off for everyone, STATIC.
    fb.post(
        "/api/v1/flags",
        &json!({"key": "plain.switch", "enabled": true}),
    )
    .await;
    let r = openfeature_bool(&fb.base, "plain.switch", &reader.token).await;
    assert_eq!(
        (r["value"].clone(), r["reason"].clone()),
        (json!(true), json!("STATIC")),
        "{r}"
    );
}

/// A flagd file with shared evaluators loads as flagd loads it: each
/// `{"$ref": name}` becomes the evaluator, and a reference to none loads and
/// errs at evaluation (PARSE_ERROR), so the caller gets its own default.
async fn shared_evaluators_load_as_in_flagd(app: TestAppBuilder) {
    let app = app.start().await;
    let fb = &app.fb;
    let file = json!({
        "$evaluators": {"is_staff": {"ends_with": [{"var": "email"}, "@firebreak.dev"]}},
        "flags": {
            "staff.banner": {"state": "ENABLED", "variants": {"hi": "hi", "bye": "bye"},
                             "defaultVariant": "bye", "targeting": {"if": [{"$ref": "is_staff"}, "hi", "bye"]}},
            "dangling.ref": {"state": "ENABLED", "variants": {"hit": "hit", "miss": "miss"},
                             "defaultVariant": "miss", "targeting": {"if": [{"$ref": "nobody"}, "hit", "miss"]}}
        }
    });
    let (status, body) = fb.post("/api/v1/flags/import", &file).await;
    assert_eq!(status, 200, "{body}");
    let eval = |key: &'static str, email: &'static str| {
        let base = fb.base.clone();
        async move {
            let r = client()
                .post(format!("{base}/ofrep/v1/evaluate/flags/{key}"))
                .json(&json!({"context": {"email": email}}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (s, r) = eval("staff.banner", "ana@firebreak.dev").await;
    assert_eq!(
        (s, r["value"].clone(), r["reason"].clone()),
        (200, json!("hi"), json!("TARGETING_MATCH")),
        "{r}"
    );
    let (s, r) = eval("staff.banner", "someone@example.com").await;
    assert_eq!((s, r["value"].clone()), (200, json!("bye")), "{r}");
    let (s, r) = eval("dangling.ref", "ana@firebreak.dev").await;
    assert_eq!(
        (s, r["errorCode"].clone()),
        (400, json!("PARSE_ERROR")),
        "{r}"
    );
}

/// A flag written DISABLED, and one without a default variant whose
/// targeting chose none, answer as flagd answers: a success without a value,
/// so the real OpenFeature client gets its own default (whichever it is),
/// reason DISABLED or DEFAULT, and no error. A flag set's metadata reaches
/// the client with each flag's own; Firebreak's bookkeeping does not.
async fn value_less_answers_reach_the_callers_default(app: TestAppBuilder) {
    let app = app.start().await;
    let fb = &app.fb;
    let file = json!({
        "metadata": {"team": "payments", "flagSetId": "shop"},
        "flags": {
            "dark.launch": {"state": "DISABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"},
            "staff.only": {"state": "ENABLED", "variants": {"on": true, "off": false},
                           "targeting": {"if": [{"ends_with": [{"var": "email"}, "@firebreak.dev"]}, "on", null]},
                           "metadata": {"team": "growth"}}
        }
    });
    let (status, body) = fb.post("/api/v1/flags/import", &file).await;
    assert_eq!(status, 200, "{body}");
    let reader = fb.token("app", &["flags:read"]).await;
    for default in [true, false] {
        let r = sdk_flag(fb, &reader.token, "dark.launch", default, json!({})).await;
        assert_eq!(
            (
                r["value"].clone(),
                r["reason"].clone(),
                r["error_code"].clone()
            ),
            (json!(default), json!("DISABLED"), Value::Null),
            "{r}"
        );
        let r = sdk_flag(
            fb,
            &reader.token,
            "staff.only",
            default,
            json!({"email": "x@example.com"}),
        )
        .await;
        assert_eq!(
            (
                r["value"].clone(),
                r["reason"].clone(),
                r["error_code"].clone()
            ),
            (json!(default), json!("DEFAULT"), Value::Null),
            "{r}"
        );
    }
    let r = sdk_flag(
        fb,
        &reader.token,
        "staff.only",
        false,
        json!({"email": "ana@firebreak.dev"}),
    )
    .await;
    assert_eq!(
        (r["value"].clone(), r["reason"].clone()),
        (json!(true), json!("TARGETING_MATCH")),
        "{r}"
    );

    // On the wire: no `value`, variant null; metadata merged, the flag's own winning.
    let r: Value = client()
        .post(format!("{}/ofrep/v1/evaluate/flags/staff.only", fb.base))
        .json(&json!({"context": {}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        r,
        json!({"key": "staff.only", "reason": "DEFAULT", "variant": null,
               "metadata": {"team": "growth", "flagSetId": "shop"}})
    );

    // Turning the disabled flag on serves its definition; a kill then
    // serves its off variant (Firebreak's kill switch), not the caller's default.
    let (status, body) = fb
        .put("/api/v1/flags/dark.launch", &json!({"enabled": true}))
        .await;
    assert_eq!(status, 200, "{body}");
    let r = sdk_flag(fb, &reader.token, "dark.launch", false, json!({})).await;
    assert_eq!(
        (r["value"].clone(), r["reason"].clone()),
        (json!(true), json!("STATIC")),
        "{r}"
    );
    let (status, body) = fb
        .put("/api/v1/flags/dark.launch", &json!({"enabled": false}))
        .await;
    assert_eq!(status, 200, "{body}");
    let r = sdk_flag(fb, &reader.token, "dark.launch", true, json!({})).await;
    assert_eq!(
        (
            r["value"].clone(),
            r["reason"].clone(),
            r["variant"].clone()
        ),
        (json!(false), json!("DISABLED"), json!("off")),
        "{r}"
    );

    // The same through actions: turned on by a request, then killed.
    let (status, body) = fb
        .post(
            "/api/v1/flags/import",
            &json!({"flags": {"beta.flow": {"state": "DISABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"}}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for state in ["on", "off"] {
        let (status, action) = fb
            .post(
                "/api/v1/actions",
                &json!({"kind": "kill_switch", "flag": "beta.flow", "state": state, "reason": "test"}),
            )
            .await;
        assert_eq!(status, 202, "{action}");
        let id = action["id"].as_i64().unwrap();
        eventually("the action done", Duration::from_secs(20), || async {
            let (_, a) = fb.get(&format!("/api/v1/actions/{id}")).await;
            (a["status"] == "succeeded").then_some(())
        })
        .await;
    }
    let r = sdk_flag(fb, &reader.token, "beta.flow", true, json!({})).await;
    assert_eq!(
        (
            r["value"].clone(),
            r["reason"].clone(),
            r["variant"].clone()
        ),
        (json!(false), json!("DISABLED"), json!("off")),
        "{r}"
    );
}

firebreak_tests::both_modes!(
    flagd_targeting_kill_and_revert,
    shared_evaluators_load_as_in_flagd,
    value_less_answers_reach_the_callers_default
);
