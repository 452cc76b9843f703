//! What one event may carry. A body is bounded by `max_body_bytes`, but a
//! value repeated per event (stream labels per log line) could still grow it
//! many times over in memory, in the queue and on disk; these limits keep
//! every value small, and a value over one is refused with its path (400),
//! never accepted and never answered "try again".
//!
//! Label limits follow Prometheus and Loki practice: label names are short
//! identifiers, values short strings. Annotations (descriptions, runbook
//! links) may be longer.

use std::collections::BTreeMap;

use crate::wire::WireError;

/// Labels per alert, per log stream (with a line's structured metadata).
pub const MAX_LABELS: usize = 64;
/// Bytes in a label or annotation name.
pub const MAX_NAME: usize = 256;
/// Bytes in a label value.
pub const MAX_LABEL_VALUE: usize = 4 * 1024;
/// Annotations per alert.
pub const MAX_ANNOTATIONS: usize = 64;
/// Bytes in an annotation value.
pub const MAX_ANNOTATION_VALUE: usize = 16 * 1024;
/// Bytes in a URL (an alert's generatorURL).
pub const MAX_URL: usize = 8 * 1024;
/// Bytes in one log line (Loki's default `max_line_size`).
pub const MAX_LOG_LINE: usize = 256 * 1024;

/// `s` cut to at most `max` bytes on a character boundary, with `…` when
/// cut: for showing a stranger's text (a provider's answer, a log line)
/// without holding all of it.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Checks a label (or annotation) set at `path`.
pub fn check_map(
    map: &BTreeMap<String, String>,
    path: &str,
    max_entries: usize,
    max_value: usize,
) -> Result<(), WireError> {
    if map.len() > max_entries {
        return Err(WireError::at(
            path,
            format!("{} entries; at most {max_entries}", map.len()),
        ));
    }
    for (k, v) in map {
        if k.len() > MAX_NAME {
            return Err(WireError::at(
                path,
                format!(
                    "a name of {} bytes ({:?}…); at most {MAX_NAME}",
                    k.len(),
                    prefix(k)
                ),
            ));
        }
        if v.len() > max_value {
            return Err(WireError::at(
                format!("{path}.{k}"),
                format!("the value is {} bytes; at most {max_value}", v.len()),
            ));
        }
    }
    Ok(())
}

/// Checks one string's length.
pub fn check_len(value: &str, path: &str, max: usize) -> Result<(), WireError> {
    if value.len() > max {
        Err(WireError::at(
            path,
            format!("is {} bytes; at most {max}", value.len()),
        ))
    } else {
        Ok(())
    }
}

fn prefix(s: &str) -> &str {
    let mut end = s.len().min(24);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_values_and_counts_are_bounded() {
        let mut m = BTreeMap::new();
        m.insert("service".to_string(), "checkout".to_string());
        assert!(check_map(&m, "labels", MAX_LABELS, MAX_LABEL_VALUE).is_ok());
        m.insert("big".into(), "x".repeat(MAX_LABEL_VALUE + 1));
        let e = check_map(&m, "alerts[0].labels", MAX_LABELS, MAX_LABEL_VALUE)
            .expect_err("a 4097-byte value is refused");
        assert_eq!(e.path, "alerts[0].labels.big");
        assert!(e.message.contains("at most 4096"), "{e}");
        let long_name: BTreeMap<_, _> = [("n".repeat(300), String::new())].into();
        let e = check_map(&long_name, "labels", MAX_LABELS, MAX_LABEL_VALUE)
            .expect_err("a 300-byte name is refused");
        assert!(e.message.contains("a name of 300 bytes"), "{e}");
        let many: BTreeMap<_, _> = (0..65).map(|i| (format!("l{i}"), String::new())).collect();
        assert!(check_map(&many, "labels", MAX_LABELS, MAX_LABEL_VALUE).is_err());
        assert!(check_len("ok", "x", 2).is_ok() && check_len("oops", "x", 2).is_err());
    }
}
