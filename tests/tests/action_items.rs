//! Postmortem action items end to end: through the API (both modes) into the
//! draft and the insights; exported to GitHub and Jira as their APIs
//! document them (local recording servers answer as they do: they cannot
//! run here); their signed webhooks close and reopen items while unsigned
//! or wrongly signed ones are refused and change nothing; a tracker that is
//! down loses nothing and gets the issue once when it is back.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use firebreak_tests::{
    alert_now, both_modes, client, eventually, Firebreak, Recorder, TestApp, TestAppBuilder,
};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

async fn patch(fb: &Firebreak, path: &str, body: &Value) -> (u16, Value) {
    let r = client()
        .patch(format!("{}{path}", fb.base))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn open_incident(fb: &Firebreak) -> i64 {
    let (status, body) = fb
        .post(
            "/api/v1/alerts/alertmanager",
            &alert_now("ai00000000000001", "CheckoutErrors", "checkout", 3),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    eventually("an incident", WAIT, || async {
        let (_, list) = fb.get("/api/v1/incidents").await;
        list["incidents"][0]["id"].as_i64()
    })
    .await
}

async fn action_items_through_the_api_reach_the_draft_and_the_insights(app: TestAppBuilder) {
    let app = app.start().await;
    let fb = &app.fb;
    let id = open_incident(fb).await;
    let path = format!("/api/v1/incidents/{id}/action-items");

    // Refusals name the field and change nothing.
    for (body, field) in [
        (json!({"title": ""}), "title"),
        (json!({"title": "x", "due": "next week"}), "due"),
        (json!({"title": "x", "priority": "urgent"}), "priority"),
        (json!({"title": "x", "owner": "a b"}), "owner"),
        (json!({"title": "x", "tracker": "github"}), "tracker"),
        (json!({"title": "x", "colour": "red"}), "colour"),
    ] {
        let (status, answer) = fb.post(&path, &body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(
            answer.to_string().contains(field),
            "{body} names {field}: {answer}"
        );
    }
    let (status, _) = fb
        .post(
            "/api/v1/incidents/999999/action-items",
            &json!({"title": "x"}),
        )
        .await;
    assert_eq!(status, 404);
    let (_, listed) = fb.get(&path).await;
    assert_eq!(listed["items"], json!([]), "refusals changed nothing");

    // Two items: one due long ago (overdue), one without a date.
    let (status, first) = fb
        .post(
            &path,
            &json!({"title": "Add a canary gate on checkout error rate", "owner": "ana",
                    "due": "2020-01-31", "priority": "high"}),
        )
        .await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(
        (
            first["title"].as_str(),
            first["owner"].as_str(),
            first["due"].as_str(),
            first["priority"].as_str(),
            first["status"].as_str(),
            first["tracker"].clone(),
        ),
        (
            Some("Add a canary gate on checkout error rate"),
            Some("user:ana"),
            Some("2020-01-31"),
            Some("high"),
            Some("open"),
            Value::Null
        )
    );
    let (status, second) = fb
        .post(&path, &json!({"title": "Alert on cart latency"}))
        .await;
    assert_eq!(status, 201, "{second}");
    assert_eq!(second["priority"], "medium");
    let (_, insights) = fb.get("/api/v1/insights").await;
    assert_eq!(
        insights["action_items"],
        json!({"open": 2, "overdue": 1}),
        "{insights}"
    );

    // Changes: status, owner cleared with null, unknown status refused.
    let item = first["id"].as_i64().unwrap();
    let (status, answer) = patch(
        fb,
        &format!("/api/v1/action-items/{item}"),
        &json!({"status": "closed"}),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    let (status, done) = patch(
        fb,
        &format!("/api/v1/action-items/{item}"),
        &json!({"status": "done", "owner": null}),
    )
    .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(
        (done["status"].as_str(), done["owner"].clone()),
        (Some("done"), Value::Null)
    );
    let (status, _) = patch(
        fb,
        "/api/v1/action-items/999999",
        &json!({"status": "done"}),
    )
    .await;
    assert_eq!(status, 404);
    let (_, insights) = fb.get("/api/v1/insights").await;
    assert_eq!(insights["action_items"], json!({"open": 1, "overdue": 0}));

    // The timeline says who did what; the audit names the item.
    let (_, timeline) = fb.get(&format!("/api/v1/incidents/{id}/timeline")).await;
    let said: Vec<&str> = timeline["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "action_item")
        .map(|e| e["summary"].as_str().unwrap())
        .collect();
    assert_eq!(said.len(), 3, "{said:?}");
    assert!(
        said.iter().any(|s| s.contains("marked it done")
            && s.contains("left it without an owner")
            && s.contains("Add a canary gate")),
        "{said:?}"
    );

    // The draft lists them in its own section, and keeps it current.
    let (status, body) = fb
        .post(
            &format!("/api/v1/incidents/{id}/postmortem/regenerate"),
            &json!({}),
        )
        .await;
    assert!(status == 200 || status == 201, "{status} {body}");
    let (status, third) = fb
        .post(
            &path,
            &json!({"title": "Document the rollback runbook", "owner": "bo"}),
        )
        .await;
    assert_eq!(status, 201, "{third}");
    let md = eventually("the draft lists the new item", WAIT, || async {
        let (_, pm) = fb.get(&format!("/api/v1/incidents/{id}/postmortem")).await;
        let md = pm["markdown"].as_str()?.to_string();
        md.contains("Document the rollback runbook").then_some(md)
    })
    .await;
    let section = &md[md.find("## Action items").unwrap()..];
    assert!(
        section
            .contains("| Add a canary gate on checkout error rate |  | 2020-01-31 | high | done |"),
        "{section}"
    );
    assert!(
        section.contains("| Alert on cart latency |  |  | medium | open |"),
        "{section}"
    );
    assert!(
        section.contains("| Document the rollback runbook | bo |"),
        "{section}"
    );
}

both_modes!(action_items_through_the_api_reach_the_draft_and_the_insights);

/// GitHub and Jira as their APIs answer: issue numbers and keys counted up.
async fn trackers() -> (Recorder, Recorder) {
    let numbers = Arc::new(AtomicUsize::new(11));
    let github = Recorder::start(move |r| {
        if r.method == "POST" && r.path == "/repos/acme/shop/issues" {
            let n = numbers.fetch_add(1, Ordering::SeqCst) + 1;
            (
                201,
                json!({"id": 1000 + n, "number": n, "state": "open",
                       "html_url": format!("https://github.com/acme/shop/issues/{n}")}),
            )
        } else {
            (404, json!({"message": "Not Found"}))
        }
    })
    .await;
    let keys = Arc::new(AtomicUsize::new(6));
    let jira = Recorder::start(move |r| {
        if r.method == "POST" && r.path == "/rest/api/3/issue" {
            let n = keys.fetch_add(1, Ordering::SeqCst) + 1;
            (
                201,
                json!({"id": format!("{}", 10000 + n), "key": format!("OPS-{n}"),
                       "self": format!("https://example.atlassian.net/rest/api/3/issue/{}", 10000 + n)}),
            )
        } else {
            (404, json!({"errorMessages": ["not found"]}))
        }
    })
    .await;
    (github, jira)
}

fn trackers_config(github: &str, jira: &str, default: &str) -> String {
    format!(
        r#"
[slack]
public_url = "https://firebreak.example"

[trackers]
default = "{default}"
retry = "1s"

[trackers.github]
api_url = "{github}"
repo = "acme/shop"
token = "ghp_testtoken"
webhook_secret = "gh-hook-secret"
labels = ["firebreak", "postmortem"]

[trackers.jira]
url = "{jira}"
project = "OPS"
email = "sre@example.com"
api_token = "jira-api-token"
webhook_secret = "jira-hook-secret"
"#
    )
}

fn sign(secret: &str, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

async fn webhook(
    fb: &Firebreak,
    tracker: &str,
    headers: &[(&str, String)],
    body: &Value,
) -> (u16, Value) {
    let mut req = firebreak_tests::anonymous()
        .post(format!("{}/api/v1/trackers/{tracker}/webhook", fb.base))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn item(fb: &Firebreak, incident: i64, id: i64) -> Value {
    let (_, listed) = fb
        .get(&format!("/api/v1/incidents/{incident}/action-items"))
        .await;
    listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == id)
        .cloned()
        .unwrap()
}

#[tokio::test]
async fn exports_reach_github_and_jira_as_they_document_and_their_webhooks_come_back() {
    let (github, jira) = trackers().await;
    let app = TestApp::embedded()
        .config(&trackers_config(&github.base, &jira.base, "github"))
        .start()
        .await;
    let fb = &app.fb;
    let id = open_incident(fb).await;
    let path = format!("/api/v1/incidents/{id}/action-items");

    // The default tracker: GitHub, from creation.
    let (status, created) = fb
        .post(
            &path,
            &json!({"title": "Add a canary gate", "owner": "ana", "due": "2026-12-20", "priority": "high"}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["tracker"]["name"], "github");
    assert_eq!(created["tracker"]["export"], "pending");
    let gh_item = created["id"].as_i64().unwrap();
    let exported = eventually("the GitHub issue", WAIT, || async {
        let i = item(fb, id, gh_item).await;
        (i["tracker"]["export"] == "exported").then_some(i)
    })
    .await;
    assert_eq!(exported["tracker"]["key"], "#12");
    assert_eq!(
        exported["tracker"]["url"],
        "https://github.com/acme/shop/issues/12"
    );
    let sent = github.matching("POST", "/repos/acme/shop/issues");
    assert_eq!(sent.len(), 1, "one issue");
    let r = &sent[0];
    assert_eq!(r.headers["authorization"], "Bearer ghp_testtoken");
    assert_eq!(r.headers["accept"], "application/vnd.github+json");
    assert_eq!(r.headers["x-github-api-version"], "2022-11-28");
    assert!(r.headers.contains_key("user-agent"));
    assert_eq!(r.body["title"], "Add a canary gate");
    assert_eq!(
        r.body["labels"],
        json!(["firebreak", "postmortem", "priority:high"])
    );
    let text = r.body["body"].as_str().unwrap();
    assert!(
        text.contains(&format!("https://firebreak.example/incidents/{id}")),
        "links back: {text}"
    );
    assert!(
        text.contains("owner user:ana") && text.contains("due 2026-12-20"),
        "{text}"
    );
    assert_eq!(
        r.body.as_object().unwrap().keys().collect::<Vec<_>>(),
        vec!["body", "labels", "title"],
        "only documented fields"
    );

    // Kept here, then exported to Jira on request.
    let (status, kept) = fb
        .post(
            &path,
            &json!({"title": "Alert on cart latency", "tracker": "none", "due": "2027-01-15"}),
        )
        .await;
    assert_eq!(status, 201, "{kept}");
    assert_eq!(kept["tracker"], Value::Null);
    let jira_item = kept["id"].as_i64().unwrap();
    let (status, asked) = fb
        .post(
            &format!("/api/v1/action-items/{jira_item}/export"),
            &json!({"tracker": "jira"}),
        )
        .await;
    assert_eq!(status, 202, "{asked}");
    let exported = eventually("the Jira issue", WAIT, || async {
        let i = item(fb, id, jira_item).await;
        (i["tracker"]["export"] == "exported").then_some(i)
    })
    .await;
    assert_eq!(exported["tracker"]["key"], "OPS-7");
    assert_eq!(
        exported["tracker"]["url"],
        format!("{}/browse/OPS-7", jira.base)
    );
    let sent = jira.matching("POST", "/rest/api/3/issue");
    assert_eq!(sent.len(), 1);
    let r = &sent[0];
    use base64_check::basic;
    assert_eq!(
        r.headers["authorization"],
        basic("sre@example.com", "jira-api-token")
    );
    let fields = &r.body["fields"];
    assert_eq!(fields["project"], json!({"key": "OPS"}));
    assert_eq!(fields["summary"], "Alert on cart latency");
    assert_eq!(fields["issuetype"], json!({"name": "Task"}));
    assert_eq!(fields["duedate"], "2027-01-15");
    assert_eq!(
        fields["labels"],
        json!(["firebreak", format!("incident-{id}")])
    );
    assert_eq!(
        (
            fields["description"]["type"].as_str(),
            fields["description"]["version"].as_i64()
        ),
        (Some("doc"), Some(1))
    );
    assert_eq!(fields["description"]["content"][0]["type"], "paragraph");
    assert_eq!(
        fields["description"]["content"][0]["content"][0]["type"],
        "text"
    );
    // Exported once: a second request is a conflict naming the issue.
    let (status, again) = fb
        .post(
            &format!("/api/v1/action-items/{jira_item}/export"),
            &json!({"tracker": "github"}),
        )
        .await;
    assert_eq!(status, 409, "{again}");
    assert!(again.to_string().contains("OPS-7"), "{again}");

    // GitHub's webhook: unsigned, wrongly signed, signed with another
    // secret: 401 and nothing changes.
    let closed = json!({"action": "closed", "issue": {"number": 12, "state": "closed", "state_reason": "completed"},
                        "repository": {"full_name": "acme/shop"}});
    let raw = closed.to_string();
    for headers in [
        vec![("x-github-event", "issues".to_string())],
        vec![
            ("x-github-event", "issues".to_string()),
            ("x-hub-signature-256", "sha256=00".to_string()),
        ],
        vec![
            ("x-github-event", "issues".to_string()),
            (
                "x-hub-signature-256",
                sign("another secret", raw.as_bytes()),
            ),
        ],
    ] {
        let (status, answer) = webhook(fb, "github", &headers, &closed).await;
        assert_eq!(status, 401, "{answer}");
    }
    assert_eq!(item(fb, id, gh_item).await["status"], "open");
    let signed = |body: &Value| {
        vec![
            ("x-github-event", "issues".to_string()),
            (
                "x-github-delivery",
                "72d3162e-cc78-11e3-81ab-4c9367dc0958".to_string(),
            ),
            (
                "x-hub-signature-256",
                sign("gh-hook-secret", body.to_string().as_bytes()),
            ),
        ]
    };
    let (status, answer) = webhook(fb, "github", &signed(&closed), &closed).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(item(fb, id, gh_item).await["status"], "done");
    let reopened = json!({"action": "reopened", "issue": {"number": 12, "state": "open"},
                          "repository": {"full_name": "acme/shop"}});
    let (status, _) = webhook(fb, "github", &signed(&reopened), &reopened).await;
    assert_eq!(status, 200);
    assert_eq!(item(fb, id, gh_item).await["status"], "open");
    let not_planned = json!({"action": "closed", "issue": {"number": 12, "state": "closed", "state_reason": "not_planned"},
                             "repository": {"full_name": "acme/shop"}});
    webhook(fb, "github", &signed(&not_planned), &not_planned).await;
    assert_eq!(item(fb, id, gh_item).await["status"], "wont_do");
    // Another repository's issue #12 is not ours.
    let elsewhere = json!({"action": "reopened", "issue": {"number": 12, "state": "open"},
                           "repository": {"full_name": "acme/other"}});
    let (status, _) = webhook(fb, "github", &signed(&elsewhere), &elsewhere).await;
    assert_eq!(status, 202);
    assert_eq!(item(fb, id, gh_item).await["status"], "wont_do");

    // Jira's: a status change into the done category closes; the same event
    // unsigned is refused.
    let done = json!({"webhookEvent": "jira:issue_updated",
        "issue": {"key": "OPS-7", "fields": {"status": {"name": "Done", "statusCategory": {"key": "done"}}}},
        "changelog": {"items": [{"field": "status", "fromString": "In Progress", "toString": "Done"}]}});
    let (status, _) = webhook(fb, "jira", &[], &done).await;
    assert_eq!(status, 401);
    assert_eq!(item(fb, id, jira_item).await["status"], "open");
    let (status, answer) = webhook(
        fb,
        "jira",
        &[(
            "x-hub-signature",
            sign("jira-hook-secret", done.to_string().as_bytes()),
        )],
        &done,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(item(fb, id, jira_item).await["status"], "done");

    // The timeline says which tracker closed what.
    let (_, timeline) = fb.get(&format!("/api/v1/incidents/{id}/timeline")).await;
    assert!(
        timeline["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["source"] == "tracker:jira"
                && e["summary"].as_str().unwrap().contains("OPS-7")),
        "{timeline}"
    );
}

#[tokio::test]
async fn a_tracker_down_loses_nothing_and_gets_the_issue_once_when_back() {
    let down = Arc::new(AtomicBool::new(true));
    let answered = Arc::new(AtomicUsize::new(0));
    let (d, a) = (down.clone(), answered.clone());
    let github = Recorder::start(move |_| {
        if d.load(Ordering::SeqCst) {
            (503, json!({"message": "Service Unavailable"}))
        } else {
            let n = a.fetch_add(1, Ordering::SeqCst) + 1;
            (
                201,
                json!({"number": n, "html_url": format!("https://github.com/acme/shop/issues/{n}")}),
            )
        }
    })
    .await;
    let app = TestApp::embedded()
        .config(&trackers_config(
            &github.base,
            "http://127.0.0.1:9",
            "github",
        ))
        .start()
        .await;
    let fb = &app.fb;
    let id = open_incident(fb).await;
    let (status, created) = fb
        .post(
            &format!("/api/v1/incidents/{id}/action-items"),
            &json!({"title": "Add a canary gate"}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let item_id = created["id"].as_i64().unwrap();
    // Failing: the item says why, and is tried again.
    let failing = eventually("two failed attempts", WAIT, || async {
        let i = item(fb, id, item_id).await;
        (i["tracker"]["attempts"].as_i64()? >= 2).then_some(i)
    })
    .await;
    assert_eq!(failing["tracker"]["export"], "failed");
    assert!(
        failing["tracker"]["error"]
            .as_str()
            .unwrap()
            .contains("503"),
        "{failing}"
    );
    // Meanwhile the incident and the item are usable.
    let (status, _) = patch(
        fb,
        &format!("/api/v1/action-items/{item_id}"),
        &json!({"owner": "ana"}),
    )
    .await;
    assert_eq!(status, 200);
    down.store(false, Ordering::SeqCst);
    let exported = eventually("exported once back", Duration::from_secs(60), || async {
        let i = item(fb, id, item_id).await;
        (i["tracker"]["export"] == "exported").then_some(i)
    })
    .await;
    assert_eq!(exported["tracker"]["key"], "#1");
    assert_eq!(exported["tracker"]["error"], Value::Null);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        answered.load(Ordering::SeqCst),
        1,
        "one issue, not one per attempt"
    );
}

/// The Basic authorization header Jira's documentation shows.
mod base64_check {
    pub fn basic(user: &str, password: &str) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let input = format!("{user}:{password}");
        let bytes = input.as_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        format!("Basic {out}")
    }
}
