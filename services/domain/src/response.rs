//! Incident response by people: the severity scale, the response stage and
//! who commands. Pure rules; the remediation crate applies them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The severity scale people declare, and how alert `severity` labels map
/// onto it for incidents that alerts open.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeverityScale {
    /// Most severe first, e.g. `SEV1`..`SEV4`.
    pub levels: Vec<String>,
    /// Alert `severity` label (lower case) -> level.
    pub from_labels: BTreeMap<String, String>,
}

impl Default for SeverityScale {
    fn default() -> Self {
        let levels = ["SEV1", "SEV2", "SEV3", "SEV4"].map(String::from).to_vec();
        let from_labels = [
            ("critical", "SEV1"),
            ("page", "SEV1"),
            ("high", "SEV2"),
            ("error", "SEV2"),
            ("major", "SEV2"),
            ("warning", "SEV3"),
            ("minor", "SEV3"),
            ("info", "SEV4"),
            ("low", "SEV4"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        SeverityScale {
            levels,
            from_labels,
        }
    }
}

impl SeverityScale {
    /// Checks the scale itself: levels named, distinct, and every label
    /// mapped to one of them.
    pub fn validate(&self) -> Result<(), String> {
        if self.levels.is_empty() {
            return Err("incidents.severities is empty: name at least one level".into());
        }
        for (i, l) in self.levels.iter().enumerate() {
            if l.trim().is_empty() || l.len() > 32 {
                return Err(format!(
                    "incidents.severities: {l:?} is not a level name (1-32 characters)"
                ));
            }
            if self.levels[..i].iter().any(|m| m.eq_ignore_ascii_case(l)) {
                return Err(format!("incidents.severities: {l:?} is named twice"));
            }
        }
        for (label, level) in &self.from_labels {
            if self.level(level).is_none() {
                return Err(format!(
                    "incidents.severity_from_labels: {label:?} maps to {level:?}, which is not one of {}",
                    self.levels.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// The level named `v` (any case), as the scale spells it.
    pub fn level(&self, v: &str) -> Option<&str> {
        self.levels
            .iter()
            .find(|l| l.eq_ignore_ascii_case(v.trim()))
            .map(String::as_str)
    }

    /// The level of an incident: declared by a person, else mapped from its
    /// alerts' `severity` label, else none.
    pub fn of<'a>(&'a self, declared: Option<&'a str>, label: Option<&str>) -> Option<&'a str> {
        declared.or_else(|| {
            label.and_then(|l| {
                self.from_labels
                    .get(&l.trim().to_ascii_lowercase())
                    .map(String::as_str)
            })
        })
    }

    /// The alert labels that map to `level` (for filtering by level).
    pub fn labels_of(&self, level: &str) -> Vec<String> {
        self.from_labels
            .iter()
            .filter(|(_, l)| l.as_str() == level)
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// Where the response stands. An open incident is `investigating` until a
/// person says otherwise; a resolved one is `resolved`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Investigating,
    Identified,
    Monitoring,
    Resolved,
}

impl Stage {
    pub const ALL: [Stage; 4] = [
        Stage::Investigating,
        Stage::Identified,
        Stage::Monitoring,
        Stage::Resolved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Investigating => "investigating",
            Stage::Identified => "identified",
            Stage::Monitoring => "monitoring",
            Stage::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<Stage> {
        Stage::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s.trim()))
    }

    /// The stage an incident shows: resolved when it is, else what a person
    /// set, else investigating.
    pub fn of(status: &str, stored: Option<&str>) -> Stage {
        if status == "resolved" {
            return Stage::Resolved;
        }
        stored
            .and_then(Stage::parse)
            .filter(|s| *s != Stage::Resolved)
            .unwrap_or(Stage::Investigating)
    }
}

/// A commander (or any person named in a command): an identity as Firebreak
/// writes them (`user:ana`, `slack:U123`, `token:ci`, `proxy:ana`); a bare
/// name is a local user (`ana` -> `user:ana`).
pub fn identity_name(v: &str) -> Result<String, String> {
    let v = v.trim();
    let full = if v.contains(':') {
        v.to_string()
    } else {
        format!("user:{v}")
    };
    let (kind, name) = full.split_once(':').unwrap_or(("", ""));
    let kind_ok = matches!(kind, "user" | "slack" | "token" | "proxy" | "oidc");
    let name_ok = !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || "._-@+".contains(c));
    if kind_ok && name_ok {
        Ok(full)
    } else {
        Err(format!(
            "{v:?} is not a person: give a user name (ana) or an identity (user:ana, slack:U0123)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_from_labels_and_parse_in_any_case() {
        let s = SeverityScale::default();
        s.validate().expect("the default scale is valid");
        assert_eq!(s.level("sev2"), Some("SEV2"));
        assert_eq!(s.level("SEV9"), None);
        assert_eq!(s.of(None, Some("Critical")), Some("SEV1"));
        assert_eq!(s.of(Some("SEV3"), Some("critical")), Some("SEV3"));
        assert_eq!(s.of(None, Some("unknown")), None);
        assert_eq!(s.labels_of("SEV1"), ["critical", "page"]);
        let mut bad = s.clone();
        bad.from_labels.insert("p0".into(), "SEV0".into());
        assert!(bad
            .validate()
            .expect_err("SEV0 is not on the scale")
            .contains("SEV0"));
    }

    #[test]
    fn stages_follow_the_incident() {
        assert_eq!(Stage::of("open", None), Stage::Investigating);
        assert_eq!(Stage::of("open", Some("identified")), Stage::Identified);
        assert_eq!(Stage::of("resolved", Some("identified")), Stage::Resolved);
        assert_eq!(Stage::parse("Monitoring"), Some(Stage::Monitoring));
        assert_eq!(Stage::parse("done"), None);
    }

    #[test]
    fn commanders_are_identities() {
        assert_eq!(identity_name("ana").expect("a user"), "user:ana");
        assert_eq!(
            identity_name("slack:U0123").expect("a slack user"),
            "slack:U0123"
        );
        assert!(identity_name("robot:x").is_err());
        assert!(identity_name("user:<script>").is_err());
        assert!(identity_name("").is_err());
    }
}
