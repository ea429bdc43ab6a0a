//! `block-commit`: folds the layers of a backing chain from `top` down to
//! just above `base` into `base`, as QEMU does. When `top` is below the
//! active layer, the job copies what those layers hold into the base
//! (under a `commit_top` filter that marks the layers as in use), then
//! the image above `top` takes the base as its backing file, in the graph
//! and in its header. When `top` is the active layer (the node in use), it
//! is an active commit: a mirror from `top` into its base that becomes
//! ready and, on `job-complete`, moves every user of `top` to the base.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use schema::create::JobType;
use schema::job::{BlockCommitArgs, BlockdevOnError, MirrorCopyMode};

use super::buffers::CopyBuffers;
use super::mirror::{self, InitialDirt, MirrorSetup};
use super::stream::{backing_chain, find_by_filename};
use super::{busy_reason, check_root, create_block_job, lock, CommonOptions, MadeWritable};
use crate::backend::BlockBackend;
use crate::copy_on_read::chain_depth;
use crate::driver::{BlockDriver, ChildRole, WriteFlags, ZeroFlags};
use crate::error::BlockResult;
use crate::filename::display_filename;
use crate::graph::{generic, BackendPerms, BlockGraph, NodeBlocker};
use crate::job::{ErrorAction, JobContext, JobDriver, JobRegistry};
use crate::node::{Node, NodeChild};
use crate::permissions::Perm;

/// The unit of copying (QEMU's `COMMIT_BUFFER_SIZE`).
const CHUNK: u64 = 512 << 10;

/// Starts a commit job (`block-commit`) on the chain of `device`.
pub async fn start(
    graph: &BlockGraph,
    jobs: &JobRegistry,
    device: Arc<Node>,
    args: BlockCommitArgs,
) -> BlockResult<()> {
    if args.top.is_some() && args.top_node.is_some() {
        return Err(generic("'top-node' and 'top' are mutually exclusive"));
    }
    if args.base.is_some() && args.base_node.is_some() {
        return Err(generic("'base-node' and 'base' are mutually exclusive"));
    }
    let chain = backing_chain(&device);
    let top = if let Some(name) = &args.top_node {
        let top = graph.lookup(None, Some(name))?;
        if !chain.iter().any(|n| Arc::ptr_eq(n, &top)) {
            return Err(generic(format!(
                "'{name}' is not in this backing file chain"
            )));
        }
        top
    } else if let Some(name) = &args.top {
        if display_filename(&device) == *name {
            device.clone()
        } else {
            find_by_filename(&chain, name)
                .ok_or_else(|| generic(format!("Top image file {name} not found")))?
        }
    } else {
        device.clone()
    };
    let below_top = backing_chain(&top);
    let base = if let Some(name) = &args.base_node {
        let base = graph.lookup(None, Some(name))?;
        if !below_top.iter().any(|n| Arc::ptr_eq(n, &base)) {
            return Err(generic(format!(
                "'{name}' is not in this backing file chain"
            )));
        }
        base
    } else if let Some(name) = &args.base {
        find_by_filename(&below_top, name)
            .ok_or_else(|| generic(format!("Can't find '{name}' in the backing chain")))?
    } else {
        below_top
            .iter()
            .rev()
            .find(|n| n.driver().filtered().is_none())
            .cloned()
            .ok_or_else(|| generic("There is no backimg image"))?
    };
    if Arc::ptr_eq(&top, &base) {
        return Err(generic("cannot commit an image into itself"));
    }
    let base_depth = chain_depth(&top, &base).unwrap_or(u32::MAX);
    let committed: Vec<Arc<Node>> = below_top
        .iter()
        .take_while(|n| !Arc::ptr_eq(n, &base))
        .cloned()
        .collect();
    let common = CommonOptions {
        job_id: args.job_id.clone(),
        speed: args.speed,
        auto_finalize: args.auto_finalize,
        auto_dismiss: args.auto_dismiss,
    };
    let on_error = args.on_error.unwrap_or_default();
    if Arc::ptr_eq(&top, &device) {
        if args.backing_file.is_some() {
            return Err(generic(
                "'backing-file' specified, but 'top' is the active layer",
            ));
        }
        check_root(graph, &top)?;
        for node in &committed {
            graph.check_not_blocked(node)?;
        }
        let setup = MirrorSetup {
            job_type: JobType::Commit,
            common,
            granularity: crate::bitmaps::default_granularity(&base),
            source: top,
            target: base,
            initial: InitialDirt::AboveDepth(base_depth),
            buf_size: mirror::DEFAULT_BUF_SIZE,
            on_source_error: on_error,
            on_target_error: on_error,
            copy_mode: MirrorCopyMode::Background,
            filter_node_name: args.filter_node_name,
            owns_target: false,
            replaces: None,
        };
        return mirror::start_with(graph, jobs, setup).await;
    }
    for node in committed.iter().chain([&base]) {
        graph.check_not_blocked(node)?;
    }
    let overlay = graph
        .nodes()
        .into_iter()
        .find(|n| {
            n.children()
                .iter()
                .any(|e| e.role() == ChildRole::Backing && e.points_to(&top))
        })
        .ok_or_else(|| generic(format!("Could not find the image above '{}'", top.name())))?;
    if let Some(name) = &args.filter_node_name {
        if graph.node(name).is_some() {
            return Err(generic(format!("Duplicate nodes with node-name='{name}'")));
        }
    }
    let commit = Arc::new(Commit {
        graph: graph.clone(),
        top,
        base,
        overlay,
        base_depth,
        backing_file: args.backing_file.clone(),
        on_error,
        buffers: CopyBuffers::default(),
        filter: Mutex::default(),
        base_backend: Mutex::default(),
        blocker: Mutex::default(),
        made_writable: MadeWritable::default(),
    });
    let created = create_block_job(jobs, JobType::Commit, &common, commit.clone())?;
    commit
        .attach(args.filter_node_name.as_deref(), &committed)
        .await?;
    created.start(move |context| async move { commit.run(context).await });
    Ok(())
}

