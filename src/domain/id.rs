//! Prefixed, time-sortable identifiers: `prefix_` + the 26-character Crockford base32 form of a
//! UUIDv7, monotonic within a process.

use uuid::Uuid;

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// The kinds of object that carry an id, with their prefixes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdKind {
    /// `tnt_`
    Tenant,
    /// `tok_`
    Token,
    /// `ep_`
    Endpoint,
    /// `evt_`
    Event,
    /// `dlv_`
    Delivery,
    /// `att_`
    Attempt,
    /// `bat_`: one batch request (its `webhook-id`).
    Batch,
}

impl IdKind {
    /// The prefix, underscore included.
    pub const fn prefix(self) -> &'static str {
        match self {
            IdKind::Tenant => "tnt_",
            IdKind::Token => "tok_",
            IdKind::Endpoint => "ep_",
            IdKind::Event => "evt_",
            IdKind::Delivery => "dlv_",
            IdKind::Attempt => "att_",
            IdKind::Batch => "bat_",
        }
    }
}

/// A new id of the given kind.
pub fn new_id(kind: IdKind) -> String {
    let mut out = String::with_capacity(30);
    out.push_str(kind.prefix());
    encode_crockford(Uuid::now_v7().as_u128(), &mut out);
    out
}

/// Whether `text` has the shape of an id of `kind` (prefix + 26 Crockford characters).
pub fn is_id(kind: IdKind, text: &str) -> bool {
    text.strip_prefix(kind.prefix()).is_some_and(|rest| {
        rest.len() == 26 && rest.bytes().all(|b| CROCKFORD.contains(&b)) && rest.as_bytes()[0] <= b'7'
    })
}

fn encode_crockford(mut value: u128, out: &mut String) {
    let mut buf = [0u8; 26];
    for slot in buf.iter_mut().rev() {
        *slot = CROCKFORD[(value & 0x1f) as usize];
        value >>= 5;
    }
    out.extend(buf.iter().map(|&b| b as char));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefixed_sortable_and_well_formed() {
        let ids: Vec<String> = (0..1000).map(|_| new_id(IdKind::Event)).collect();
        for id in &ids {
            assert!(id.starts_with("evt_"));
            assert_eq!(id.len(), 30);
            assert!(is_id(IdKind::Event, id), "{id}");
            assert!(!id.contains('.'));
        }
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(sorted, ids, "ids generated in order sort in order");
        assert!(!is_id(IdKind::Tenant, &ids[0]));
        assert!(!is_id(IdKind::Event, "evt_short"));
    }

    #[test]
    fn crockford_encoding_of_known_values() {
        let mut out = String::new();
        encode_crockford(0, &mut out);
        assert_eq!(out, "00000000000000000000000000");
        out.clear();
        encode_crockford(u128::MAX, &mut out);
        assert_eq!(out, "7ZZZZZZZZZZZZZZZZZZZZZZZZZ");
    }
}
