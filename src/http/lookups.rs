//! Short-lived copies of the tenants and event types that every request reads: an ingest request
//! names a tenant and an event type, and reading both from the store cost two round trips per
//! event. A copy lives one second at most, and a change made through this process (PATCH,
//! DELETE, archive) forgets it at once; a change made through another replica applies here
//! within that second. Lookups that find nothing are not kept, so a new tenant or event type is
//! found at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::domain::event_type::EventType;
use crate::domain::tenant::Tenant;
use crate::storage::{Store, StoreError};

/// How long a copy is used.
const FRESH: Duration = Duration::from_secs(1);
/// Most copies of one kind kept; beyond, all are dropped.
const MOST: usize = 10_000;

/// Copies by key, each with when it was read.
struct Copies<T>(Mutex<HashMap<String, (Instant, T)>>);

impl<T: Clone> Copies<T> {
    fn get(&self, key: &str) -> Option<T> {
        let copies = self.0.lock().ok()?;
        copies.get(key).filter(|(at, _)| at.elapsed() < FRESH).map(|(_, value)| value.clone())
    }

    fn keep(&self, key: &str, value: &T) {
        if let Ok(mut copies) = self.0.lock() {
            if copies.len() >= MOST {
                copies.clear();
            }
            copies.insert(key.to_owned(), (Instant::now(), value.clone()));
        }
    }

    /// The fresh copy under `key`, else what `read` finds, kept (nothing is kept on an error).
    async fn get_or_read<E>(&self, key: &str, read: impl Future<Output = Result<T, E>>) -> Result<T, E> {
        if let Some(value) = self.get(key) {
            return Ok(value);
        }
        let value = read.await?;
        self.keep(key, &value);
        Ok(value)
    }

    fn forget(&self) {
        if let Ok(mut copies) = self.0.lock() {
            copies.clear();
        }
    }
}

impl<T> Default for Copies<T> {
    fn default() -> Self {
        Copies(Mutex::new(HashMap::new()))
    }
}

/// The copies of one process.
#[derive(Default)]
pub struct Lookups {
    tenants: Copies<Tenant>,
    event_types: Copies<EventType>,
}

impl Lookups {
    /// A live tenant by id or external id.
    pub async fn tenant(&self, store: &Store, key: &str) -> Result<Tenant, StoreError> {
        self.tenants.get_or_read(key, store.get_tenant(key)).await
    }

    /// An event type, archived or not.
    pub async fn event_type(&self, store: &Store, name: &str) -> Result<EventType, StoreError> {
        self.event_types.get_or_read(name, store.get_event_type(name)).await
    }

    /// A tenant changed or went (a tenant is kept under its id and its external id, so all go).
    pub fn forget_tenants(&self) {
        self.tenants.forget();
    }

    /// An event type changed.
    pub fn forget_event_types(&self) {
        self.event_types.forget();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_is_kept_until_forgotten_or_stale() {
        let copies: Copies<u32> = Copies::default();
        assert_eq!(copies.get("a"), None);
        copies.keep("a", &1);
        assert_eq!(copies.get("a"), Some(1));
        copies.forget();
        assert_eq!(copies.get("a"), None);
        copies.0.lock().expect("lock").insert("b".into(), (Instant::now() - FRESH, 2));
        assert_eq!(copies.get("b"), None, "older than FRESH");
    }
}
