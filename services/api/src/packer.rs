//! Packs small Alertmanager webhooks that arrive together into one bus
//! message. Per message, the bus pays a commit or a publisher confirm and the
//! engine a claim and an ack; with one alert per webhook those costs were the
//! whole cost. Webhooks queue here while a publish is in flight and go out
//! together in the next one (a group commit: no timer, so a lone webhook
//! waits for nothing), as a JSON array of their bodies, unchanged. Each
//! caller hears back only once the message holding its body is durable.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use firebreak_bus::{Bus, BusError, Lane, OutMessage};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Bodies up to this size are packed; larger ones travel alone.
pub const SMALL_BODY: usize = 64 * 1024;
/// At most this many bodies, or bytes, in one message.
const MAX_ITEMS: usize = 512;
const MAX_BYTES: usize = 4 * 1024 * 1024;
/// Publishes in flight at once (the next group forms meanwhile).
const IN_FLIGHT: usize = 4;

struct Pending {
    body: Bytes,
    /// The service all its alerts name, if they name one.
    service: Option<String>,
    done: oneshot::Sender<Result<(), BusError>>,
}

#[derive(Clone)]
pub struct Packer {
    tx: mpsc::Sender<Pending>,
}

impl Packer {
    pub fn start(bus: Arc<dyn Bus>) -> Packer {
        let (tx, rx) = mpsc::channel(8192);
        tokio::spawn(run(bus, rx));
        Packer { tx }
    }

    /// Queues one webhook body (a JSON object) and waits until it is durable.
    pub async fn publish(&self, body: Bytes, service: Option<String>) -> Result<(), BusError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Pending {
                body,
                service,
                done,
            })
            .await
            .map_err(|_| BusError::Unavailable("the webhook packer stopped".into()))?;
        wait.await
            .map_err(|_| BusError::Unavailable("the webhook packer stopped".into()))?
    }
}

async fn run(bus: Arc<dyn Bus>, mut rx: mpsc::Receiver<Pending>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        // Wait for a free publish slot first: webhooks that arrive meanwhile
        // join this group.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first.body.len();
        let mut group = vec![first];
        while group.len() < MAX_ITEMS && bytes < MAX_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.body.len();
                    group.push(p);
                }
                Err(_) => break,
            }
        }
        let bus = bus.clone();
        tokio::spawn(async move {
            let message = pack(&group);
            let result = bus.publish(std::slice::from_ref(&message)).await;
            drop(permit);
            for p in group {
                let _ = p.done.send(result.clone());
            }
        });
    }
}

/// One message: the bodies as a JSON array; one body travels as itself.
fn pack(group: &[Pending]) -> OutMessage {
    let service = match group.first().and_then(|p| p.service.as_deref()) {
        Some(s) if group.iter().all(|p| p.service.as_deref() == Some(s)) => s,
        _ => "_",
    };
    let body = if group.len() == 1 {
        group[0].body.clone()
    } else {
        let mut b =
            BytesMut::with_capacity(group.iter().map(|p| p.body.len() + 1).sum::<usize>() + 1);
        b.put_u8(b'[');
        for (i, p) in group.iter().enumerate() {
            if i > 0 {
                b.put_u8(b',');
            }
            b.put_slice(&p.body);
        }
        b.put_u8(b']');
        b.freeze()
    };
    OutMessage {
        routing_key: crate::ingest::routing_key(firebreak_domain::EventKind::Alert, service),
        body,
        lane: Lane::Bulk,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(body: &str, service: Option<&str>) -> Pending {
        Pending {
            body: Bytes::from(body.to_string()),
            service: service.map(str::to_string),
            done: oneshot::channel().0,
        }
    }

    #[test]
    fn bodies_become_one_json_array() {
        let m = pack(&[
            pending("{\"a\":1}", Some("x")),
            pending("{\"b\":2}", Some("x")),
        ]);
        assert_eq!(m.body.as_ref(), b"[{\"a\":1},{\"b\":2}]");
        assert_eq!(m.routing_key, "alert.x");
        let m = pack(&[pending("{}", Some("x")), pending("{}", Some("y"))]);
        assert_eq!(m.routing_key, "alert._");
        let one = pack(&[pending("{\"a\":1}", None)]);
        assert_eq!(
            one.body.as_ref(),
            b"{\"a\":1}",
            "a lone body travels as itself"
        );
    }
}
