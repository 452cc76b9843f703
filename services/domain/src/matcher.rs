//! Alertmanager's label matcher syntax: `name="value"`, `name!="value"`,
//! `name=~"regex"`, `name!~"regex"`. Regexes are anchored at both ends, as in
//! Alertmanager, and a missing label matches as the empty string.

use std::collections::BTreeMap;
use std::fmt;

use regex::Regex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

impl MatchOp {
    fn as_str(self) -> &'static str {
        match self {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    regex: Option<Regex>,
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.op == other.op && self.value == other.value
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}{}",
            self.name,
            self.op.as_str(),
            serde_json::Value::String(self.value.clone())
        )
    }
}

impl Matcher {
    /// Parses one matcher. Values may be double-quoted (with `\"`, `\\`, `\n`
    /// escapes) or bare, as Alertmanager accepts both.
    pub fn parse(input: &str) -> Result<Matcher, String> {
        let s = input.trim();
        let name_end = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .ok_or_else(|| {
                format!("matcher {input:?} has no operator: use name=\"value\", !=, =~ or !~")
            })?;
        let name = &s[..name_end];
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!(
                "matcher {input:?}: a label name must start with a letter or _"
            ));
        }
        let rest = s[name_end..].trim_start();
        let (op, rest) = if let Some(r) = rest.strip_prefix("=~") {
            (MatchOp::Regex, r)
        } else if let Some(r) = rest.strip_prefix("!~") {
            (MatchOp::NotRegex, r)
        } else if let Some(r) = rest.strip_prefix("!=") {
            (MatchOp::NotEqual, r)
        } else if let Some(r) = rest.strip_prefix('=') {
            (MatchOp::Equal, r)
        } else {
            return Err(format!(
                "matcher {input:?}: unknown operator after {name:?}: use =, !=, =~ or !~"
            ));
        };
        let value = unquote(rest.trim()).map_err(|e| format!("matcher {input:?}: {e}"))?;
        let regex = match op {
            MatchOp::Regex | MatchOp::NotRegex => Some(
                Regex::new(&format!("^(?:{value})$"))
                    .map_err(|e| format!("matcher {input:?}: bad regular expression: {e}"))?,
            ),
            _ => None,
        };
        Ok(Matcher {
            name: name.to_string(),
            op,
            value,
            regex,
        })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.name).map(String::as_str).unwrap_or("");
        match (self.op, &self.regex) {
            (MatchOp::Equal, _) => v == self.value,
            (MatchOp::NotEqual, _) => v != self.value,
            (MatchOp::Regex, Some(re)) => re.is_match(v),
            (MatchOp::NotRegex, Some(re)) => !re.is_match(v),
            _ => false,
        }
    }
}

fn unquote(s: &str) -> Result<String, String> {
    let Some(inner) = s.strip_prefix('"') else {
        if s.contains(['"', ',', '{', '}']) {
            return Err("unquoted value contains a quote, comma or brace".into());
        }
        return Ok(s.to_string());
    };
    let mut out = String::new();
    let mut chars = inner.chars();
    loop {
        match chars.next() {
            None => return Err("value has no closing quote".into()),
            Some('"') => break,
            Some('\\') => match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(c @ ('"' | '\\')) => out.push(c),
                Some(c) => out.push(c),
                None => return Err("value ends in a backslash".into()),
            },
            Some(c) => out.push(c),
        }
    }
    if !chars.as_str().trim().is_empty() {
        return Err(format!(
            "unexpected {:?} after the closing quote",
            chars.as_str()
        ));
    }
    Ok(out)
}

impl serde::Serialize for Matcher {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Matcher {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Matcher::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_four_operators() {
        let l = labels(&[("alertname", "HighErrorRate"), ("service", "checkout")]);
        assert!(Matcher::parse(r#"alertname="HighErrorRate""#)
            .unwrap()
            .matches(&l));
        assert!(!Matcher::parse(r#"service!="checkout""#)
            .unwrap()
            .matches(&l));
        assert!(Matcher::parse(r#"service=~"checkout|payments""#)
            .unwrap()
            .matches(&l));
        assert!(Matcher::parse(r#"service!~"pay.*""#).unwrap().matches(&l));
    }

    #[test]
    fn regexes_are_anchored_and_missing_labels_are_empty() {
        let l = labels(&[("service", "checkout-v2")]);
        assert!(!Matcher::parse(r#"service=~"checkout""#)
            .unwrap()
            .matches(&l));
        assert!(Matcher::parse(r#"team="""#).unwrap().matches(&l));
        assert!(Matcher::parse(r#"team=~".*""#).unwrap().matches(&l));
        assert!(!Matcher::parse(r#"team=~".+""#).unwrap().matches(&l));
    }

    #[test]
    fn bare_values_and_escapes() {
        let m = Matcher::parse("severity = critical").unwrap();
        assert_eq!(m.value, "critical");
        let m = Matcher::parse(r#"msg="say \"hi\"""#).unwrap();
        assert_eq!(m.value, r#"say "hi""#);
        assert_eq!(m.to_string(), r#"msg="say \"hi\"""#);
    }

    #[test]
    fn errors_name_the_problem() {
        assert!(Matcher::parse("service")
            .unwrap_err()
            .contains("no operator"));
        assert!(Matcher::parse(r#"service=~"(""#)
            .unwrap_err()
            .contains("bad regular expression"));
        assert!(Matcher::parse(r#"service=="x""#)
            .unwrap_err()
            .contains("quote"));
        assert!(Matcher::parse(r#"service="x"#)
            .unwrap_err()
            .contains("closing quote"));
        assert!(Matcher::parse(r#"9x="y""#).unwrap_err().contains("letter"));
        assert!(Matcher::parse(r#"service<"y""#)
            .unwrap_err()
            .contains("unknown operator"));
    }
}
