//! Postmortem drafts: the context of one incident (timeline, suspect changes,
//! gates, actions, mined log patterns), rendered from `templates/` with
//! handlebars in strict mode; regeneration that never destroys human edits;
//! the blameless check; a sanitized HTML export.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use firebreak_store::{
    ActionFilter, ActionRow, PostmortemRow, PostmortemSave, SaveOutcome, ServiceWindow, Store,
    StoreError,
};
use serde::Serialize;
use serde_json::Value;

pub mod action_items;
pub mod context;
pub mod lint;
pub mod logmine;
pub mod merge;
pub mod sections;
pub mod trackers;

pub use sections::Conflict;

#[derive(Debug, thiserror::Error)]
pub enum PostmortemError {
    #[error("template {file}: {message}")]
    Template { file: String, message: String },
    #[error("no incident {0}")]
    NoIncident(i64),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone)]
pub struct PostmortemConfig {
    pub templates: PathBuf,
    pub timezone: Tz,
    /// How far before the incident deploys are suspects (as for correlation).
    pub lookback: Duration,
    /// Logs this long before the suspect deploy (or the first alert) are mined too.
    pub log_lead: Duration,
}

impl Default for PostmortemConfig {
    fn default() -> Self {
        PostmortemConfig {
            templates: PathBuf::from("templates"),
            timezone: Tz::UTC,
            lookback: Duration::hours(2),
            log_lead: Duration::hours(1),
        }
    }
}

/// What an incident's logs say (see [`Generator::log_evidence`]).
#[derive(Debug, Clone)]
pub struct LogEvidence {
    pub reference: Option<DateTime<Utc>>,
    pub window: (DateTime<Utc>, DateTime<Utc>),
    pub patterns: Vec<logmine::Pattern>,
    pub lines: u64,
}

/// A rendered draft and the numbers behind it.
#[derive(Debug, Clone)]
pub struct Draft {
    pub markdown: String,
    pub context: Value,
    pub log_lines: u64,
}

/// What a (re)generation did.
#[derive(Debug, Clone, Serialize)]
pub struct Generated {
    pub postmortem: PostmortemRow,
    pub conflicts: Vec<Conflict>,
    pub created: bool,
}

pub struct Generator {
    store: Arc<dyn Store>,
    config: PostmortemConfig,
    /// Incidents whose draft is being refreshed, and whether a change came
    /// in meanwhile (one more run).
    refreshing: std::sync::Mutex<std::collections::HashMap<i64, bool>>,
    /// Refreshes running at once.
    refresh_permits: tokio::sync::Semaphore,
}

const TEMPLATE: &str = "postmortem.md.hbs";
/// Background draft refreshes running at once in one process.
pub const REFRESHES_AT_ONCE: usize = 2;
/// The repository's template, for when no templates directory is present.
pub const BUILTIN_TEMPLATE: &str = include_str!("../../../templates/postmortem.md.hbs");

impl Generator {
    pub fn new(store: Arc<dyn Store>, config: PostmortemConfig) -> Generator {
        Generator {
            store,
            config,
            refreshing: Default::default(),
            refresh_permits: tokio::sync::Semaphore::new(REFRESHES_AT_ONCE),
        }
    }

