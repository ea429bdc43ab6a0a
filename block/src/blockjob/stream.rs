//! `block-stream`: copies into an image what it reads from its backing
//! chain, down to a base (or the whole chain), then makes the base its
//! backing file — in the graph and in the image's header — so the layers
//! in between can go. As QEMU 10 does it, the job puts a `copy-on-read`
//! filter above the image (copying zeroes too) and reads every range the
//! chain above the base holds through it: the filter's range locks keep a
//! copy from putting old data over a newer write by the image's users.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use schema::create::JobType;
use schema::job::{BlockStreamArgs, BlockdevOnError};

use super::buffers::CopyBuffers;
use super::{busy_reason, create_block_job, lock, CommonOptions};
use crate::copy_on_read::{chain_depth, CopyOnRead};
use crate::driver::ChildRole;
use crate::error::BlockResult;
use crate::filename::display_filename;
use crate::graph::{generic, BlockGraph, NodeBlocker};
use crate::job::{ErrorAction, JobContext, JobDriver, JobRegistry};
use crate::node::Node;

/// The unit of copying (QEMU's `STREAM_CHUNK`).
const CHUNK: u64 = 512 << 10;

/// Starts a stream job (`block-stream`).
pub async fn start(
    graph: &BlockGraph,
    jobs: &JobRegistry,
    args: BlockStreamArgs,
) -> BlockResult<()> {
    let exclusive = [
        (
            args.base.is_some() && args.base_node.is_some(),
            "'base' and 'base-node'",
        ),
        (
            args.base.is_some() && args.bottom.is_some(),
            "'base' and 'bottom'",
        ),
        (
            args.bottom.is_some() && args.base_node.is_some(),
            "'bottom' and 'base-node'",
        ),
    ];
    if let Some((_, which)) = exclusive.iter().find(|(both, _)| *both) {
        return Err(generic(format!(
            "{which} cannot be specified at the same time"
        )));
    }
    let top = graph.lookup(Some(&args.device), Some(&args.device))?;
    let chain = backing_chain(&top);
    let base = if let Some(name) = &args.base {
        Some(
            find_by_filename(&chain, name)
                .ok_or_else(|| generic(format!("Can't find '{name}' in the backing chain")))?,
        )
    } else if let Some(name) = &args.base_node {
        let base = graph.lookup(None, Some(name))?;
        in_chain(&chain, &base, &top)?;
        Some(base)
    } else if let Some(name) = &args.bottom {
        let bottom = graph.lookup(None, Some(name))?;
        in_chain(&chain, &bottom, &top)?;
        if bottom.driver().filtered().is_some() {
            return Err(generic(format!("Bottom node '{name}' is a filter")));
        }
        bottom.child(ChildRole::Backing)
    } else {
        None
    };
    if args.backing_file.is_some() && base.is_none() {
        return Err(generic(
            "backing file specified, but streaming the entire chain",
        ));
    }
    // The nodes whose data moves: the image down to the base.
    let streamed: Vec<Arc<Node>> = chain
        .iter()
        .take_while(|node| !base.as_ref().is_some_and(|b| Arc::ptr_eq(b, node)))
        .cloned()
        .collect();
    for node in &streamed {
        graph.check_not_blocked(node)?;
    }
    if let Some(name) = &args.filter_node_name {
        if graph.node(name).is_some() {
            return Err(generic(format!("Duplicate nodes with node-name='{name}'")));
        }
    }
    let stream = Arc::new(Stream {
        graph: graph.clone(),
        top: top.clone(),
        base: base.clone(),
        bottom: streamed.last().cloned(),
        backing_file: args.backing_file.clone(),
        on_error: args.on_error.unwrap_or_default(),
        buffers: CopyBuffers::default(),
        filter: Mutex::default(),
        blocker: Mutex::default(),
    });
    let common = CommonOptions {
        job_id: args.job_id.clone(),
        speed: args.speed,
        auto_finalize: args.auto_finalize,
        auto_dismiss: args.auto_dismiss,
    };
    let created = create_block_job(jobs, JobType::Stream, &common, stream.clone())?;
    stream
        .attach(args.filter_node_name.as_deref(), &streamed)
        .await?;
    created.start(move |context| async move { stream.run(context).await });
    Ok(())
}

/// `top` and the nodes below it through backing edges (and filters).
pub(crate) fn backing_chain(top: &Arc<Node>) -> Vec<Arc<Node>> {
    let mut chain = Vec::new();
    let mut current = Some(top.clone());
    while let Some(node) = current {
        current = match node.driver().filtered() {
            Some(child) => Some(child.node()),
            None => node.child(ChildRole::Backing),
        };
        chain.push(node);
    }
    chain
}

