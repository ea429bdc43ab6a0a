//! `transaction`: actions that succeed or fail together, as QEMU's
//! `qmp_transaction`. Every action is prepared in order (its effect is
//! made, or its job created and its point in time fixed); if one fails,
//! the prepared ones are undone in reverse order and the command fails
//! with that action's error; otherwise each is committed (jobs start).
//! With `completion-mode=grouped` the jobs started share one job
//! transaction: they finalize or abort together. The whole graph is held
//! drained meanwhile, so the actions share one point in time.

use std::sync::Arc;

use block::bitmaps::{NamedBitmap, NewBitmap};
use block::blockjob::backup::{self, PreparedBackup};
use block::dirty_bitmap::DirtyBitmap;
use block::job::TxnId;
use schema::bitmap::{BlockDirtyBitmap, BlockDirtyBitmapOrStr};
use schema::job::BlockdevSnapshot;
use schema::transaction::{
    ActionCompletionMode, BlockdevSnapshotInternal, TransactionActionKind, TransactionArgs,
};
use schema::QmpError;

use super::{command, Command};
use crate::state::Daemon;

pub const COMMANDS: &[Command] = &[command!("transaction", transaction)];

/// A prepared action: what committing or undoing it takes.
enum Prepared {
    /// A bitmap was added: undo removes it.
    BitmapAdded { node: String, name: String },
    /// A bitmap is removed on commit.
    BitmapToRemove { node: String, name: String },
    /// A bitmap's bits changed (clear, merge): undo puts them back.
    BitmapChanged {
        bitmap: Arc<NamedBitmap>,
        saved: DirtyBitmap,
    },
    /// A bitmap was enabled or disabled: undo sets it back.
    BitmapRecording {
        node: String,
        name: String,
        was: bool,
    },
    /// A backup waits to start.
    Backup(PreparedBackup),
    /// A snapshot was taken (`opened`: its overlay was opened for it).
    Snapshot {
        snapshot: BlockdevSnapshot,
        opened: bool,
    },
    /// An internal snapshot was taken: undo deletes it.
    InternalSnapshot { device: String, name: String },
}

async fn transaction(
    daemon: &Daemon,
    TransactionArgs {
        actions,
        properties,
    }: TransactionArgs,
) -> Result<(), QmpError> {
    let grouped = properties.and_then(|p| p.completion_mode) == Some(ActionCompletionMode::Grouped);
    if grouped {
        for action in &actions {
            if !matches!(
                action.action,
                TransactionActionKind::BlockdevBackup(_) | TransactionActionKind::DriveBackup(_)
            ) {
                return Err(QmpError::generic(format!(
                    "Action '{}' does not support transaction property completion-mode = grouped",
                    action.action.name()
                )));
            }
        }
    }
    let txn = grouped.then(|| daemon.jobs.new_txn());
    // No request runs between the actions: they share one point in time
    // (QEMU drains everything first).
    let _drained = daemon.graph.drained(&daemon.graph.nodes()).await;
    let mut prepared = Vec::with_capacity(actions.len());
    for action in actions {
        match prepare(daemon, action.action, txn).await {
            Ok(done) => prepared.push(done),
            Err(error) => {
                for done in prepared.into_iter().rev() {
                    undo(daemon, done).await;
                }
                return Err(error);
            }
        }
    }
    for done in prepared {
        commit(daemon, done).await;
    }
    Ok(())
}