    /// Regenerates the incident's draft in the background, if it has one,
    /// so what changed (an action item, its ticket) shows in the document.
    /// One refresh per incident at a time: changes that arrive while one
    /// runs are covered by one more run after it. At most
    /// [`REFRESHES_AT_ONCE`] refreshes run at once in the process (a draft
    /// mines the incident's logs); the others wait their turn.
    pub fn refresh_soon(self: &Arc<Self>, incident_id: i64) {
        {
            let Ok(mut pending) = self.refreshing.lock() else {
                return;
            };
            match pending.get_mut(&incident_id) {
                // Running: run once more when it ends.
                Some(again) => {
                    *again = true;
                    return;
                }
                None => {
                    pending.insert(incident_id, false);
                }
            }
        }
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let outcome = match me.refresh_permits.acquire().await {
                    Ok(_permit) => match me.store.postmortem(incident_id).await {
                        Ok(Some(_)) => me.generate(incident_id, "firebreak").await.map(|_| ()),
                        Ok(None) => Ok(()),
                        Err(e) => Err(e.into()),
                    },
                    Err(_) => Ok(()),
                };
                if let Err(e) = outcome {
                    tracing::warn!(incident = incident_id, error = %e, "cannot refresh the postmortem draft");
                }
                let Ok(mut pending) = me.refreshing.lock() else {
                    return;
                };
                match pending.get_mut(&incident_id) {
                    Some(again) if *again => *again = false,
                    _ => {
                        pending.remove(&incident_id);
                        return;
                    }
                }
            }
        });
    }

    pub fn config(&self) -> &PostmortemConfig {
        &self.config
    }

    /// Renders the draft of one incident from the store's current data.
    pub async fn draft(&self, incident_id: i64) -> Result<Draft, PostmortemError> {
        let now = Utc::now();
        let detail = self
            .store
            .incident(incident_id)
            .await
            .map_err(|e| match e {
                StoreError::NotFound => PostmortemError::NoIncident(incident_id),
                e => e.into(),
            })?;
        // The document shows the first entries; the API has the rest.
        let timeline = self
            .store
            .timeline(incident_id, context::TIMELINE_READ as i64, 0)
            .await?;
        let mut actions = self.actions_of(incident_id).await?;
        actions.reverse();
        let action_items = self.store.action_items(incident_id).await?;
        let first_alert = context::first_alert(&detail.incident, &detail.alerts);
        let evidence = self
            .log_evidence(&detail.incident, &detail.changes, first_alert, now, None)
            .await?;
        let (patterns, lines, from, to) = (
            evidence.patterns,
            evidence.lines,
            evidence.window.0,
            evidence.window.1,
        );
        let inputs = context::Inputs {
            incident: &detail.incident,
            alerts: &detail.alerts,
            changes: &detail.changes,
            causes: &detail.causes,
            gates: &detail.gates,
            timeline: &timeline,
            timeline_total: detail.timeline_entries,
            actions: &actions,
            action_items: &action_items,
            patterns: &patterns,
            log_lines: lines,
            log_window: (from, to),
            lookback: self.config.lookback,
            tz: self.config.timezone,
            now,
        };
        let context = context::build(&inputs);
        let markdown = self.render(&context)?;
        Ok(Draft {
            markdown,
            context,
            log_lines: lines,
        })
    }

    /// The log evidence of an incident, as its draft and its page both read
    /// it: the reference (the latest suspect change within `lookback` before
    /// the first alert), the window mined (from `log_lead` before the
    /// reference, or the first alert, to the resolution or `now`), and the
    /// patterns of at most `max_lines` lines (`None`: all).
    pub async fn log_evidence(
        &self,
        incident: &firebreak_store::IncidentRow,
        changes: &[firebreak_domain::events::DeployEvent],
        first_alert: DateTime<Utc>,
        now: DateTime<Utc>,
        max_lines: Option<i64>,
    ) -> Result<LogEvidence, PostmortemError> {
        let reference = changes
            .iter()
            .filter(|d| {
                d.started_at <= first_alert && first_alert - d.started_at <= self.config.lookback
            })
            .map(|d| d.started_at)
            .max();
        let from = reference.unwrap_or(first_alert).min(first_alert) - self.config.log_lead;
        let to = incident.resolved_at.unwrap_or(now);
        let mut miner = logmine::Miner::new(reference);
        let lines = match &incident.service {
            Some(service) => {
                self.store
                    .scan_logs(
                        ServiceWindow {
                            service,
                            environment: incident.environment.as_deref(),
                            from,
                            to,
                        },
                        max_lines,
                        &mut |row| miner.add(row.at, row.level.as_deref(), &row.message),
                    )
                    .await?
            }
            None => 0,
        };
        Ok(LogEvidence {
            reference,
            window: (from, to),
            patterns: miner.patterns(),
            lines,
        })
    }

    /// The incident's actions, newest first (all of them: an incident has
    /// few).
    async fn actions_of(&self, incident_id: i64) -> Result<Vec<ActionRow>, PostmortemError> {
        let all = ActionFilter {
            incident_id: Some(incident_id),
            limit: 10_000,
            ..ActionFilter::default()
        };
        Ok(self.store.list_actions(&all).await?)
    }

    /// Names of people known from the incident (deploy actors, approvers,
    /// who asked for actions, acknowledged, commanded or confirmed a cause):
    /// the blameless check flags them when they are named as a cause.
    pub async fn people(&self, incident_id: i64) -> Result<Vec<String>, PostmortemError> {
        let detail = self.store.incident(incident_id).await?;
        let actions = self.actions_of(incident_id).await?;
        let mut names: Vec<String> = detail
            .changes
            .iter()
            .filter_map(|d| d.actor.clone())
            .chain(actions.iter().filter_map(|a| a.decided_by.clone()))
            .chain(
                actions
                    .iter()
                    .map(|a| a.requested_by.clone())
                    .filter(|r| r.contains(':')),
            )
            .chain(detail.incident.response.acknowledged_by.clone())
            .chain(detail.incident.response.commander.clone())
            .chain(detail.causes.values().filter_map(|c| c.by.clone()))
            // Machine tokens are not people.
            .filter(|n| !n.starts_with("token:"))
            .map(|n| n.rsplit(':').next().unwrap_or(&n).to_string())
            .filter(|n| !n.is_empty() && n != "ci" && n != "api")
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Renders `postmortem.md.hbs` from the templates directory, read now, so
    /// an edited template applies to the next draft.
    pub fn render(&self, context: &Value) -> Result<String, PostmortemError> {
        let path = self.config.templates.join(TEMPLATE);
        let file = path.display().to_string();
        match std::fs::read_to_string(&path) {
            Ok(text) => render_template(&file, &text, context),
            // No templates directory where Firebreak runs: the built-in copy of
            // the repository's template.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                render_template("(built-in) postmortem.md.hbs", BUILTIN_TEMPLATE, context)
            }
            Err(e) => Err(PostmortemError::Template {
                file,
                message: format!("cannot read: {e}"),
            }),
        }
    }

    /// Creates the draft, or regenerates it into the current document without
    /// destroying human edits.
    pub async fn generate(
        &self,
        incident_id: i64,
        author: &str,
    ) -> Result<Generated, PostmortemError> {
        for _ in 0..5 {
            let draft = self.draft(incident_id).await?;
            let current = self.store.postmortem(incident_id).await?;
            let (save, conflicts) = match &current {
                None => (
                    PostmortemSave {
                        incident_id,
                        expected_revision: None,
                        markdown: draft.markdown.clone(),
                        status: "draft".into(),
                        generated: Some(draft.markdown.clone()),
                        author: author.to_string(),
                        kind: "generated".into(),
                        at: Utc::now(),
                    },
                    Vec::new(),
                ),
                Some(cur) => {
                    let (merged, conflicts) =
                        sections::merge(&cur.markdown, &cur.generated, &draft.markdown);
                    let stamp = draft.context["generated_at"].as_str().unwrap_or_default();
                    let unchanged = same_apart_from_stamp(&cur.generated, &draft.markdown, stamp);
                    if unchanged && merged_apart_from_stamp(&merged, &cur.markdown, stamp) {
                        return Ok(Generated {
                            postmortem: cur.clone(),
                            conflicts,
                            created: false,
                        });
                    }
                    (
                        PostmortemSave {
                            incident_id,
                            expected_revision: Some(cur.revision),
                            markdown: merged,
                            status: cur.status.clone(),
                            generated: Some(draft.markdown.clone()),
                            author: author.to_string(),
                            kind: "regenerated".into(),
                            at: Utc::now(),
                        },
                        conflicts,
                    )
                }
            };
            match self.store.save_postmortem(&save).await? {
                SaveOutcome::Saved(row) => {
                    return Ok(Generated {
                        postmortem: row,
                        conflicts,
                        created: current.is_none(),
                    })
                }
                // Someone saved in between: merge again into their revision.
                SaveOutcome::Stale(_) => continue,
            }
        }
        Err(PostmortemError::Store(StoreError::Conflict(
            "the postmortem kept changing while it was regenerated; try again".into(),
        )))
    }
}

