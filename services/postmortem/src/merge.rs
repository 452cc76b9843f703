//! Three-way merge of a document, line by line (diff3): two people edited
//! the revision they both started from; changes to different lines combine
//! by themselves, changes to the same lines are reported side by side.

use serde::Serialize;
use similar::{capture_diff_slices, Algorithm, DiffOp};

/// Lines both sides changed differently, with what each made of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Clash {
    /// 1-based line in the base where the clash starts.
    pub base_line: usize,
    pub base: String,
    /// The version being saved.
    pub ours: String,
    /// The version saved meanwhile.
    pub theirs: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merged {
    Clean(String),
    /// The text with each clash written out as both versions between
    /// markers (yours first, then the one saved meanwhile), and the clashes.
    Clashes(String, Vec<Clash>),
}

fn lines(s: &str) -> Vec<&str> {
    s.split_inclusive('\n').collect()
}

/// For each base line, the line of `other` it stayed as (unchanged), if any.
fn matches(base: &[&str], other: &[&str]) -> Vec<Option<usize>> {
    let mut m = vec![None; base.len()];
    for op in capture_diff_slices(Algorithm::Myers, base, other) {
        if let DiffOp::Equal {
            old_index,
            new_index,
            len,
        } = op
        {
            for k in 0..len {
                m[old_index + k] = Some(new_index + k);
            }
        }
    }
    m
}

pub const OURS_MARK: &str = "<<<<<<< yours\n";
pub const SPLIT_MARK: &str = "=======\n";
pub const THEIRS_MARK: &str = ">>>>>>> saved meanwhile\n";

fn push_line(out: &mut String, seg: &str) {
    out.push_str(seg);
    if !seg.is_empty() && !seg.ends_with('\n') {
        out.push('\n');
    }
}

/// Merges `ours` and `theirs`, both edits of `base`.
pub fn merge3(base: &str, ours: &str, theirs: &str) -> Merged {
    if ours == theirs || theirs == base {
        return Merged::Clean(ours.to_string());
    }
    if ours == base {
        return Merged::Clean(theirs.to_string());
    }
    let (o, a, b) = (lines(base), lines(ours), lines(theirs));
    let (ma, mb) = (matches(&o, &a), matches(&o, &b));
    let mut out = String::new();
    let mut clashes = Vec::new();
    let (mut i, mut ia, mut ib) = (0usize, 0usize, 0usize);
    loop {
        // The next base line both sides kept, at or after the cursors.
        let next = (i..o.len()).find_map(|j| match (ma[j], mb[j]) {
            (Some(x), Some(y)) if x >= ia && y >= ib => Some((j, x, y)),
            _ => None,
        });
        let (j, ja, jb) = next.unwrap_or((o.len(), a.len(), b.len()));
        if j > i || ja > ia || jb > ib {
            let base_seg = o[i..j].concat();
            let a_seg = a[ia..ja].concat();
            let b_seg = b[ib..jb].concat();
            if a_seg == b_seg || b_seg == base_seg {
                out.push_str(&a_seg);
            } else if a_seg == base_seg {
                out.push_str(&b_seg);
            } else {
                out.push_str(OURS_MARK);
                push_line(&mut out, &a_seg);
                out.push_str(SPLIT_MARK);
                push_line(&mut out, &b_seg);
                out.push_str(THEIRS_MARK);
                clashes.push(Clash {
                    base_line: i + 1,
                    base: base_seg,
                    ours: a_seg,
                    theirs: b_seg,
                });
            }
        }
        if j >= o.len() {
            break;
        }
        out.push_str(o[j]);
        (i, ia, ib) = (j + 1, ja + 1, jb + 1);
    }
    if clashes.is_empty() {
        Merged::Clean(out)
    } else {
        Merged::Clashes(out, clashes)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const BASE: &str = "# Postmortem\n\n## Summary\n\n_What happened_\n\n## What went well\n\n- \n\n## Action items\n\n- \n";

    #[test]
    fn edits_to_different_sections_combine() {
        let ours = BASE.replace("_What happened_", "The v42 deploy broke checkout.");
        let theirs = BASE.replace(
            "## What went well\n\n- ",
            "## What went well\n\n- The kill switch worked.",
        );
        let Merged::Clean(m) = merge3(BASE, &ours, &theirs) else {
            panic!("a clean merge")
        };
        assert!(
            m.contains("The v42 deploy broke checkout.") && m.contains("The kill switch worked."),
            "{m}"
        );
        assert_eq!(m.matches("## Summary").count(), 1);
    }

    #[test]
    fn edits_to_the_same_line_clash_with_both_versions() {
        let ours = BASE.replace("_What happened_", "Ours.");
        let theirs = BASE.replace("_What happened_", "Theirs.");
        let Merged::Clashes(text, c) = merge3(BASE, &ours, &theirs) else {
            panic!("a clash")
        };
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].ours.as_str(), c[0].theirs.as_str()),
            ("Ours.\n", "Theirs.\n")
        );
        assert_eq!(c[0].base, "_What happened_\n");
        assert_eq!(c[0].base_line, 5);
        assert!(
            text.contains("<<<<<<< yours\nOurs.\n=======\nTheirs.\n>>>>>>> saved meanwhile\n"),
            "{text}"
        );
        assert!(text.starts_with("# Postmortem\n") && text.ends_with("## Action items\n\n- \n"));
    }

    #[test]
    fn insertions_deletions_and_identical_changes() {
        let ours = format!("{BASE}\n## Timeline\n\n- 14:02 alert\n");
        let theirs = BASE.replace("## What went well\n\n- \n\n", "");
        let Merged::Clean(m) = merge3(BASE, &ours, &theirs) else {
            panic!("clean")
        };
        assert!(
            m.contains("## Timeline") && !m.contains("## What went well"),
            "{m}"
        );
        assert!(m.contains("## Action items"), "{m}");
        let same = BASE.replace("- \n\n## Action", "- ok\n\n## Action");
        assert_eq!(merge3(BASE, &same, &same), Merged::Clean(same.clone()));
        assert_eq!(merge3(BASE, BASE, &same), Merged::Clean(same.clone()));
        assert_eq!(merge3(BASE, &same, BASE), Merged::Clean(same));
    }

    #[test]
    fn an_insertion_next_to_a_deletion_clashes() {
        // As in diff3: they touch the same place, so a person decides.
        let ours = format!("{BASE}\n## Timeline\n");
        let theirs = BASE.replace("## Action items\n\n- \n", "");
        assert!(matches!(merge3(BASE, &ours, &theirs), Merged::Clashes(..)));
    }

    #[test]
    fn both_appending_at_the_end_clashes() {
        let ours = format!("{BASE}ours\n");
        let theirs = format!("{BASE}theirs\n");
        let Merged::Clashes(_, c) = merge3(BASE, &ours, &theirs) else {
            panic!("clash")
        };
        assert_eq!(c[0].ours, "ours\n");
    }
}
