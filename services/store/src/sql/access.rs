//! `AccessStore` over any dialect: machine tokens, local users, sessions.

use super::*;

#[async_trait]
impl<D: Dialect> AccessStore for Db<D> {
    async fn create_token(&self, t: &crate::NewToken, audit: &NewAudit) -> Result<crate::TokenRow> {
        let mut tx = self.d.begin().await?;
        let scopes: Vec<&str> = t.scopes.iter().map(|s| s.as_str()).collect();
        let query = q(format!(
                "INSERT INTO api_tokens (id, name, secret_hash, scopes, created_at, created_by, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {TOKEN_COLUMNS}"
            ))
            .bind(&t.id)
            .bind(&t.name)
            .bind(&t.secret_hash)
            .bind(serde_json::json!(scopes))
            .bind(t.at)
            .bind(&t.created_by)
            .bind(t.expires_at);
        let row = fetch_one(&mut tx, query, token_row).await?;
        commit_with(tx, audit, &[]).await?;
        Ok(row)
    }

    async fn token_secret(&self, id: &str) -> Result<Option<(crate::TokenRow, String)>> {
        let query = q(format!(
            "SELECT {TOKEN_COLUMNS}, secret_hash FROM api_tokens WHERE id = $1"
        ))
        .bind(id);
        self.read_first(query, |r| Ok((token_row(r)?, r.text("secret_hash")?)))
            .await
    }

    async fn list_tokens(&self) -> Result<Vec<crate::TokenRow>> {
        self.read_all(
            q(format!(
                "SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at, id"
            )),
            token_row,
        )
        .await
    }