/// Renders a template in strict mode: a field the context lacks is an error
/// naming the template and line.
pub fn render_template(file: &str, text: &str, context: &Value) -> Result<String, PostmortemError> {
    let mut hb = handlebars::Handlebars::new();
    hb.set_strict_mode(true);
    // Markdown, not HTML: values go in as written (the HTML export escapes
    // them); a line break inside a value would break a table row.
    hb.register_escape_fn(|s| s.replace(['\r', '\n'], " "));
    hb.register_helper("cell", Box::new(Inline(|s| s)));
    hb.register_helper("code", Box::new(Inline(code_span)));
    hb.register_template_string(TEMPLATE, text)
        .map_err(|e| PostmortemError::Template {
            file: file.to_string(),
            message: e.to_string(),
        })?;
    hb.render(TEMPLATE, context)
        .map_err(|e| PostmortemError::Template {
            file: file.to_string(),
            message: e.to_string(),
        })
}

fn helper_text(h: &handlebars::Helper<'_>) -> String {
    match h.param(0).map(|p| p.value()) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(v) => v.to_string(),
    }
}

/// A helper that writes its first parameter on one line, safe in a table
/// cell (line breaks and pipes escaped), shaped by the function it holds.
struct Inline(fn(String) -> String);

impl handlebars::HelperDef for Inline {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &handlebars::Helper<'rc>,
        _: &'reg handlebars::Handlebars<'reg>,
        _: &'rc handlebars::Context,
        _: &mut handlebars::RenderContext<'reg, 'rc>,
        out: &mut dyn handlebars::Output,
    ) -> handlebars::HelperResult {
        let s = helper_text(h)
            .replace(['\r', '\n'], " ")
            .replace('|', "\\|");
        out.write(&(self.0)(s))?;
        Ok(())
    }
}