/// QEMU's `commit_top`: a filter above the committed layers that passes
/// everything through.
struct CommitTop(Arc<NodeChild>);

impl BlockDriver for CommitTop {
    fn format_name(&self) -> &'static str {
        "commit_top"
    }

    fn filtered(&self) -> Option<&NodeChild> {
        Some(&self.0)
    }
}

/// A running commit of layers below the active one.
struct Commit {
    graph: BlockGraph,
    top: Arc<Node>,
    base: Arc<Node>,
    /// The image whose backing file `top` is: it takes the base instead.
    overlay: Arc<Node>,
    /// How deep the base is below `top` (1 is `top`).
    base_depth: u32,
    backing_file: Option<String>,
    on_error: BlockdevOnError,
    buffers: CopyBuffers,
    filter: Mutex<Option<Arc<Node>>>,
    base_backend: Mutex<Option<BlockBackend>>,
    blocker: Mutex<Option<NodeBlocker>>,
    /// The base and the image above the top, if they were read-only.
    made_writable: MadeWritable,
}

impl Commit {
    async fn attach(&self, filter_name: Option<&str>, committed: &[Arc<Node>]) -> BlockResult<()> {
        self.made_writable
            .around(
                &self.graph,
                &[&self.base, &self.overlay],
                "commit",
                self.attach_nodes(filter_name, committed),
            )
            .await
    }

    async fn attach_nodes(
        &self,
        filter_name: Option<&str>,
        committed: &[Arc<Node>],
    ) -> BlockResult<()> {
        let base_backend = self.graph.attach_backend_with(
            self.base.name(),
            BackendPerms {
                perm: Perm::WRITE | Perm::CONSISTENT_READ,
                shared: Perm::ALL,
            },
        )?;
        let filter = self
            .graph
            .insert_filter(filter_name, self.top.name(), |file| {
                Ok(Box::new(CommitTop(file)))
            })
            .await?;
        let mut held = committed.to_vec();
        held.push(filter.clone());
        let blocker = self.graph.block_nodes(&held, &busy_reason("commit"))?;
        blocker.freeze_chain(&filter, &self.base);
        blocker.freeze_links_into(&filter);
        *lock(&self.filter) = Some(filter);
        *lock(&self.base_backend) = Some(base_backend);
        *lock(&self.blocker) = Some(blocker);
        Ok(())
    }

    async fn run(self: Arc<Self>, context: JobContext) -> BlockResult<()> {
        let size = self.top.size();
        if self.base.size() < size {
            return Err(generic(
                "The base image is smaller than the top image (resizing it is not supported)",
            ));
        }
        context.set_remaining(size);
        let mut offset = 0;
        while offset < size {
            context.pause_point().await;
            if context.is_cancelled() {
                return Ok(());
            }
            let len = CHUNK.min(size - offset);
            match self.copy(offset, len).await {
                Ok((len, copied)) => {
                    offset += len;
                    context.advance(len);
                    if copied {
                        context.rate_limit(len).await;
                    }
                }
                Err((is_read, error)) => {
                    match context.error_action(self.on_error, is_read, &error).await {
                        ErrorAction::Report => return Err(error),
                        ErrorAction::Retry => {}
                        ErrorAction::Ignore => {
                            offset += len;
                            context.advance(len);
                        }
                    }
                }
            }
        }
        self.base.flush().await
    }

    /// Copies what the committed layers hold of the start of
    /// `offset..offset+len` into the base: how far it got, and whether it
    /// copied. On error, whether it was the read.
    async fn copy(
        &self,
        offset: u64,
        len: u64,
    ) -> Result<(u64, bool), (bool, crate::error::BlockError)> {
        let extent = self
            .top
            .block_status(offset, len)
            .await
            .map_err(|e| (true, e))?;
        let len = extent.length.clamp(1, len);
        if !(1..self.base_depth).contains(&extent.depth) {
            return Ok((len, false));
        }
        if extent.zero {
            self.base
                .write_zeroes(offset, len, ZeroFlags::default())
                .await
                .map_err(|e| (false, e))?;
        } else {
            let buf = self.buffers.take(len as usize).map_err(|e| (true, e))?;
            let copied = async {
                self.top.read(offset, &buf).await.map_err(|e| (true, e))?;
                self.base
                    .write(offset, &buf, WriteFlags::default())
                    .await
                    .map_err(|e| (false, e))
            }
            .await;
            self.buffers.give(buf);
            copied?;
        }
        Ok((len, true))
    }

    /// Takes the filter out and frees the nodes.
    async fn detach(&self) {
        lock(&self.blocker).take();
        lock(&self.base_backend).take();
        let filter = lock(&self.filter).take();
        super::remove_job_filter(&self.graph, filter, "commit").await;
    }
}

#[async_trait]
impl JobDriver for Commit {
    /// The image above `top` names the base in its header and uses it as
    /// its backing file; the committed layers close unless the monitor
    /// holds them.
    async fn prepare(&self) -> BlockResult<()> {
        self.detach().await;
        let name = self
            .backing_file
            .clone()
            .unwrap_or_else(|| display_filename(&self.base));
        self.overlay
            .change_backing_file(Some(&name), Some(self.base.driver().format_name()))
            .await?;
        self.graph
            .set_child(self.overlay.name(), ChildRole::Backing, self.base.name())
            .await
    }

    async fn abort(&self) {
        self.detach().await;
    }

    async fn clean(&self) {
        self.made_writable.restore(&self.graph, "commit").await;
    }
}
