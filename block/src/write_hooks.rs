//! The write chokepoint: every write, write-zeroes, discard and resize of
//! a node passes its [`WriteHooks`], where observers can be attached while
//! the node serves. An observer sees a request before it reaches the
//! driver (and can fail it, so that nothing is written: copy-before-write
//! needs this) and after it, with its result (dirty bitmaps record the
//! ranges written). With no observer attached the cost is one load (and
//! one for the node's activity: an inactive node, whose image another
//! process owns, refuses every write-side request with `EPERM`).

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;

use crate::error::{BlockError, BlockResult, ErrorKind};
use crate::node::Node;

/// What a write-side request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// Data written.
    Write,
    /// The range made to read as zeroes.
    Zeroes,
    /// The range discarded.
    Discard,
    /// The node resized to `offset` bytes (`len` is 0).
    Resize,
}

/// A write-side request, as observers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteRequest {
    /// What the request does.
    pub kind: WriteKind,
    /// Where it starts (the new size for a resize).
    pub offset: u64,
    /// How many bytes it covers.
    pub len: u64,
}

/// Something that watches the writes of a node.
#[async_trait]
pub trait WriteObserver: Send + Sync + 'static {
    /// Runs before the request reaches the driver; an error fails the
    /// request, and nothing is written.
    async fn before_write(&self, _node: &Node, _request: &WriteRequest) -> BlockResult<()> {
        Ok(())
    }

    /// Runs after the request, with its result.
    fn after_write(&self, _node: &Node, _request: &WriteRequest, _result: &BlockResult<()>) {}
}

/// The observers of one node.
#[derive(Default)]
pub(crate) struct WriteHooks {
    observers: ArcSwap<Vec<Arc<dyn WriteObserver>>>,
}

impl WriteHooks {
    /// Attaches `observer`: requests that start from now on pass it.
    pub(crate) fn attach(&self, observer: Arc<dyn WriteObserver>) {
        self.observers.rcu(|observers| {
            let mut observers = Vec::clone(observers);
            observers.push(observer.clone());
            observers
        });
    }

    /// Detaches `observer` (the same `Arc`); requests that start from
    /// now on no longer pass it.
    pub(crate) fn detach(&self, observer: &Arc<dyn WriteObserver>) {
        self.observers.rcu(|observers| {
            let mut observers = Vec::clone(observers);
            observers.retain(|o| !Arc::ptr_eq(o, observer));
            observers
        });
    }

    /// Runs `request` (the driver's side of it, made by `op`) past the
    /// observers. `op` makes it here for the reason
    /// [`crate::stats::IoStats::account`] does.
    pub(crate) async fn run<F>(
        &self,
        node: &Node,
        request: WriteRequest,
        op: impl FnOnce() -> F,
    ) -> BlockResult<()>
    where
        F: std::future::Future<Output = BlockResult<()>>,
    {
        if !node.is_active() {
            // The image belongs to another process now; a request that
            // waited out the hand-off must not reach it.
            return Err(BlockError::new(
                ErrorKind::PermissionDenied,
                "Operation not permitted",
            ));
        }
        let observers = self.observers.load();
        if observers.is_empty() {
            return op().await;
        }
        for observer in observers.iter() {
            observer.before_write(node, &request).await?;
        }
        let result = op().await;
        for observer in observers.iter() {
            observer.after_write(node, &request, &result);
        }
        result
    }
}
