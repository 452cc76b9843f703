//! The `sem_ver` operator: versions compared as semantic versions, with `~` and `^` ranges.

#[allow(unused_imports)]
use super::*;

/// A `sem_ver` operand as text: a string as it is, a number as it prints.
pub(super) fn version_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A semantic version: numbers, then pre-release identifiers (build metadata
/// dropped); a leading `v` is stripped.
fn parse_semver(s: &str) -> Option<([u64; 3], Vec<String>)> {
    let s = s.trim().trim_start_matches(['v', 'V']);
    let s = s.split('+').next()?;
    let (core, pre) = match s.split_once('-') {
        Some((c, p)) => (c, p.split('.').map(str::to_string).collect()),
        None => (s, Vec::new()),
    };
    let mut parts = core.split('.');
    let mut n = [0u64; 3];
    for (i, slot) in n.iter_mut().enumerate() {
        match parts.next() {
            Some(p) => *slot = p.parse().ok()?,
            None if i > 0 => {}
            None => return None,
        }
    }
    if parts.next().is_some() {
        return None;
    }
    Some((n, pre))
}

fn semver_cmp(a: &([u64; 3], Vec<String>), b: &([u64; 3], Vec<String>)) -> Ordering {
    a.0.cmp(&b.0)
        .then_with(|| match (a.1.is_empty(), b.1.is_empty()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => {
                for (x, y) in a.1.iter().zip(&b.1) {
                    let o = match (x.parse::<u64>(), y.parse::<u64>()) {
                        (Ok(x), Ok(y)) => x.cmp(&y),
                        (Ok(_), Err(_)) => Ordering::Less,
                        (Err(_), Ok(_)) => Ordering::Greater,
                        (Err(_), Err(_)) => x.cmp(y),
                    };
                    if o != Ordering::Equal {
                        return o;
                    }
                }
                a.1.len().cmp(&b.1.len())
            }
        })
}

pub(super) fn sem_ver(a: &str, op: &str, b: &str) -> Option<bool> {
    let (x, y) = (parse_semver(a)?, parse_semver(b)?);
    let o = semver_cmp(&x, &y);
    Some(match op {
        "=" => o == Ordering::Equal,
        "!=" => o != Ordering::Equal,
        "<" => o == Ordering::Less,
        "<=" => o != Ordering::Greater,
        ">" => o == Ordering::Greater,
        ">=" => o != Ordering::Less,
        "~" => x.0[0] == y.0[0] && x.0[1] == y.0[1],
        "^" => x.0[0] == y.0[0],
        _ => return None,
    })
}