/// Inline code: a fence longer than any run of backticks inside.
fn code_span(s: String) -> String {
    let longest = s.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest + 1);
    let pad = if s.starts_with('`') || s.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{s}{pad}{fence}")
}

/// Markdown to HTML that is safe to serve: raw HTML in the document (from a
/// person or from a log line) is shown as text, and links and images keep only
/// http, https, mailto and relative targets.
pub fn to_html(markdown: &str, title: &str) -> String {
    let html_body = markdown_html(markdown);
    let mut escaped_title = String::new();
    for c in title.chars() {
        match c {
            '<' => escaped_title.push_str("&lt;"),
            '>' => escaped_title.push_str("&gt;"),
            '&' => escaped_title.push_str("&amp;"),
            '"' => escaped_title.push_str("&quot;"),
            c => escaped_title.push(c),
        }
    }
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{escaped_title}</title>\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
         <style>body{{font-family:sans-serif;max-width:60rem;margin:2rem auto}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.2rem .4rem}}</style>\
         </head><body>\n{html_body}</body></html>\n"
    )
}

/// The body of [`to_html`]: the document as safe HTML (for previews).
pub fn markdown_html(markdown: &str) -> String {
    use pulldown_cmark::{html, CowStr, Event, Options, Parser, Tag, TagEnd};
    let body = sections::strip_markers(markdown);
    let safe_url = |u: &CowStr<'_>| -> bool {
        let lower = u.trim().to_ascii_lowercase();
        match lower.split_once(':') {
            Some((scheme, _)) if !scheme.contains('/') => {
                matches!(scheme, "http" | "https" | "mailto")
            }
            _ => true,
        }
    };
    let parser = Parser::new_ext(
        &body,
        Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH,
    )
    .map(|e| match e {
        Event::Html(s) | Event::InlineHtml(s) => Event::Text(s),
        Event::Start(Tag::Link {
            link_type,
            dest_url,
            title,
            id,
        }) if !safe_url(&dest_url) => Event::Start(Tag::Link {
            link_type,
            dest_url: CowStr::Borrowed("#"),
            title,
            id,
        }),
        // An image would be fetched by every reader's browser, with their
        // cookies: one pointing at Firebreak's own API would act as each
        // reader. Images are shown as links, fetched only when followed.
        Event::Start(Tag::Image {
            link_type,
            dest_url,
            title,
            id,
        }) => Event::Start(Tag::Link {
            link_type,
            dest_url: if safe_url(&dest_url) {
                dest_url
            } else {
                CowStr::Borrowed("#")
            },
            title,
            id,
        }),
        Event::End(TagEnd::Image) => Event::End(TagEnd::Link),
        other => other,
    });
    let mut html_body = String::new();
    html::push_html(&mut html_body, parser);
    html_body
}

