//! Events to every negotiated client of every monitor.
//!
//! A client subscribes when its `qmp_capabilities` succeeds and
//! unsubscribes when its connection ends; clients still negotiating get no
//! events, as in QEMU. An event is written once per output form (compact or
//! pretty) and the same bytes are queued for every client.
//!
//! Each client has a bounded output queue ([`MAX_QUEUED_MESSAGES`], shared
//! with its replies). An event that finds a client's queue full
//! disconnects that client: it has stopped reading, and silently dropping
//! events would leave it with a wrong picture of the daemon (a job it
//! believes still running). The client sees its connection close and can
//! reconnect and query the current state. QEMU instead buffers without
//! limit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use bytes::Bytes;
use schema::event::{Event, EventSink};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_util::sync::CancellationToken;

use crate::reply;

/// Messages (replies and events) that may wait to be written to one
/// client.
pub const MAX_QUEUED_MESSAGES: usize = 1024;

/// Delivers events to the negotiated clients of all monitors. Cheap to
/// clone; every clone reaches the same clients.
#[derive(Clone, Default)]
pub struct EventBus {
    subscribers: Arc<Mutex<Subscribers>>,
}

#[derive(Default)]
struct Subscribers {
    next_key: u64,
    by_key: HashMap<u64, Subscriber>,
}

struct Subscriber {
    output: mpsc::Sender<Bytes>,
    pretty: bool,
    disconnect: CancellationToken,
}

/// A client's place on the bus; dropping it unsubscribes.
pub(crate) struct Subscription {
    bus: EventBus,
    key: u64,
}

impl EventBus {
    /// A bus with no subscribers yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Subscribers> {
        // A panic while holding the lock cannot leave the map inconsistent.
        self.subscribers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends `event` to every negotiated client, stamped with the current
    /// wall-clock time (`data: Value::Null` leaves `data` out, as QEMU does
    /// for events without data). Never blocks; may be called from any
    /// thread, inside or outside a command.
    pub fn emit(&self, event: &Event) {
        let now = SystemTime::now();
        let mut compact = None;
        let mut pretty = None;
        let mut subscribers = self.lock();
        subscribers.by_key.retain(|_, subscriber| {
            let form = if subscriber.pretty {
                &mut pretty
            } else {
                &mut compact
            };
            let message = form
                .get_or_insert_with(|| reply::event(event, now, subscriber.pretty))
                .clone();
            match subscriber.output.try_send(message) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    tracing::warn!(
                        "QMP client has {MAX_QUEUED_MESSAGES} unread messages; disconnecting it"
                    );
                    subscriber.disconnect.cancel();
                    false
                }
                Err(TrySendError::Closed(_)) => false,
            }
        });
    }

    /// The bus as the sink the rest of the daemon emits events through.
    pub fn sink(&self) -> EventSink {
        let bus = self.clone();
        Arc::new(move |event: Event| bus.emit(&event))
    }

    /// Subscribes a client whose messages go to `output`.
    pub(crate) fn subscribe(
        &self,
        output: mpsc::Sender<Bytes>,
        pretty: bool,
        disconnect: CancellationToken,
    ) -> Subscription {
        let mut subscribers = self.lock();
        let key = subscribers.next_key;
        subscribers.next_key += 1;
        subscribers.by_key.insert(
            key,
            Subscriber {
                output,
                pretty,
                disconnect,
            },
        );
        Subscription {
            bus: self.clone(),
            key,
        }
    }
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("subscribers", &self.lock().by_key.len())
            .finish()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.bus.lock().by_key.remove(&self.key);
    }
}
