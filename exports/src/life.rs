//! The life of one export, whatever its type: the clients that use it,
//! the resources it still holds, and the moment it is really gone.
//!
//! A client (an NBD connection in transmission, a FUSE request being
//! served) makes the export "in use": a safe delete is refused while
//! there is one, a hard delete tells them all to go through the
//! export's disconnect token. A hold is something the export tears down
//! by itself once it is closing (a FUSE mount and its threads): it does
//! not make the export in use, but the export is not gone before it is
//! released. When the last client and the last hold are gone after the
//! export was closed, its `on_gone` callback runs (which is when QMP
//! reports `BLOCK_EXPORT_DELETED`).

use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;

/// Who uses an export, and whether it is closing.
pub struct ExportLife {
    state: Arc<Mutex<State>>,
    /// Cancelled when the export's clients must go.
    disconnect: CancellationToken,
}

#[derive(Default)]
struct State {
    clients: usize,
    holds: usize,
    closing: bool,
    on_gone: Option<Box<dyn FnOnce() + Send>>,
}

/// Why an export could not be closed safely.
#[derive(Debug, PartialEq, Eq)]
pub struct InUse;

/// How an export is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseMode {
    /// Only if no client uses it.
    Safe,
    /// Its clients are told to go.
    Hard,
}

/// Where closing an export left it.
#[derive(Debug, PartialEq, Eq)]
pub enum Closing {
    /// Nothing used or held it: it is gone (the callback was dropped).
    Idle,
    /// Clients or holds remain; the callback runs after the last.
    Pending,
}

impl ExportLife {
    /// A live export without clients. Its disconnect token is a child of
    /// `parent` (a server's stop token), if given.
    pub fn new(parent: Option<&CancellationToken>) -> ExportLife {
        ExportLife {
            state: Arc::default(),
            disconnect: parent.map_or_else(CancellationToken::new, |p| p.child_token()),
        }
    }

    /// Fires when this export's clients must go.
    pub fn disconnect_token(&self) -> &CancellationToken {
        &self.disconnect
    }

    /// Clients using the export now.
    pub fn client_count(&self) -> usize {
        self.state().clients
    }

    /// Whether the export was closed.
    pub fn is_closing(&self) -> bool {
        self.state().closing
    }

    /// Registers a client; `None` once the export is closing.
    pub fn attach_client(&self) -> Option<LifeGuard> {
        let mut state = self.state();
        if state.closing {
            return None;
        }
        state.clients += 1;
        Some(LifeGuard {
            state: Arc::clone(&self.state),
            client: true,
        })
    }

    /// Registers a resource the export releases by itself after it is
    /// closed; the export is not gone before the guard is dropped.
    pub fn hold(&self) -> LifeGuard {
        self.state().holds += 1;
        LifeGuard {
            state: Arc::clone(&self.state),
            client: false,
        }
    }

    /// Closes the export: no new client may attach, and with
    /// [`CloseMode::Hard`] the present ones are told to go. A safe close
    /// of an export in use changes nothing and fails. `on_gone` runs
    /// once the last client and hold are gone, unless there are none
    /// (then the export is gone already). Closing twice does nothing.
    pub fn close(
        &self,
        mode: CloseMode,
        on_gone: impl FnOnce() + Send + 'static,
    ) -> Result<Closing, InUse> {
        let mut state = self.state();
        if state.closing {
            return Ok(Closing::Pending);
        }
        if mode == CloseMode::Safe && state.clients > 0 {
            return Err(InUse);
        }
        state.closing = true;
        if state.clients == 0 && state.holds == 0 {
            return Ok(Closing::Idle);
        }
        state.on_gone = Some(Box::new(on_gone));
        drop(state);
        self.disconnect.cancel();
        Ok(Closing::Pending)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

/// A client's or a hold's place in an export's life; dropping the last
/// one of a closed export runs its callback.
pub struct LifeGuard {
    state: Arc<Mutex<State>>,
    client: bool,
}

impl Drop for LifeGuard {
    fn drop(&mut self) {
        let mut state = lock(&self.state);
        if self.client {
            state.clients -= 1;
        } else {
            state.holds -= 1;
        }
        let gone = if state.clients == 0 && state.holds == 0 {
            state.on_gone.take()
        } else {
            None
        };
        drop(state);
        if let Some(on_gone) = gone {
            on_gone();
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // The counters stay consistent even if a holder panicked.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn flag() -> (Arc<AtomicBool>, impl FnOnce() + Send + 'static) {
        let gone = Arc::new(AtomicBool::new(false));
        let set = Arc::clone(&gone);
        (gone, move || set.store(true, Ordering::SeqCst))
    }

    #[test]
    fn safe_close_refused_while_a_client_attaches() {
        let life = ExportLife::new(None);
        let client = life.attach_client().expect("open");
        let (gone, on_gone) = flag();
        assert_eq!(life.close(CloseMode::Safe, on_gone), Err(InUse));
        assert!(!life.is_closing());
        drop(client);
        assert!(!gone.load(Ordering::SeqCst));
        let (_, on_gone) = flag();
        assert_eq!(life.close(CloseMode::Safe, on_gone), Ok(Closing::Idle));
        assert!(life.attach_client().is_none());
    }

    #[test]
    fn hard_close_waits_for_clients_and_holds() {
        let life = ExportLife::new(None);
        let client = life.attach_client().expect("open");
        let hold = life.hold();
        let (gone, on_gone) = flag();
        assert_eq!(life.close(CloseMode::Hard, on_gone), Ok(Closing::Pending));
        assert!(life.disconnect_token().is_cancelled());
        drop(client);
        assert!(!gone.load(Ordering::SeqCst));
        drop(hold);
        assert!(gone.load(Ordering::SeqCst));
    }

    #[test]
    fn a_hold_does_not_make_the_export_in_use() {
        let life = ExportLife::new(None);
        let hold = life.hold();
        let (gone, on_gone) = flag();
        assert_eq!(life.close(CloseMode::Safe, on_gone), Ok(Closing::Pending));
        drop(hold);
        assert!(gone.load(Ordering::SeqCst));
    }
}
