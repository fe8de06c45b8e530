//! The event bus behind `ctl watch`: link state changes, rejections,
//! topology applied or refused, reloads, registrations and federation
//! refusals, one JSON object each.
//!
//! Each subscriber has a bounded queue ([`WATCH_QUEUE`]); an event that does
//! not fit is dropped for that subscriber only and counted, so a slow
//! watcher never slows the node or another watcher. Publishing with no
//! subscriber costs one lock and builds nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

/// Events queued per subscriber before new ones are dropped (and counted).
pub const WATCH_QUEUE: usize = 256;
/// Most subscribers at once (the debug socket admits 16 clients anyway).
pub const MAX_WATCHERS: usize = 16;

/// One event.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// When, RFC 3339.
    pub at: String,
    /// `link`, `rejection`, `topology`, `reload`, `registration`, `federation`.
    pub kind: &'static str,
    /// What happened (an object).
    #[serde(flatten)]
    pub fields: Value,
}

struct Sub {
    tx: mpsc::Sender<Event>,
    dropped: Arc<AtomicU64>,
}

/// A subscriber's end.
pub struct Subscription {
    /// The events.
    pub rx: mpsc::Receiver<Event>,
    /// Events dropped because the queue was full.
    pub dropped: Arc<AtomicU64>,
}

/// Fan-out to the watchers.
#[derive(Default)]
pub struct EventBus {
    subs: Mutex<Vec<Sub>>,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventBus")
    }
}

impl EventBus {
    /// A new subscriber; `None` beyond [`MAX_WATCHERS`].
    pub fn subscribe(&self) -> Option<Subscription> {
        let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain(|s| !s.tx.is_closed());
        if subs.len() >= MAX_WATCHERS {
            return None;
        }
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        subs.push(Sub {
            tx,
            dropped: dropped.clone(),
        });
        Some(Subscription { rx, dropped })
    }

    /// Publish an event built by `fields` (called only when someone watches).
    pub fn publish(&self, kind: &'static str, fields: impl FnOnce() -> Value) {
        let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        if subs.is_empty() {
            return;
        }
        let event = Event {
            at: crate::rfc3339(time::OffsetDateTime::now_utc()),
            kind,
            fields: fields(),
        };
        subs.retain(|s| match s.tx.try_send(event.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                s.dropped.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_and_counts_for_that_subscriber_only() {
        let bus = EventBus::default();
        let mut slow = bus.subscribe().unwrap();
        let mut fast = bus.subscribe().unwrap();
        for i in 0..WATCH_QUEUE + 5 {
            bus.publish("link", || serde_json::json!({"n": i}));
            let e = fast.rx.try_recv().unwrap();
            assert_eq!(e.fields["n"], i);
        }
        assert_eq!(slow.dropped.load(Ordering::Relaxed), 5);
        assert_eq!(fast.dropped.load(Ordering::Relaxed), 0);
        assert_eq!(slow.rx.try_recv().unwrap().fields["n"], 0);
        drop(slow);
        bus.publish("link", || serde_json::json!({}));
        assert_eq!(bus.subs.lock().unwrap().len(), 1, "a closed subscriber is removed");
        let subs: Vec<_> = (0..MAX_WATCHERS).map(|_| bus.subscribe()).collect();
        assert_eq!(subs.iter().filter(|s| s.is_some()).count(), MAX_WATCHERS - 1);
        assert!(bus.subscribe().is_none());
    }
}
