//! W3C Trace Context (DESIGN §16): a `traceparent` (and `tracestate`) sent with an ingest request
//! is kept with the event and carried on every attempt of its deliveries with a fresh span id in
//! the producer's trace, so the customer's handler joins it. Invalid headers are ignored, as the
//! W3C recommendation says. Pure.

/// Longest `tracestate` kept (the W3C limit is 32 members; 512 characters is what propagators
/// must at least pass on).
pub const TRACESTATE_MAX: usize = 512;

/// A parsed `traceparent`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceParent {
    /// 32 lowercase hex digits, not all zero.
    pub trace_id: String,
    /// 16 lowercase hex digits, not all zero: the producer's span.
    pub parent_id: String,
    /// The trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent` header: version `00` exactly, or a later version whose first
    /// four fields read as version 00's (the W3C forward-compatibility rule); `None` otherwise.
    pub fn parse(value: &str) -> Option<TraceParent> {
        let value = value.trim();
        let mut fields = value.split('-');
        let version = fields.next()?;
        let (trace_id, parent_id, flags) = (fields.next()?, fields.next()?, fields.next()?);
        let rest = fields.next();
        let hex = |text: &str, len: usize| {
            text.len() == len && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let known = version == "00" && rest.is_none();
        let later = hex(version, 2) && version != "00" && version != "ff";
        if !(known || later) || !hex(trace_id, 32) || !hex(parent_id, 16) || !hex(flags, 2) {
            return None;
        }
        if trace_id.bytes().all(|b| b == b'0') || parent_id.bytes().all(|b| b == b'0') {
            return None;
        }
        Some(TraceParent {
            trace_id: trace_id.to_owned(),
            parent_id: parent_id.to_owned(),
            flags: u8::from_str_radix(flags, 16).ok()?,
        })
    }

    /// Whether the producer sampled its trace.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The `traceparent` of a new span `span_id` in this trace, with its flags.
    pub fn child(&self, span_id: &str) -> String {
        format!("00-{}-{span_id}-{:02x}", self.trace_id, self.flags)
    }

    /// The stored form (version 00).
    pub fn to_header(&self) -> String {
        self.child(&self.parent_id)
    }
}

/// The trace context of an ingest request, as kept with its event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// The producer's `traceparent`.
    pub parent: TraceParent,
    /// Its `tracestate`, passed on as it came.
    pub state: Option<String>,
}

impl TraceContext {
    /// The context of a request's headers, if its `traceparent` is valid (a `tracestate`
    /// without one, or one not worth passing on, is dropped).
    pub fn from_headers(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<TraceContext> {
        let parent = TraceParent::parse(traceparent?)?;
        let state = tracestate.map(str::trim).filter(|s| valid_tracestate(s)).map(str::to_owned);
        Some(TraceContext { parent, state })
    }
}

/// A `tracestate` worth passing on: at most [`TRACESTATE_MAX`] characters of printable ASCII.
pub fn valid_tracestate(value: &str) -> bool {
    !value.trim().is_empty()
        && value.len() <= TRACESTATE_MAX
        && value.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// A fresh random span id: 16 hex digits, not all zero.
pub fn new_span_id() -> String {
    let id: u64 = rand::random::<u64>().max(1);
    format!("{id:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_a_valid_traceparent_and_makes_a_child_in_the_same_trace() {
        let parent = TraceParent::parse(PARENT).expect("valid");
        assert_eq!(parent.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(parent.sampled());
        assert_eq!(parent.to_header(), PARENT);
        let span = new_span_id();
        assert_eq!(span.len(), 16);
        assert_eq!(parent.child(&span), format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{span}-01"));
        let unsampled =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").expect("valid");
        assert!(!unsampled.sampled());
    }

    #[test]
    fn refuses_what_the_w3c_rules_refuse() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
        let later = TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever");
        assert!(later.is_some(), "a later version is read as 00");
    }

    #[test]
    fn a_context_needs_a_valid_traceparent() {
        let context = TraceContext::from_headers(Some(PARENT), Some(" rojo=1 ")).expect("valid");
        assert_eq!(context.state.as_deref(), Some("rojo=1"));
        assert_eq!(TraceContext::from_headers(None, Some("rojo=1")), None);
        assert_eq!(TraceContext::from_headers(Some("junk"), None), None);
        assert_eq!(TraceContext::from_headers(Some(PARENT), Some("bad\u{7}")).and_then(|c| c.state), None);
    }

    #[test]
    fn tracestate_is_kept_when_short_and_printable() {
        assert!(valid_tracestate("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"));
        assert!(!valid_tracestate(""));
        assert!(!valid_tracestate(&"a".repeat(TRACESTATE_MAX + 1)));
        assert!(!valid_tracestate("bad\nvalue"));
    }
}
