//! Query results serialize to exactly what QSD 10.0 prints (captured from
//! `query-named-block-nodes`, `x-debug-query-block-graph`,
//! `query-block-exports` and `query-version` on a running QSD).

use schema::block::BlockdevDetectZeroesOptions;
use schema::event::{Event, QmpEvent};
use schema::export::{BlockExportInfo, BlockExportType};
use schema::info::*;
use serde_json::json;

fn null_co_node() -> BlockDeviceInfo {
    BlockDeviceInfo {
        file: r#"json:{"driver": "null-co", "size": 4096}"#.into(),
        node_name: Some("n".into()),
        ro: false,
        drv: "null-co".into(),
        backing_file: None,
        backing_file_depth: 0,
        active: true,
        encrypted: false,
        detect_zeroes: BlockdevDetectZeroesOptions::Off,
        bps: 0,
        bps_rd: 0,
        bps_wr: 0,
        iops: 0,
        iops_rd: 0,
        iops_wr: 0,
        image: ImageInfo {
            filename: r#"json:{"driver": "null-co", "size": 4096}"#.into(),
            format: "null-co".into(),
            dirty_flag: None,
            actual_size: Some(0),
            virtual_size: 4096,
            cluster_size: None,
            encrypted: None,
            compressed: None,
            backing_filename: None,
            full_backing_filename: None,
            backing_filename_format: None,
            snapshots: None,
            format_specific: None,
            backing_image: None,
        },
        bps_max: None,
        bps_rd_max: None,
        bps_wr_max: None,
        iops_max: None,
        iops_rd_max: None,
        iops_wr_max: None,
        bps_max_length: None,
        bps_rd_max_length: None,
        bps_wr_max_length: None,
        iops_max_length: None,
        iops_rd_max_length: None,
        iops_wr_max_length: None,
        iops_size: None,
        group: None,
        cache: BlockdevCacheInfo {
            writeback: true,
            direct: false,
            no_flush: false,
        },
        write_threshold: 0,
        dirty_bitmaps: None,
    }
}

#[test]
fn named_block_node() {
    let qsd = json!({
        "iops_rd": 0, "detect_zeroes": "off", "active": true,
        "image": {"virtual-size": 4096, "filename": "json:{\"driver\": \"null-co\", \"size\": 4096}",
                  "format": "null-co", "actual-size": 0},
        "iops_wr": 0, "ro": false, "node-name": "n", "backing_file_depth": 0, "drv": "null-co",
        "iops": 0, "bps_wr": 0, "write_threshold": 0, "encrypted": false, "bps": 0, "bps_rd": 0,
        "cache": {"no-flush": false, "direct": false, "writeback": true},
        "file": "json:{\"driver\": \"null-co\", \"size\": 4096}"
    });
    assert_eq!(serde_json::to_value(null_co_node()).unwrap(), qsd);

    let mut file_node = null_co_node();
    file_node.image.dirty_flag = Some(false);
    file_node.image.format_specific =
        Some(ImageInfoSpecific::File(ImageInfoSpecificFile::default()));
    let image = serde_json::to_value(&file_node.image).unwrap();
    assert_eq!(
        image["format-specific"],
        json!({"type": "file", "data": {}})
    );
    assert_eq!(image["dirty-flag"], json!(false));
}

#[test]
fn block_graph() {
    let graph = XDbgBlockGraph {
        nodes: vec![XDbgBlockGraphNode {
            id: 1,
            r#type: XDbgBlockGraphNodeType::BlockBackend,
            name: String::new(),
        }],
        edges: vec![XDbgBlockGraphEdge {
            parent: 1,
            child: 2,
            name: "root".into(),
            perm: vec![BlockPermission::Write, BlockPermission::ConsistentRead],
            shared_perm: vec![
                BlockPermission::WriteUnchanged,
                BlockPermission::Write,
                BlockPermission::ConsistentRead,
            ],
        }],
    };
    assert_eq!(
        serde_json::to_value(graph).unwrap(),
        json!({
            "nodes": [{"name": "", "type": "block-backend", "id": 1}],
            "edges": [{"name": "root", "parent": 1, "child": 2,
                       "shared-perm": ["write-unchanged", "write", "consistent-read"],
                       "perm": ["write", "consistent-read"]}]
        })
    );
}

#[test]
fn exports_version_and_events() {
    let export = BlockExportInfo {
        id: "e".into(),
        r#type: BlockExportType::Nbd,
        node_name: "r".into(),
        shutting_down: false,
    };
    assert_eq!(
        serde_json::to_value(export).unwrap(),
        json!({"node-name": "r", "shutting-down": false, "type": "nbd", "id": "e"})
    );
    let version = VersionInfo {
        qemu: VersionTriple {
            major: 10,
            minor: 0,
            micro: 2,
        },
        package: "storaged".into(),
    };
    assert_eq!(
        serde_json::to_value(version).unwrap(),
        json!({"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "storaged"})
    );
    assert_eq!(
        serde_json::to_value(Event::from(QmpEvent::block_export_deleted("e"))).unwrap(),
        json!({"event": "BLOCK_EXPORT_DELETED", "data": {"id": "e"}})
    );
    assert_eq!(
        serde_json::to_value(Event::new("STOP", json!(null))).unwrap(),
        json!({"event": "STOP"})
    );
}