async fn prepare(
    daemon: &Daemon,
    action: TransactionActionKind,
    txn: Option<TxnId>,
) -> Result<Prepared, QmpError> {
    let graph = &daemon.graph;
    Ok(match action {
        TransactionActionKind::Abort(_) => {
            return Err(QmpError::generic("Transaction aborted using Abort action"))
        }
        TransactionActionKind::BitmapAdd(add) => {
            let add = add.data;
            graph.bitmap_add(&NewBitmap {
                node: &add.node,
                name: &add.name,
                granularity: add.granularity,
                persistent: add.persistent.unwrap_or(false),
                disabled: add.disabled.unwrap_or(false),
            })?;
            Prepared::BitmapAdded {
                node: add.node,
                name: add.name,
            }
        }
        TransactionActionKind::BitmapRemove(remove) => {
            let remove = remove.data;
            let (_, bitmap) = graph.bitmap_lookup(&remove.node, &remove.name)?;
            bitmap.check_removable()?;
            Prepared::BitmapToRemove {
                node: remove.node,
                name: remove.name,
            }
        }
        TransactionActionKind::BitmapClear(clear) => {
            let (_, bitmap) = graph.bitmap_lookup(&clear.data.node, &clear.data.name)?;
            let saved = bitmap.bitmap().duplicate();
            graph.bitmap_clear(&clear.data.node, &clear.data.name)?;
            Prepared::BitmapChanged { bitmap, saved }
        }
        TransactionActionKind::BitmapEnable(b) => set_recording(daemon, b.data, true)?,
        TransactionActionKind::BitmapDisable(b) => set_recording(daemon, b.data, false)?,
        TransactionActionKind::BitmapMerge(merge) => {
            let merge = merge.data;
            let (_, bitmap) = graph.bitmap_lookup(&merge.node, &merge.target)?;
            let saved = bitmap.bitmap().duplicate();
            let sources: Vec<(Option<String>, String)> = merge
                .bitmaps
                .into_iter()
                .map(|source| match source {
                    BlockDirtyBitmapOrStr::Local(name) => (None, name),
                    BlockDirtyBitmapOrStr::External(b) => (Some(b.node), b.name),
                })
                .collect();
            graph.bitmap_merge(&merge.node, &merge.target, &sources)?;
            Prepared::BitmapChanged { bitmap, saved }
        }
        TransactionActionKind::BlockdevBackup(args) => {
            Prepared::Backup(backup::prepare(graph, &daemon.jobs, args.data, txn).await?)
        }
        TransactionActionKind::BlockdevSnapshot(snapshot) => {
            graph.snapshot(&snapshot.data).await?;
            Prepared::Snapshot {
                snapshot: snapshot.data,
                opened: false,
            }
        }
        TransactionActionKind::BlockdevSnapshotSync(sync) => {
            let overlay = graph.snapshot_sync(&sync.data).await?;
            Prepared::Snapshot {
                snapshot: overlay,
                opened: true,
            }
        }
        TransactionActionKind::BlockdevSnapshotInternalSync(internal) => {
            let BlockdevSnapshotInternal { device, name } = internal.data;
            graph.snapshot_internal(&device, &name).await?;
            Prepared::InternalSnapshot { device, name }
        }
        TransactionActionKind::DriveBackup(args) => Prepared::Backup(
            block::blockjob::drive::prepare_backup(graph, &daemon.jobs, args.data, txn).await?,
        ),
    })
}

/// `block-dirty-bitmap-enable` or `-disable`, remembering the old state.
fn set_recording(
    daemon: &Daemon,
    bitmap: BlockDirtyBitmap,
    recording: bool,
) -> Result<Prepared, QmpError> {
    let was = daemon
        .graph
        .bitmap_lookup(&bitmap.node, &bitmap.name)?
        .1
        .is_recording();
    daemon
        .graph
        .bitmap_set_recording(&bitmap.node, &bitmap.name, recording)?;
    Ok(Prepared::BitmapRecording {
        node: bitmap.node,
        name: bitmap.name,
        was,
    })
}

async fn commit(daemon: &Daemon, done: Prepared) {
    match done {
        Prepared::BitmapToRemove { node, name } => {
            if let Err(error) = daemon.graph.bitmap_remove(&node, &name).await {
                tracing::warn!("transaction: removing bitmap '{name}' failed: {error}");
            }
        }
        Prepared::Backup(backup) => backup.start(),
        Prepared::BitmapAdded { .. }
        | Prepared::BitmapChanged { .. }
        | Prepared::BitmapRecording { .. }
        | Prepared::Snapshot { .. }
        | Prepared::InternalSnapshot { .. } => {}
    }
}

async fn undo(daemon: &Daemon, done: Prepared) {
    let graph = &daemon.graph;
    let result = match done {
        Prepared::BitmapToRemove { .. } => Ok(()),
        Prepared::BitmapAdded { node, name } => graph.bitmap_remove(&node, &name).await,
        Prepared::BitmapChanged { bitmap, saved } => {
            bitmap.bitmap().restore(&saved);
            Ok(())
        }
        Prepared::BitmapRecording { node, name, was } => {
            graph.bitmap_set_recording(&node, &name, was)
        }
        Prepared::Backup(backup) => {
            backup.abandon().await;
            Ok(())
        }
        Prepared::Snapshot { snapshot, opened } => {
            let undone = graph.undo_snapshot(&snapshot).await;
            if opened {
                let _ = graph.blockdev_del(&snapshot.overlay).await;
            }
            undone
        }
        Prepared::InternalSnapshot { device, name } => graph
            .snapshot_delete_internal(&device, None, Some(&name))
            .await
            .map(drop),
    };
    if let Err(error) = result {
        tracing::warn!("transaction: undoing an action failed: {error}");
    }
}
