//! Machine-owned sections of a postmortem and how a regeneration merges them.
//!
//! The template wraps what Firebreak writes in markers:
//! `<!-- firebreak:begin timeline -->` … `<!-- firebreak:end timeline -->`.
//! Everything outside markers belongs to people and is never touched. On
//! regeneration a machine section is replaced only if nobody edited it since the
//! last render; an edited one is kept and reported as a conflict.

use std::collections::BTreeMap;

use serde::Serialize;

const BEGIN: &str = "<!-- firebreak:begin ";
const END: &str = "<!-- firebreak:end ";
const CLOSE: &str = " -->";

#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    Human(String),
    Machine { id: String, body: String },
}

/// Splits a document into human text and machine sections. A marker without
/// its partner is treated as human text.
pub fn parse(doc: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut rest = doc;
    let mut human = String::new();
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start + BEGIN.len()..];
        let Some(id_end) = after.find(CLOSE) else {
            break;
        };
        let id = after[..id_end].trim().to_string();
        let body_start = &after[id_end + CLOSE.len()..];
        let end_marker = format!("{END}{id}{CLOSE}");
        let Some(body_end) = body_start.find(&end_marker) else {
            // Unclosed: keep it as text and go on after the begin marker.
            human.push_str(&rest[..start + BEGIN.len()]);
            rest = after;
            continue;
        };
        human.push_str(&rest[..start]);
        if !human.is_empty() {
            blocks.push(Block::Human(std::mem::take(&mut human)));
        }
        blocks.push(Block::Machine {
            id,
            body: body_start[..body_end].to_string(),
        });
        rest = &body_start[body_end + end_marker.len()..];
    }
    human.push_str(rest);
    if !human.is_empty() {
        blocks.push(Block::Human(human));
    }
    blocks
}

pub fn render(blocks: &[Block]) -> String {
    let mut out = String::new();
    for b in blocks {
        match b {
            Block::Human(t) => out.push_str(t),
            Block::Machine { id, body } => {
                out.push_str(&format!("{BEGIN}{id}{CLOSE}{body}{END}{id}{CLOSE}"));
            }
        }
    }
    out
}

pub fn machine_sections(doc: &str) -> BTreeMap<String, String> {
    parse(doc)
        .into_iter()
        .filter_map(|b| match b {
            Block::Machine { id, body } => Some((id, body)),
            Block::Human(_) => None,
        })
        .collect()
}

/// A machine section a regeneration could not update.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Conflict {
    pub section: String,
    pub reason: String,
    /// What the regeneration would have written.
    pub generated: String,
}

/// Merges a fresh render into the current document.
pub fn merge(current: &str, last_generated: &str, fresh: &str) -> (String, Vec<Conflict>) {
    let old = machine_sections(last_generated);
    let new = machine_sections(fresh);
    let mut conflicts = Vec::new();
    let mut blocks = parse(current);
    let mut seen = std::collections::BTreeSet::new();
    for b in &mut blocks {
        let Block::Machine { id, body } = b else {
            continue;
        };
        seen.insert(id.clone());
        let Some(next) = new.get(id) else {
            continue; // the template no longer has it: leave what is there
        };
        if body == next {
            continue;
        }
        if old.get(id) == Some(body) {
            *body = next.clone();
        } else {
            conflicts.push(Conflict {
                section: id.clone(),
                reason: "edited since the last generation; kept as edited".into(),
                generated: next.clone(),
            });
        }
    }
    for (id, body) in &new {
        if seen.contains(id) {
            continue;
        }
        if old.contains_key(id) {
            conflicts.push(Conflict {
                section: id.clone(),
                reason: "removed by an editor; not added back".into(),
                generated: body.clone(),
            });
        } else {
            // New in the template: append it.
            blocks.push(Block::Human("\n".into()));
            blocks.push(Block::Machine {
                id: id.clone(),
                body: body.clone(),
            });
        }
    }
    (render(&blocks), conflicts)
}

