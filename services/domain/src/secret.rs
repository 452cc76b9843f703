//! Secrets: tokens and keys that must never reach a log line or `Debug` output.

use std::fmt;

/// A secret string: `Debug` prints `***`; read it with [`Secret::expose`] only
/// where it is sent.
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Replaces `${FIREBREAK_SECRET_…}` references with values from `env`. Only that
/// prefix is expanded, so a playbook cannot read the database URL or any other
/// variable of the process into a request.
pub fn expand(s: &str, env: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "unclosed ${ in a header or token".to_string())?;
        let name = &after[..end];
        if !name.starts_with("FIREBREAK_SECRET_") {
            return Err(format!(
                "${{{name}}}: only variables named FIREBREAK_SECRET_… can be referenced"
            ));
        }
        let value =
            env(name).ok_or_else(|| format!("${{{name}}} is not set in the environment"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_and_expand_is_limited_to_the_secret_prefix() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "***");
        let env = |k: &str| (k == "FIREBREAK_SECRET_T").then(|| "tok".to_string());
        assert_eq!(
            expand("Bearer ${FIREBREAK_SECRET_T}", env).unwrap(),
            "Bearer tok"
        );
        assert!(expand("${FIREBREAK_DATABASE_URL}", env)
            .unwrap_err()
            .contains("only variables"));
        assert!(expand("${FIREBREAK_SECRET_MISSING}", env)
            .unwrap_err()
            .contains("not set"));
    }
}