/// QEMU's `bdrv_find_backing_image`: a node below the top whose file name,
/// or the name its parent's header stores for it, is `name`.
pub(crate) fn find_by_filename(chain: &[Arc<Node>], name: &str) -> Option<Arc<Node>> {
    chain.windows(2).find_map(|pair| {
        let (parent, node) = (&pair[0], &pair[1]);
        let stored = parent.driver().backing_file_name().map(|b| b.name);
        (display_filename(node) == name || stored.as_deref() == Some(name)).then(|| node.clone())
    })
}

/// Refuses a node that is not below `top` in its chain.
fn in_chain(chain: &[Arc<Node>], node: &Arc<Node>, top: &Arc<Node>) -> BlockResult<()> {
    if chain.iter().skip(1).any(|n| Arc::ptr_eq(n, node)) {
        return Ok(());
    }
    Err(generic(format!(
        "Node '{}' is not a backing image of '{}'",
        node.name(),
        top.name()
    )))
}

/// A running stream.
struct Stream {
    graph: BlockGraph,
    top: Arc<Node>,
    /// The node that becomes the backing file (none: the whole chain).
    base: Option<Arc<Node>>,
    /// The lowest node whose data is copied.
    bottom: Option<Arc<Node>>,
    backing_file: Option<String>,
    on_error: BlockdevOnError,
    buffers: CopyBuffers,
    filter: Mutex<Option<Arc<Node>>>,
    blocker: Mutex<Option<NodeBlocker>>,
}

impl Stream {
    async fn attach(&self, filter_name: Option<&str>, streamed: &[Arc<Node>]) -> BlockResult<()> {
        let bottom = self.bottom.clone();
        let filter = self
            .graph
            .insert_filter(filter_name, self.top.name(), move |file| {
                Ok(Box::new(CopyOnRead::for_stream(file, bottom)))
            })
            .await?;
        let mut held = streamed.to_vec();
        held.push(filter.clone());
        let blocker = self.graph.block_nodes(&held, &busy_reason("stream"))?;
        if let Some(bottom) = &self.bottom {
            blocker.freeze_chain(&self.top, bottom);
        }
        blocker.freeze_links_into(&filter);
        *lock(&self.filter) = Some(filter);
        *lock(&self.blocker) = Some(blocker);
        Ok(())
    }

    async fn run(self: Arc<Self>, context: JobContext) -> BlockResult<()> {
        let Some(filter) = lock(&self.filter).clone() else {
            return Ok(());
        };
        let size = self.top.size();
        context.set_remaining(size);
        let bottom_depth = match &self.bottom {
            Some(bottom) => chain_depth(&self.top, bottom).unwrap_or(0),
            None => u32::MAX,
        };
        let mut offset = 0;
        while offset < size {
            context.pause_point().await;
            if context.is_cancelled() {
                return Ok(());
            }
            let len = CHUNK.min(size - offset);
            let result = async {
                let extent = self.top.block_status(offset, len).await?;
                let len = extent.length.clamp(1, len);
                let copies = (2..=bottom_depth).contains(&extent.depth);
                if copies {
                    // Reading through the filter copies the range up.
                    let buf = self.buffers.take(len as usize)?;
                    let read = filter.read(offset, &buf).await;
                    self.buffers.give(buf);
                    read?;
                }
                Ok((len, copies))
            }
            .await;
            match result {
                Ok((len, copied)) => {
                    offset += len;
                    context.advance(len);
                    if copied {
                        context.rate_limit(len).await;
                    }
                }
                Err(error) => match context.error_action(self.on_error, true, &error).await {
                    ErrorAction::Report => return Err(error),
                    ErrorAction::Retry => {}
                    ErrorAction::Ignore => {
                        offset += len;
                        context.advance(len);
                    }
                },
            }
        }
        Ok(())
    }

    /// The base becomes the image's backing file, named in its header as
    /// `backing-file` says or by the base's own file name.
    async fn change_backing(&self) -> BlockResult<()> {
        let name = self.base.as_ref().map(|base| {
            self.backing_file
                .clone()
                .unwrap_or_else(|| display_filename(base))
        });
        let format = self.base.as_ref().map(|base| base.driver().format_name());
        self.top
            .change_backing_file(name.as_deref(), format)
            .await?;
        if let Some(base) = &self.base {
            self.graph
                .set_child(self.top.name(), ChildRole::Backing, base.name())
                .await?;
        }
        Ok(())
    }

    /// Takes the filter out and frees the nodes.
    async fn detach(&self) {
        lock(&self.blocker).take();
        let filter = lock(&self.filter).take();
        super::remove_job_filter(&self.graph, filter, "stream").await;
    }
}

#[async_trait]
impl JobDriver for Stream {
    async fn prepare(&self) -> BlockResult<()> {
        self.detach().await;
        self.change_backing().await
    }

    async fn abort(&self) {
        self.detach().await;
    }
}