const GUIDE: &str = "<!-- firebreak:guide -->";
const GUIDE_END: &str = "<!-- firebreak:end-guide -->";

/// The document as it is exported (Markdown, HTML): without section markers
/// and without the guide for editors (between `firebreak:guide` and
/// `firebreak:end-guide`).
pub fn strip_markers(doc: &str) -> String {
    let text: String = parse(doc)
        .into_iter()
        .map(|b| match b {
            Block::Human(t) => t,
            Block::Machine { body, .. } => body,
        })
        .collect();
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(start) = rest.find(GUIDE) {
        let Some(len) = rest[start..].find(GUIDE_END) else {
            break;
        };
        out.push_str(&rest[..start]);
        let after = &rest[start + len + GUIDE_END.len()..];
        // The guide's own line break, and the blank line it leaves.
        rest = after.strip_prefix('\n').unwrap_or(after);
        if out.ends_with("\n\n") {
            rest = rest.strip_prefix('\n').unwrap_or(rest);
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn doc(timeline: &str, logs: &str, notes: &str) -> String {
        format!(
            "# Title\n<!-- firebreak:begin timeline -->\n{timeline}\n<!-- firebreak:end timeline -->\n## Notes\n{notes}\n<!-- firebreak:begin logs -->\n{logs}\n<!-- firebreak:end logs -->\n"
        )
    }

    #[test]
    fn exports_leave_out_markers_and_the_guide() {
        let d = "# T\n\n<!-- firebreak:guide -->\nHow to edit.\n<!-- firebreak:end-guide -->\n\n## S\n<!-- firebreak:begin facts -->\nfacts\n<!-- firebreak:end facts -->\n";
        let out = strip_markers(d);
        assert_eq!(out, "# T\n\n## S\n\nfacts\n\n");
        let unclosed = "a <!-- firebreak:guide --> b";
        assert_eq!(strip_markers(unclosed), unclosed);
    }

    #[test]
    fn parse_and_render_round_trip() {
        let d = doc("t1", "l1", "people wrote this");
        assert_eq!(render(&parse(&d)), d);
        assert_eq!(machine_sections(&d).len(), 2);
        let broken = "a <!-- firebreak:begin x --> never closed";
        assert_eq!(render(&parse(broken)), broken);
    }

    #[test]
    fn regeneration_updates_untouched_sections_and_keeps_human_edits() {
        let gen1 = doc("t1", "l1", "");
        let mut current = gen1.replace("## Notes\n", "## Notes\nWe learned a lot.");
        current = current.replace("l1", "l1 (annotated by a person)");
        let gen2 = doc("t1\nt2", "l2", "");
        let (merged, conflicts) = merge(&current, &gen1, &gen2);
        assert!(
            merged.contains("t1\nt2"),
            "untouched section updated: {merged}"
        );
        assert!(merged.contains("We learned a lot."), "human text kept");
        assert!(
            merged.contains("l1 (annotated by a person)"),
            "edited section kept"
        );
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].section, "logs");
        assert!(conflicts[0].generated.contains("l2"));
    }

    #[test]
    fn deleted_sections_stay_deleted_and_new_ones_are_appended() {
        let gen1 = doc("t1", "l1", "");
        let current = render(
            &parse(&gen1)
                .into_iter()
                .filter(|b| !matches!(b, Block::Machine { id, .. } if id == "logs"))
                .collect::<Vec<_>>(),
        );
        let gen2 = format!(
            "{}<!-- firebreak:begin gates -->\ng\n<!-- firebreak:end gates -->\n",
            doc("t2", "l2", "")
        );
        let (merged, conflicts) = merge(&current, &gen1, &gen2);
        assert!(!merged.contains("l2"));
        assert!(merged.contains("\ng\n"));
        assert_eq!(conflicts[0].section, "logs");
        assert!(conflicts[0].reason.contains("removed"));
    }
}
