//! Group commit for ingest: concurrent ingest requests share one transaction. A writer task takes
//! whatever requests are waiting (up to about 1,000 events), writes them in one transaction and
//! answers each request only after that commit. A failed group answers every member with the
//! error and stores none of it; a per-row conflict (an idempotency key) never fails a group.
//! With a dispatcher running in the process, the group's transaction also claims what can start
//! at once and hands it over (`dispatch::Handoff`).

use std::sync::Arc;

use tokio::sync::{Notify, mpsc, oneshot};

use crate::dispatch::Handoff;
use crate::storage::{IngestOutcome, NewEvent, Store, StoreError, claimed_everything};

/// Most events written in one group transaction (a single request may exceed it on its own).
const GROUP_EVENTS: usize = 1000;

type Reply = oneshot::Sender<Result<Vec<IngestOutcome>, Arc<StoreError>>>;

struct Request {
    events: Vec<NewEvent>,
    idempotency_since: i64,
    reply: Reply,
}

/// A handle on the group-commit writer.
#[derive(Clone)]
pub struct Committer {
    requests: mpsc::Sender<Request>,
}

/// Why an ingest request was not committed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The group's transaction failed; nothing of it was stored.
    #[error("the ingest transaction failed: {0}")]
    Store(Arc<StoreError>),
    /// The writer has stopped (the process is shutting down).
    #[error("ingest is shutting down")]
    Closed,
}

impl Committer {
    /// Starts the writer task over `store`; with `handoff`, each group also claims for the
    /// process's dispatcher. `wakeup` is notified when a group leaves deliveries for a claim.
    pub fn start(store: Arc<Store>, handoff: Option<Handoff>, wakeup: Arc<Notify>) -> Committer {
        let (requests, receiver) = mpsc::channel(4096);
        tokio::spawn(write_groups(store, receiver, handoff, wakeup));
        Committer { requests }
    }

    /// Writes `events` (with their fan-out) and returns once they are committed.
    pub async fn ingest(
        &self,
        events: Vec<NewEvent>,
        idempotency_since: i64,
    ) -> Result<Vec<IngestOutcome>, CommitError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request { events, idempotency_since, reply })
            .await
            .map_err(|_| CommitError::Closed)?;
        answer.await.map_err(|_| CommitError::Closed)?.map_err(CommitError::Store)
    }
}

async fn write_groups(
    store: Arc<Store>,
    mut receiver: mpsc::Receiver<Request>,
    handoff: Option<Handoff>,
    wakeup: Arc<Notify>,
) {
    while let Some(first) = receiver.recv().await {
        let mut group = vec![first];
        let mut size = group[0].events.len();
        while size < GROUP_EVENTS {
            match receiver.try_recv() {
                Ok(request) => {
                    size += request.events.len();
                    group.push(request);
                }
                Err(_) => break,
            }
        }
        let since = group.iter().map(|r| r.idempotency_since).min().unwrap_or_default();
        let events: Vec<NewEvent> = group.iter().flat_map(|r| r.events.iter().cloned()).collect();
        let mut reservation = handoff.as_ref().and_then(|handoff| handoff.reserve());
        let (limit, lease) =
            reservation.as_ref().map_or((0, Default::default()), |r| (r.requests(), r.lease()));
        let note = |claims: &[crate::storage::Claimed]| {
            if let Some(reservation) = reservation.as_mut() {
                reservation.note(claims);
            }
        };
        let written = match store.ingest_and_claim(&events, since, limit, lease, note).await {
            // The claim must never cost the events: a claim that fails (an endpoint row it cannot
            // open, a lock it cannot get) rolled the group back, which is written again without.
            Err(error) if limit > 0 => {
                tracing::warn!(%error, "claiming at ingest failed; writing the group without a claim");
                drop(reservation.take());
                store.ingest(&events, since).await.map(|outcomes| (outcomes, Vec::new()))
            }
            written => written,
        };
        match written {
            Ok((outcomes, claimed)) => {
                if !claimed_everything(&events, &outcomes, &claimed) {
                    wakeup.notify_one();
                }
                if let (Some(handoff), Some(reservation)) = (&handoff, reservation) {
                    handoff.hand(reservation, claimed);
                }
                let mut outcomes = outcomes.into_iter();
                for request in group {
                    let mine: Vec<IngestOutcome> = outcomes.by_ref().take(request.events.len()).collect();
                    let _ = request.reply.send(Ok(mine));
                }
            }
            Err(error) => {
                tracing::error!(%error, events = events.len(), "an ingest group failed; none of it was stored");
                let error = Arc::new(error);
                for request in group {
                    let _ = request.reply.send(Err(error.clone()));
                }
            }
        }
    }
}