/// Whether two renderings say the same apart from the time each was
/// generated at: `stamp` (the header's `generated_at`) is where `new` has it,
/// and `old` may have another time of the same length there. Without this,
/// regenerating with nothing new wrote a revision whenever a second had
/// passed since the last generation.
fn same_apart_from_stamp(old: &str, new: &str, stamp: &str) -> bool {
    if old == new {
        return true;
    }
    let Some(at) = new.find(stamp).filter(|_| !stamp.is_empty()) else {
        return false;
    };
    let end = at + stamp.len();
    old.len() == new.len()
        && old.is_char_boundary(at)
        && old.is_char_boundary(end)
        && old[..at] == new[..at]
        && old[end..] == new[end..]
}

/// The merged document against the current one: the same, or different only
/// in the machine's header stamp (the merge takes the new draft's header).
fn merged_apart_from_stamp(merged: &str, current: &str, stamp: &str) -> bool {
    same_apart_from_stamp(current, merged, stamp)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_new_stamp_alone_is_no_change() {
        let old = "# PM\n*generated at 2026-12-02 10:00:01 UTC*\nbody";
        let new = "# PM\n*generated at 2026-12-02 10:00:02 UTC*\nbody";
        assert!(same_apart_from_stamp(old, new, "2026-12-02 10:00:02 UTC"));
        let changed = "# PM\n*generated at 2026-12-02 10:00:02 UTC*\nnew body";
        assert!(!same_apart_from_stamp(
            old,
            changed,
            "2026-12-02 10:00:02 UTC"
        ));
        assert!(!same_apart_from_stamp(old, new, ""));
    }

    #[test]
    fn images_are_links_so_a_reader_never_fetches_anything() {
        let html = markdown_html(
            "![gate](/api/v1/gates/argo/checkout) ![x](javascript:alert(1)) ![ok](https://example.com/a.png)",
        );
        assert!(!html.contains("<img"), "{html}");
        assert!(
            html.contains(r#"<a href="/api/v1/gates/argo/checkout">gate</a>"#),
            "{html}"
        );
        assert!(html.contains(r##"<a href="#">x</a>"##), "{html}");
        assert!(
            html.contains(r#"<a href="https://example.com/a.png">ok</a>"#),
            "{html}"
        );
    }

    #[test]
    fn html_export_neutralizes_raw_html_and_script_links() {
        let md = "# T\n\n<script>alert(1)</script>\n\nline <img src=x onerror=alert(1)> here\n\n[x](javascript:alert(1)) [ok](https://example.com)\n\n| a |\n|---|\n| `<b>` |\n";
        let html = to_html(md, "<T>");
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(!html.contains("javascript:"), "{html}");
        assert!(html.contains("href=\"https://example.com\""));
        assert!(html.contains("<title>&lt;T&gt;</title>"));
        assert!(html.contains("<table>"));
    }

    #[test]
    fn strict_templates_name_the_missing_field() {
        let err = render_template("t.hbs", "a {{nope}}", &serde_json::json!({})).unwrap_err();
        assert!(
            err.to_string().contains("t.hbs") && err.to_string().contains("nope"),
            "{err}"
        );
    }

    #[test]
    fn helpers_escape_cells_and_fence_code() {
        let out = render_template(
            "t.hbs",
            "{{cell a}} {{code b}}",
            &serde_json::json!({"a": "x|y\nz", "b": "a `tick` b"}),
        )
        .unwrap();
        assert_eq!(out, "x\\|y z ``a `tick` b``");
    }
}