    async fn revoke_token(&self, id_or_name: &str, audit: &NewAudit) -> Result<bool> {
        let mut tx = self.d.begin().await?;
        let n = tx
            .execute(
                q("UPDATE api_tokens SET revoked_at = $2
                   WHERE (id = $1 OR name = $1) AND revoked_at IS NULL")
                .bind(id_or_name)
                .bind(audit.at),
            )
            .await?;
        if n > 0 {
            write_audit(&mut tx, std::slice::from_ref(audit)).await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn touch_token(&self, id: &str, at: DateTime<Utc>) -> Result<()> {
        self.d
            .write(
                q("UPDATE api_tokens SET last_used_at = $2 WHERE id = $1")
                    .bind(id)
                    .bind(at),
            )
            .await?;
        Ok(())
    }

    async fn count_credentials(&self, now: DateTime<Utc>) -> Result<u64> {
        let rows = self
            .d
            .read(
                q("SELECT (SELECT count(*) FROM api_tokens
                           WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $1))
                        + (SELECT count(*) FROM users WHERE disabled_at IS NULL) AS n")
                .bind(now),
            )
            .await?;
        Ok(rows
            .first()
            .map(|r| r.int("n"))
            .transpose()?
            .unwrap_or(0)
            .max(0) as u64)
    }

    async fn create_user(
        &self,
        user: &crate::NewUser<'_>,
        audit: &NewAudit,
    ) -> Result<crate::UserRow> {
        let mut tx = self.d.begin().await?;
        let query = q(format!(
            "INSERT INTO users (username, password_hash, role, created_at, created_by)
                 VALUES ($1, $2, $3, $4, $5) RETURNING {USER_COLUMNS}"
        ))
        .bind(user.username)
        .bind(user.password_hash)
        .bind(user.role.as_str())
        .bind(audit.at)
        .bind(&audit.actor);
        let row = fetch_one(&mut tx, query, user_row).await?;
        commit_with(tx, audit, &[]).await?;
        Ok(row)
    }

    async fn user_secret(&self, username: &str) -> Result<Option<(crate::UserRow, String)>> {
        let query = q(format!(
            "SELECT {USER_COLUMNS}, password_hash FROM users WHERE username = $1 AND disabled_at IS NULL"
        ))
        .bind(username);
        self.read_first(query, |r| Ok((user_row(r)?, r.text("password_hash")?)))
            .await
    }

    async fn list_users(&self) -> Result<Vec<crate::UserRow>> {
        self.read_all(
            q(format!(
                "SELECT {USER_COLUMNS} FROM users ORDER BY username"
            )),
            user_row,
        )
        .await
    }

    async fn sign_in_external(
        &self,
        username: &str,
        role: firebreak_domain::access::Role,
        audit: &NewAudit,
    ) -> Result<Option<crate::UserRow>> {
        let mut tx = self.d.begin().await?;
        let found = q(format!(
            "SELECT {USER_COLUMNS} FROM users WHERE username = $1"
        ))
        .bind(username)
        .for_update::<D::Tx>();
        let row = match fetch_first(&mut tx, found, user_row).await? {
            Some(u) if u.disabled_at.is_some() => return Ok(None),
            Some(u) if u.role == role => return Ok(Some(u)),
            Some(_) => {
                let query = q(format!(
                    "UPDATE users SET role = $2 WHERE username = $1 RETURNING {USER_COLUMNS}"
                ))
                .bind(username)
                .bind(role.as_str());
                fetch_one(&mut tx, query, user_row).await?
            }
            None => {
                // No password hash can match this one: they sign in only
                // through their identity provider.
                let query = q(format!(
                    "INSERT INTO users (username, password_hash, role, created_at, created_by)
                         VALUES ($1, '!external', $2, $3, $4) RETURNING {USER_COLUMNS}"
                ))
                .bind(username)
                .bind(role.as_str())
                .bind(audit.at)
                .bind(&audit.actor);
                fetch_one(&mut tx, query, user_row).await?
            }
        };
        commit_with(tx, audit, &[]).await?;
        Ok(Some(row))
    }

    async fn disable_user(&self, username: &str, audit: &NewAudit) -> Result<bool> {
        let mut tx = self.d.begin().await?;
        let n = tx
            .execute(
                q("UPDATE users SET disabled_at = $2 WHERE username = $1 AND disabled_at IS NULL")
                    .bind(username)
                    .bind(audit.at),
            )
            .await?;
        if n > 0 {
            tx.execute(q("DELETE FROM sessions WHERE username = $1").bind(username))
                .await?;
            write_audit(&mut tx, std::slice::from_ref(audit)).await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn create_session(&self, session: &NewSession<'_>) -> Result<()> {
        let NewSession {
            id_hash,
            username,
            csrf_token,
            at,
            expires_at,
        } = *session;
        let mut tx = self.d.begin().await?;
        // Expired sessions go as new ones come.
        tx.execute(q("DELETE FROM sessions WHERE expires_at < $1").bind(at))
            .await?;
        tx.execute(
            q(
                "INSERT INTO sessions (id_hash, username, csrf_token, created_at, expires_at)
               VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id_hash)
            .bind(username)
            .bind(csrf_token)
            .bind(at)
            .bind(expires_at),
        )
        .await?;
        tx.commit().await
    }

    async fn session(
        &self,
        id_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<crate::SessionRow>> {
        let rows = self
            .d
            .read(
                q(
                    "SELECT u.username, u.role, u.created_at, u.created_by, u.disabled_at,
                          s.csrf_token, s.expires_at
                   FROM sessions s JOIN users u ON u.username = s.username
                   WHERE s.id_hash = $1 AND s.expires_at > $2 AND u.disabled_at IS NULL",
                )
                .bind(id_hash)
                .bind(now),
            )
            .await?;
        rows.first()
            .map(|r| {
                Ok(from_row!(r => crate::SessionRow {
                    csrf_token: text, expires_at: time; user = user_row(r)?
                }))
            })
            .transpose()
    }

    async fn delete_session(&self, id_hash: &str) -> Result<()> {
        self.d
            .write(q("DELETE FROM sessions WHERE id_hash = $1").bind(id_hash))
            .await?;
        Ok(())
    }
}
