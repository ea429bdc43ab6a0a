//! `drive-backup` and `drive-mirror`: the older forms of backup and
//! mirror that name a target file instead of a node. The target image is
//! created (`mode=absolute-paths`, the default; `format` defaults to the
//! source's) or opened (`mode=existing`) as a node of the job's own,
//! which closes with the job unless a mirror's pivot gave it users.

use std::sync::Arc;

use schema::block::BlockdevOptions;
use schema::job::{BlockdevBackupArgs, DriveMirror, MirrorCopyMode, MirrorSyncMode, NewImageMode};
use schema::transaction::DriveBackup;
use serde_json::json;

use super::backup::{self, PreparedBackup};
use super::mirror::{self, InitialDirt, MirrorSetup};
use super::{check_root, CommonOptions};
use crate::error::{BlockError, BlockResult};
use crate::filename::display_filename;
use crate::graph::{generic, BlockGraph};
use crate::job::{JobRegistry, TxnId};
use crate::node::Node;

/// The formats a target can be created in.
const FORMATS: [&str; 2] = ["qcow2", "raw"];

/// Creates (unless `existing`) and opens the target image `filename`,
/// as node `node_name` if given. A qcow2 target of a `top`/`none` copy
/// names what stays below as its backing file, as QEMU's.
async fn open_target(
    graph: &BlockGraph,
    source: &Arc<Node>,
    filename: &str,
    format: Option<&str>,
    mode: NewImageMode,
    sync: MirrorSyncMode,
    node_name: Option<&str>,
) -> BlockResult<Arc<Node>> {
    // An existing image of no given format is probed, as QEMU's.
    let format = match (format, mode) {
        (Some(format), _) => format,
        (None, NewImageMode::Existing) => crate::probe::probe_format(filename)
            .map_err(|e| BlockError::from_io(format!("Could not open '{filename}'"), e))?,
        (None, _) => source.driver().format_name(),
    };
    if !FORMATS.contains(&format) {
        return Err(generic(format!("Unknown file format '{format}'")));
    }
    if mode == NewImageMode::AbsolutePaths {
        let below = match sync {
            MirrorSyncMode::Top => source.child(crate::driver::ChildRole::Backing),
            MirrorSyncMode::None => Some(source.clone()),
            _ => None,
        };
        let backing = below.map(|b| (display_filename(&b), b.driver().format_name()));
        let backing = backing
            .as_ref()
            .map(|(name, format)| (name.as_str(), *format));
        crate::create::create_image_file(graph, filename, format, source.size(), backing).await?;
    }
    let mut options = json!({"driver": format, "file": {"driver": "file", "filename": filename}});
    if format == "qcow2" {
        options["backing"] = json!(null);
    }
    if let Some(name) = node_name {
        options["node-name"] = json!(name);
    }
    let options: BlockdevOptions =
        schema::from_json(options).map_err(|error| generic(error.desc))?;
    graph.blockdev_add_unnamed(&options).await
}

/// Prepares a `drive-backup` (its job created, its point in time fixed).
pub async fn prepare_backup(
    graph: &BlockGraph,
    jobs: &JobRegistry,
    args: DriveBackup,
    txn: Option<TxnId>,
) -> BlockResult<PreparedBackup> {
    let source = graph.lookup(Some(&args.device), Some(&args.device))?;
    let mode = args.mode.unwrap_or_default();
    let target = open_target(
        graph,
        &source,
        &args.target,
        args.format.as_deref(),
        mode,
        args.sync,
        None,
    )
    .await?;
    let backup_args = BlockdevBackupArgs {
        job_id: args.job_id,
        device: args.device,
        target: target.name().to_owned(),
        sync: args.sync,
        speed: args.speed,
        bitmap: args.bitmap,
        bitmap_mode: args.bitmap_mode,
        compress: args.compress,
        on_source_error: args.on_source_error,
        on_target_error: args.on_target_error,
        auto_finalize: args.auto_finalize,
        auto_dismiss: args.auto_dismiss,
        filter_node_name: args.filter_node_name,
        discard_source: args.discard_source,
        x_perf: args.x_perf,
    };
    match backup::prepare(graph, jobs, backup_args, txn).await {
        Ok(prepared) => {
            prepared.own_target();
            Ok(prepared)
        }
        Err(error) => {
            graph.release_job_node(&target).await;
            Err(error)
        }
    }
}

/// `drive-backup`.
pub async fn start_backup(
    graph: &BlockGraph,
    jobs: &JobRegistry,
    args: DriveBackup,
) -> BlockResult<()> {
    prepare_backup(graph, jobs, args, None).await?.start();
    Ok(())
}

/// `drive-mirror`.
pub async fn start_mirror(
    graph: &BlockGraph,
    jobs: &JobRegistry,
    args: DriveMirror,
) -> BlockResult<()> {
    let source = graph.lookup(Some(&args.device), Some(&args.device))?;
    check_root(graph, &source)?;
    graph.check_not_blocked(&source)?;
    if matches!(
        args.sync,
        MirrorSyncMode::Incremental | MirrorSyncMode::Bitmap
    ) {
        return Err(generic(format!(
            "Sync mode '{}' not supported",
            crate::job::job_type_name_of(&args.sync)
        )));
    }
    if args.replaces.is_some() && args.node_name.is_none() {
        return Err(generic(
            "a node-name must be provided when replacing a named node of the graph",
        ));
    }
    let mode = args.mode.unwrap_or_default();
    let target = open_target(
        graph,
        &source,
        &args.target,
        args.format.as_deref(),
        mode,
        args.sync,
        args.node_name.as_deref(),
    )
    .await?;
    let replaces = args
        .replaces
        .as_deref()
        .map(|name| mirror::check_replaces(graph, &source, name))
        .transpose();
    let replaces = match replaces {
        Ok(replaces) => replaces,
        Err(error) => {
            graph.release_job_node(&target).await;
            return Err(error);
        }
    };
    let setup = MirrorSetup {
        job_type: schema::create::JobType::Mirror,
        common: CommonOptions {
            job_id: args.job_id,
            speed: args.speed,
            auto_finalize: args.auto_finalize,
            auto_dismiss: args.auto_dismiss,
        },
        granularity: mirror::check_granularity(args.granularity, &target)?,
        buf_size: mirror::buf_size(args.buf_size)?,
        source,
        target: target.clone(),
        initial: match args.sync {
            // A target made here reads as zeroes: only data is copied.
            MirrorSyncMode::Full if mode == NewImageMode::AbsolutePaths => InitialDirt::Data,
            MirrorSyncMode::Full => InitialDirt::All,
            MirrorSyncMode::Top => InitialDirt::AboveDepth(2),
            _ => InitialDirt::Nothing,
        },
        on_source_error: args.on_source_error.unwrap_or_default(),
        on_target_error: args.on_target_error.unwrap_or_default(),
        copy_mode: args.copy_mode.unwrap_or(MirrorCopyMode::Background),
        filter_node_name: None,
        owns_target: true,
        replaces,
    };
    if let Err(error) = mirror::start_with(graph, jobs, setup).await {
        graph.release_job_node(&target).await;
        return Err(error);
    }
    Ok(())
}
