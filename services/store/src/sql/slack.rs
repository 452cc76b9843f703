//! `SlackStore` over any dialect: the Slack outbox.

use super::*;

#[async_trait]
impl<D: Dialect> SlackStore for Db<D> {
    async fn claim_slack_message(
        &self,
        seq: i64,
        incident: i64,
        claim: OutboxClaim,
    ) -> Result<SlackClaim> {
        // New: ours. Claimed before: taken over if its claimer never posted
        // it and has had longer than a post takes (one writer wins).
        let claimed = self
            .d
            .write(
                q(
                    "INSERT INTO slack_messages (seq, incident_id, claimed_at) VALUES ($1, $2, $3)
                   ON CONFLICT (seq) DO UPDATE SET claimed_at = excluded.claimed_at
                     WHERE slack_messages.ts IS NULL AND slack_messages.claimed_at < $4
                   RETURNING seq",
                )
                .bind(seq)
                .bind(incident)
                .bind(claim.at)
                .bind(claim.stale_before),
            )
            .await?;
        if !claimed.is_empty() {
            return Ok(SlackClaim::Ours);
        }
        let posted = self
            .d
            .read(q("SELECT ts FROM slack_messages WHERE seq = $1").bind(seq))
            .await?;
        Ok(match posted.first().map(|r| r.opt_text("ts")) {
            Some(Ok(Some(_))) => SlackClaim::Posted,
            Some(Err(e)) => return Err(e),
            // Released between the two statements: the next look claims it.
            Some(Ok(None)) | None => SlackClaim::InFlight,
        })
    }

    async fn slack_message_posted(&self, seq: i64, channel: &str, ts: &str) -> Result<()> {
        self.d
            .write(
                q("UPDATE slack_messages SET channel = $2, ts = $3 WHERE seq = $1")
                    .bind(seq)
                    .bind(channel)
                    .bind(ts),
            )
            .await?;
        Ok(())
    }

    async fn release_slack_message(&self, seq: i64) -> Result<()> {
        self.d
            .write(q("DELETE FROM slack_messages WHERE seq = $1 AND ts IS NULL").bind(seq))
            .await?;
        Ok(())
    }

    async fn slack_thread(&self, incident_id: i64) -> Result<Option<(String, String)>> {
        let rows = self
            .d
            .read(
                q("SELECT channel, ts FROM slack_messages
                   WHERE incident_id = $1 AND ts IS NOT NULL ORDER BY seq LIMIT 1")
                .bind(incident_id),
            )
            .await?;
        rows.first()
            .map(|r| Ok((r.text("channel")?, r.text("ts")?)))
            .transpose()
    }
}
