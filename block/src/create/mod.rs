//! `blockdev-create`: writes a new image, as QEMU's drivers do it in
//! their `bdrv_co_create` (the job around it is [`crate::job`]'s).
//!
//! `file` creates or replaces a host file ([`file`]); `qcow2` formats an
//! existing node, which it takes, for the time of the creation, with
//! permission to write and resize while sharing everything, as QEMU's
//! temporary backend does. The image layout is the qcow2 driver's
//! ([`crate::qcow2::create`]).

mod file;

use schema::block::BlockdevRef;
use schema::create::{
    BlockdevCreateDriver, BlockdevCreateOptions, BlockdevCreateOptionsQcow2, CREATE_UNSUPPORTED,
};

use crate::error::{BlockError, BlockResult, ErrorKind};
use crate::graph::{BackendPerms, BlockGraph};
use crate::permissions::Perm;
use crate::qcow2;

/// Creates the image `options` describe; nodes are looked up in `graph`.
pub async fn create_image(graph: &BlockGraph, options: BlockdevCreateOptions) -> BlockResult<()> {
    match options.driver {
        BlockdevCreateDriver::File(file) => file::create(file).await,
        BlockdevCreateDriver::Qcow2(qcow2) => create_qcow2(graph, &qcow2).await,
        _ => Err(BlockError::new(ErrorKind::NotSupported, CREATE_UNSUPPORTED)),
    }
}

/// A new image file (QEMU's `bdrv_img_create`, for `blockdev-snapshot-sync`
/// and the `drive-*` jobs): `format` `qcow2` (naming `backing`, a file
/// name and its format, if given) or `raw`, of `size` bytes.
pub async fn create_image_file(
    graph: &BlockGraph,
    filename: &str,
    format: &str,
    size: u64,
    backing: Option<(&str, &str)>,
) -> BlockResult<()> {
    let options = |json: serde_json::Value| {
        schema::from_json::<BlockdevCreateOptions>(json).map_err(|error| {
            crate::error::BlockError::new(crate::error::ErrorKind::InvalidArgument, error.desc)
        })
    };
    let file_size = if format == "raw" { size } else { 0 };
    create_image(
        graph,
        options(serde_json::json!({"driver": "file", "filename": filename, "size": file_size}))?,
    )
    .await?;
    if format == "raw" {
        return Ok(());
    }
    let file: schema::block::BlockdevOptions = schema::from_json(
        serde_json::json!({"driver": "file", "filename": filename}),
    )
    .map_err(|error| {
        crate::error::BlockError::new(crate::error::ErrorKind::InvalidArgument, error.desc)
    })?;
    let file = graph.blockdev_add_unnamed(&file).await?;
    let mut qcow2 = serde_json::json!({"driver": "qcow2", "file": file.name(), "size": size});
    if let Some((name, backing_format)) = backing {
        qcow2["backing-file"] = serde_json::json!(name);
        qcow2["backing-fmt"] = serde_json::json!(backing_format);
    }
    let created = create_image(graph, options(qcow2)?).await;
    graph.blockdev_del(file.name()).await?;
    created
}

/// QEMU's `qcow2_co_create`: the node first, then the options, then the
/// permissions.
async fn create_qcow2(graph: &BlockGraph, options: &BlockdevCreateOptionsQcow2) -> BlockResult<()> {
    let node_name = match &options.file {
        BlockdevRef::Reference(name) => name,
        BlockdevRef::Definition(_) => {
            return Err(BlockError::new(
                ErrorKind::NotSupported,
                "blockdev-create takes the image file as the name of an existing node; \
                 add it first with blockdev-add",
            ))
        }
    };
    graph.lookup(Some(node_name), Some(node_name))?;
    let create_options = qcow2::CreateOptions::from_schema(options)?;
    let backend = graph.attach_backend_with(
        node_name,
        BackendPerms {
            perm: Perm::WRITE | Perm::RESIZE,
            shared: Perm::ALL,
        },
    )?;
    qcow2::create(backend.node().clone(), &create_options).await
}
