//! Ingest hands the dispatcher of its own process what it can start at once. The group commit
//! that writes a burst of events also claims, in the same transaction, the requests that can
//! start now (a claim like the dispatcher's, with its leases and attempt rows), and passes them
//! over in memory: a first attempt then needs no claim transaction of its own, and goes out as
//! soon as its event is committed.
//!
//! The dispatcher's bound on requests in flight (`[delivery] max_in_flight`) is a semaphore both
//! sides take from: ingest claims only as many requests as it could reserve slots for, and hands
//! the reserved slots over with them, so the bound holds exactly. The hand-off is on only while
//! the dispatcher's loop runs (`Dispatcher::run`): a dispatcher that tests step, `--role api` and
//! a stopping process get none, and their deliveries wait for a claim as before.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};

use crate::storage::Claimed;

/// Most requests one ingest group claims.
const MOST: usize = 64;

/// Claims made at ingest, with the slots reserved for them.
pub(super) struct Handed {
    /// The claimed deliveries (a batch's members one after another).
    pub(super) claims: Vec<Claimed>,
    /// One slot for each request among them.
    pub(super) slots: OwnedSemaphorePermit,
    /// Their requests in transit ([`InTransit`]), to count off once started.
    pub(super) in_transit: Noted,
}

/// Requests claimed at ingest and not started yet, per endpoint, counted from just before the
/// ingest commit until the dispatcher starts them (or the group fails): the dispatcher starts a
/// claim made ahead only while the endpoint's requests in flight and in transit leave room in
/// its window, so the claims of a group committed just before its own count even before they
/// reach it.
#[derive(Clone, Default)]
pub(super) struct InTransit(Arc<Mutex<HashMap<String, usize>>>);

impl InTransit {
    /// The requests to `endpoint` in transit.
    pub(super) fn to(&self, endpoint: &str) -> usize {
        self.0.lock().map(|map| map.get(endpoint).copied().unwrap_or(0)).unwrap_or(0)
    }

    fn add(&self, endpoints: &[String]) {
        if let Ok(mut map) = self.0.lock() {
            for endpoint in endpoints {
                *map.entry(endpoint.clone()).or_default() += 1;
            }
        }
    }

    fn remove(&self, endpoints: &[String]) {
        if let Ok(mut map) = self.0.lock() {
            for endpoint in endpoints {
                if let Some(count) = map.get_mut(endpoint) {
                    *count = count.saturating_sub(1);
                    if *count == 0 {
                        map.remove(endpoint);
                    }
                }
            }
        }
    }
}

/// Requests counted in transit (one endpoint id each), counted off when dropped.
#[derive(Default)]
pub(super) struct Noted {
    in_transit: InTransit,
    endpoints: Vec<String>,
}

impl Noted {
    fn take(&mut self) -> Noted {
        Noted { in_transit: self.in_transit.clone(), endpoints: std::mem::take(&mut self.endpoints) }
    }
}

impl Drop for Noted {
    fn drop(&mut self) {
        self.in_transit.remove(&self.endpoints);
    }
}

/// Ingest's side of the hand-off (cloned into the group-commit writer).
#[derive(Clone)]
pub struct Handoff {
    slots: Arc<Semaphore>,
    open: Arc<AtomicBool>,
    sender: mpsc::UnboundedSender<Handed>,
    lease: Duration,
    wakeup: Arc<Notify>,
    in_transit: InTransit,
}

impl Handoff {
    /// A hand-off over the dispatcher's `slots`, with the receiving end for the dispatcher.
    pub(super) fn new(
        slots: Arc<Semaphore>,
        open: Arc<AtomicBool>,
        lease: Duration,
        wakeup: Arc<Notify>,
    ) -> (Handoff, mpsc::UnboundedReceiver<Handed>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        (Handoff { slots, open, sender, lease, wakeup, in_transit: InTransit::default() }, receiver)
    }

    /// The requests claimed at ingest and not started yet.
    pub(super) fn in_transit(&self) -> &InTransit {
        &self.in_transit
    }

    /// Reserves free slots for the claim of an ingest group: up to [`MOST`] (an event may fan
    /// out to many endpoints); none while the dispatcher's loop is not running. The slots the
    /// claim does not use are free again as soon as the group is committed.
    pub fn reserve(&self) -> Option<Reservation> {
        if !self.open.load(Ordering::Acquire) {
            return None;
        }
        let free = self.slots.available_permits();
        let want = MOST.min(free);
        let slots = self.slots.clone().try_acquire_many_owned(u32::try_from(want).ok()?).ok()?;
        // Took every free slot: the dispatcher may be waiting for one, so it is woken when the
        // unused ones come back.
        let wakeup = (want == free).then(|| self.wakeup.clone());
        let noted = Noted { in_transit: self.in_transit.clone(), endpoints: Vec::new() };
        Some(Reservation { slots, lease: self.lease, wakeup, noted })
    }

    /// Passes the claims made with `reservation` to the dispatcher; the slots they do not use
    /// are freed.
    pub fn hand(&self, mut reservation: Reservation, claims: Vec<Claimed>) {
        let requests = super::requests_in(&claims);
        if requests == 0 {
            return;
        }
        let Some(used) = reservation.slots.split(requests) else {
            // Never: a claim takes no more requests than it has slots for. Were it to, the leases
            // lapse and the reaper closes the attempts as interrupted.
            tracing::error!(requests, "claims made at ingest outnumber their slots; left to their leases");
            return;
        };
        if !self.open.load(Ordering::Acquire) {
            // The dispatcher is stopping: its leases lapse and the reaper closes the attempts as
            // interrupted, as after a crash.
            tracing::warn!(requests, "the dispatcher stopped before it took claims made at ingest");
            return;
        }
        metrics::counter!(crate::metrics::HANDED_OFF).increment(requests as u64);
        let in_transit = reservation.noted.take();
        if self.sender.send(Handed { claims, slots: used, in_transit }).is_err() {
            // The dispatcher has stopped: the leases lapse and the reaper closes the attempts
            // as interrupted, as after a crash.
            tracing::warn!("the dispatcher stopped before it took claims made at ingest");
        }
    }
}

/// Slots reserved for one ingest group's claim; the ones it does not use are freed when it is
/// dropped.
pub struct Reservation {
    slots: OwnedSemaphorePermit,
    lease: Duration,
    /// Set when the reservation took every free slot: woken when unused ones come back.
    wakeup: Option<Arc<Notify>>,
    /// Its claims' requests, counted in transit.
    noted: Noted,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.slots.num_permits() > 0
            && let Some(wakeup) = &self.wakeup
        {
            wakeup.notify_one();
        }
    }
}

impl Reservation {
    /// How many requests the group may claim.
    pub fn requests(&self) -> i64 {
        self.slots.num_permits() as i64
    }

    /// The lease the claims take.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Counts the group's claims in transit, one per request, just before its commit; they are
    /// counted off once the dispatcher starts them, or when the reservation is dropped unhanded.
    pub fn note(&mut self, claims: &[Claimed]) {
        let endpoints: Vec<String> =
            super::requests_of(claims).map(|claim| claim.endpoint_id.clone()).collect();
        self.noted.in_transit.add(&endpoints);
        self.noted.endpoints.extend(endpoints);
    }
}
