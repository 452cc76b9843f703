//! Who may do what. Every request is made by an [`Identity`]: a machine token
//! with scopes, a person with a role (signed in, or named by a trusted
//! proxy), a Slack user mapped to a role, or — only on loopback with no
//! authentication configured — the local operator.
//!
//! Roles are ordered, viewer < editor < operator < admin, and each grants
//! the scopes of the ones below it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    /// Send alerts, deploys, gates, logs.
    #[serde(rename = "ingest")]
    Ingest,
    /// Read flags over OFREP (an application's SDK).
    #[serde(rename = "flags:read")]
    FlagsRead,
    /// Read incidents, timelines, actions, postmortems, the audit trail.
    #[serde(rename = "read")]
    Read,
    /// Edit postmortems, add notes.
    #[serde(rename = "edit")]
    Edit,
    /// Request, approve, deny and revert actions; set flags; pause automation.
    #[serde(rename = "operate")]
    Operate,
    /// Tokens, users, playbook reload.
    #[serde(rename = "admin")]
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 6] = [
        Scope::Ingest,
        Scope::FlagsRead,
        Scope::Read,
        Scope::Edit,
        Scope::Operate,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::FlagsRead => "flags:read",
            Scope::Read => "read",
            Scope::Edit => "edit",
            Scope::Operate => "operate",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Result<Scope, String> {
        word(s, &Scope::ALL, Scope::as_str, "a scope")
    }
}

/// The one of `all` whose word is `s`, or an error naming every word.
fn word<T: Copy>(
    s: &str,
    all: &[T],
    as_str: fn(T) -> &'static str,
    what: &str,
) -> Result<T, String> {
    all.iter()
        .copied()
        .find(|x| as_str(*x) == s)
        .ok_or_else(|| {
            let words: Vec<&str> = all.iter().map(|x| as_str(*x)).collect();
            format!("{s:?} is not {what}: use {}", words.join(", "))
        })
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A person's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Editor,
    Operator,
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Editor, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Result<Role, String> {
        word(s, &Role::ALL, Role::as_str, "a role")
    }

    /// Whether this role grants `scope`.
    pub fn grants(self, scope: Scope) -> bool {
        match scope {
            Scope::Read | Scope::FlagsRead => true,
            Scope::Edit => self >= Role::Editor,
            Scope::Operate => self >= Role::Operator,
            Scope::Admin | Scope::Ingest => self >= Role::Admin,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The principal of a stored user, as the audit trail and four-eyes see
/// them: `user:<name>` for a local user; a person an identity provider
/// vouched for is stored under their principal already (`oidc:<name>`).
pub fn user_principal(username: &str) -> String {
    if username.starts_with("oidc:") {
        username.to_string()
    } else {
        format!("user:{username}")
    }
}

/// How an identity was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// `Authorization: Bearer` with a machine token.
    Token,
    /// A browser session cookie (state changes need its CSRF token).
    Session,
    /// A trusted reverse proxy's user header.
    Proxy,
    /// A verified Slack request.
    Slack,
    /// No authentication is configured and the request came from loopback.
    Local,
    /// Firebreak itself (the engine, the executor).
    System,
}

/// Who is asking, as established by authentication; the audit trail records `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// `token:<name>`, `user:<name>`, `slack:<user id>`, `local`, `engine`.
    pub id: String,
    pub via: Via,
    /// A person's role; `None` for machine tokens.
    pub role: Option<Role>,
    /// A token's scopes (a person's follow from the role).
    pub scopes: Vec<Scope>,
}

impl Identity {
    pub fn token(name: &str, scopes: Vec<Scope>) -> Identity {
        Identity {
            id: format!("token:{name}"),
            via: Via::Token,
            role: None,
            scopes,
        }
    }

    pub fn person(id: String, via: Via, role: Role) -> Identity {
        Identity {
            id,
            via,
            role: Some(role),
            scopes: Vec::new(),
        }
    }

    /// The local operator of an unauthenticated, loopback-only Firebreak.
    pub fn local() -> Identity {
        Identity::person("local".into(), Via::Local, Role::Admin)
    }

    pub fn system(id: &str) -> Identity {
        Identity {
            id: id.to_string(),
            via: Via::System,
            role: Some(Role::Admin),
            scopes: Vec::new(),
        }
    }

    pub fn allows(&self, scope: Scope) -> bool {
        match self.role {
            Some(role) => role.grants(scope),
            // An admin token may do everything, as an admin may.
            None => self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin),
        }
    }

    /// The role this identity acts with, for rules that need one (four-eyes):
    /// a token's is its highest scope's.
    pub fn effective_role(&self) -> Role {
        if let Some(r) = self.role {
            return r;
        }
        if self.allows(Scope::Admin) {
            Role::Admin
        } else if self.allows(Scope::Operate) {
            Role::Operator
        } else if self.allows(Scope::Edit) {
            Role::Editor
        } else {
            Role::Viewer
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_local_user_and_a_provider_person_each_have_one_principal() {
        assert_eq!(user_principal("ana"), "user:ana");
        assert_eq!(user_principal("oidc:ana"), "oidc:ana");
    }

    #[test]
    fn roles_grant_what_is_below_them() {
        assert!(Role::Viewer.grants(Scope::Read));
        assert!(!Role::Viewer.grants(Scope::Edit));
        assert!(Role::Editor.grants(Scope::Edit) && !Role::Editor.grants(Scope::Operate));
        assert!(Role::Operator.grants(Scope::Operate) && !Role::Operator.grants(Scope::Admin));
        assert!(Role::Admin.grants(Scope::Admin));
        assert!(Role::Viewer < Role::Admin);
    }

    #[test]
    fn tokens_have_exactly_their_scopes() {
        let ingest = Identity::token("alertmanager", vec![Scope::Ingest]);
        assert!(ingest.allows(Scope::Ingest));
        assert!(!ingest.allows(Scope::Read));
        let admin = Identity::token("bootstrap", vec![Scope::Admin]);
        assert!(Scope::ALL.iter().all(|s| admin.allows(*s)));
        assert_eq!(
            Identity::token("ops", vec![Scope::Read, Scope::Operate]).effective_role(),
            Role::Operator
        );
    }

    #[test]
    fn names_parse_and_errors_list_the_choices() {
        assert_eq!(Scope::parse("flags:read").unwrap(), Scope::FlagsRead);
        assert!(Scope::parse("write")
            .unwrap_err()
            .contains("ingest, flags:read"));
        assert_eq!(Role::parse("operator").unwrap(), Role::Operator);
        assert!(Role::parse("root").unwrap_err().contains("viewer"));
        assert_eq!(
            serde_json::to_string(&Scope::FlagsRead).unwrap(),
            "\"flags:read\""
        );
    }
}
