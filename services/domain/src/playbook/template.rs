//! Placeholders: filling `{{path}}` in step text, JSON bodies and URLs, each value escaped for where it lands.

#[allow(unused_imports)]
use super::*;

static EMPTY: String = String::new();

/// Fills `{{path}}` placeholders from `vars`; each value passes through `escape`
/// (percent-encoding in URLs, nothing in JSON strings that are serialized later,
/// nothing in argv elements that never meet a shell). An unknown name is an error.
pub fn render(
    template: &str,
    vars: &BTreeMap<String, String>,
    escape: impl Fn(&str) -> String,
) -> Result<String, String> {
    fill(template, vars, |_, value, _| Ok(escape(value)))
}

/// The one placeholder filler: `escape` gets each placeholder's name, its
/// value, and whether the template's literal text so far has a `?` or `#`
/// (the value is in a URL's query or fragment, not its path).
fn fill(
    template: &str,
    vars: &BTreeMap<String, String>,
    mut escape: impl FnMut(&str, &str, bool) -> Result<String, String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    let mut in_query = false;
    while let Some(start) = rest.find("{{") {
        let literal = &rest[..start];
        in_query |= literal.contains(['?', '#']);
        out.push_str(literal);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("unclosed {{{{ in {template:?}"))?;
        let name = after[..end].trim();
        // Labels, annotations and deploys vary per event: a missing one is empty.
        let optional = ["labels.", "annotations.", "suspect.", "target."]
            .iter()
            .any(|p| name.starts_with(p));
        let value = vars
            .get(name)
            .or(optional.then_some(&EMPTY))
            .ok_or_else(|| {
                format!(
                    "unknown placeholder {{{{{name}}}}} in {template:?}; known: {}",
                    vars.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })?;
        out.push_str(&escape(name, value, in_query)?);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Fills placeholders in every string of a JSON value; serialization escapes them.
pub fn render_json(
    value: &serde_json::Value,
    vars: &BTreeMap<String, String>,
) -> Result<serde_json::Value, String> {
    use serde_json::Value;
    Ok(match value {
        Value::String(s) => Value::String(render(s, vars, str::to_string)?),
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|v| render_json(v, vars))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| Ok((k.clone(), render_json(v, vars)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// Fills placeholders in a URL template. A value in the path (before any `?`
/// or `#` of the template) must be one whole path segment: an empty value,
/// `.` or `..` would make the URL address another resource (URL parsers
/// resolve `..` and `%2E%2E` alike), so it is refused naming the placeholder.
/// Values in the query are percent-encoded.
pub fn render_url(template: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    fill(template, vars, |name, value, in_query| {
        if in_query {
            Ok(url_escape(value))
        } else {
            path_segment(value).map_err(|why| format!("{{{{{name}}}}} in {template:?} {why}"))
        }
    })
}

/// A value as one URL path segment, percent-encoded; refuses the values that
/// are not one: empty, `.` and `..`.
pub fn path_segment(value: &str) -> Result<String, String> {
    match value {
        "" => Err("is empty, and a URL path segment cannot be: the request would go to another resource".into()),
        "." | ".." => Err(format!(
            "is {value:?}, which URL parsers read as a step up or in place: the request would go to another resource"
        )),
        v => Ok(url_escape(v)),
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
