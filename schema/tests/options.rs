//! Command-line options other than `--blockdev`: `--object`, `--export`,
//! `--nbd-server`, `--chardev`, `--monitor`, and their QMP forms. Expected
//! messages are qemu-storage-daemon 10.0's.

use schema::char::{
    ChardevOptions, MonitorMode, MonitorOptions, CHARDEV_IMPLIED_KEY, MONITOR_IMPLIED_KEY,
};
use schema::export::{
    BlockDirtyBitmap, BlockDirtyBitmapOrStr, BlockExportKind, BlockExportOptions, NbdServerOptions,
    NbdServerStartArgs, EXPORT_IMPLIED_KEY,
};
use schema::object::{
    ObjectKind, ObjectOptions, QAuthZListFormat, QAuthZListPolicy, ThrottleLimits,
    OBJECT_IMPLIED_KEY,
};
use schema::sockets::{SocketAddress, SocketAddressKind};
use serde_json::json;

fn option_err<T: serde::de::DeserializeOwned + std::fmt::Debug>(
    input: &str,
    implied: Option<&str>,
) -> String {
    schema::parse_option::<T>(input, implied).unwrap_err().desc
}

fn object(input: &str) -> ObjectOptions {
    schema::parse_option(input, Some(OBJECT_IMPLIED_KEY)).unwrap()
}

#[test]
fn objects() {
    let secret = object("secret,id=s,data=hunter2,format=raw");
    assert_eq!(secret.id, "s");
    let ObjectKind::Secret(props) = secret.kind else {
        panic!("not a secret")
    };
    assert_eq!(props.data.as_deref(), Some("hunter2"));

    let authz = object("authz-list,id=a,policy=deny,rules.0.match=CN=*,,O=x,rules.0.policy=allow,rules.0.format=glob");
    let ObjectKind::AuthzList(list) = authz.kind else {
        panic!("not authz-list")
    };
    let rules = list.rules.unwrap();
    assert_eq!(rules[0].r#match, "CN=*,O=x");
    assert_eq!(rules[0].policy, QAuthZListPolicy::Allow);
    assert_eq!(rules[0].format, Some(QAuthZListFormat::Glob));

    let throttle = object("throttle-group,id=t,limits.bps-total=1000,x-iops-total=5");
    let ObjectKind::ThrottleGroup(group) = throttle.kind else {
        panic!("not throttle-group")
    };
    let limits = group.effective_limits();
    assert_eq!((limits.bps_total, limits.iops_total), (Some(1000), Some(5)));
    // The members' names are their QAPI names, in the arrays' order.
    let numbered = ThrottleLimits::from_array(std::array::from_fn(|i| Some(i as i64)));
    let json = serde_json::to_value(&numbered).unwrap();
    for (i, name) in ThrottleLimits::NAMES.iter().enumerate() {
        assert_eq!(json[name], i as i64, "{name}");
    }
    assert_eq!(numbered.to_array(), std::array::from_fn(|i| Some(i as i64)));
    assert_eq!(
        group.flat_members()[ThrottleLimits::NAMES
            .iter()
            .position(|n| *n == "iops-total")
            .unwrap()],
        Some(5)
    );

    let cases = [
        ("secret,id=s,data=x,foo=1", "Parameter 'foo' is unexpected"),
        ("iothread", "Parameter 'id' is missing"),
        (
            "iothread,id=i,poll-max-ns=1G",
            "Parameter 'poll-max-ns' expects integer",
        ),
        (
            "throttle-group,id=t,x-iops-total=5x",
            "Parameter 'x-iops-total' expects integer",
        ),
        (
            "authz-list,id=a,rules.0.match=x,rules.0.policy=allow,rules.1.policy=deny",
            "Parameter 'rules.1.match' is missing",
        ),
        (
            "tls-creds-x509,id=t,endpoint=x",
            "Parameter 'endpoint' does not accept value 'x'",
        ),
        (
            "xyz,id=x",
            "Parameter 'qom-type' does not accept value 'xyz'",
        ),
        ("id=x", "Parameter 'qom-type' is missing"),
        (
            r#"{"qom-type":"authz-list","id":"a","rules":[{"match":"x","policy":"allow"},{"policy":1}]}"#,
            "Parameter 'rules[1].match' is missing",
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(
            option_err::<ObjectOptions>(input, Some(OBJECT_IMPLIED_KEY)),
            expected,
            "input: {input}"
        );
    }
}

#[test]
fn exports() {
    let export: BlockExportOptions = schema::parse_option(
        "nbd,id=e,node-name=disk,writable=on,bitmaps.0=b0,bitmaps.1.node=n,bitmaps.1.name=b1",
        Some(EXPORT_IMPLIED_KEY),
    )
    .unwrap();
    assert_eq!(
        (export.id.as_str(), export.node_name.as_str()),
        ("e", "disk")
    );
    assert_eq!(export.writable, Some(true));
    let BlockExportKind::Nbd(nbd) = export.kind else {
        panic!("not nbd")
    };
    assert_eq!(
        nbd.bitmaps.unwrap(),
        vec![
            BlockDirtyBitmapOrStr::Local("b0".into()),
            BlockDirtyBitmapOrStr::External(BlockDirtyBitmap {
                node: "n".into(),
                name: "b1".into()
            }),
        ]
    );

    let vhost: BlockExportOptions = schema::parse_option(
        "vhost-user-blk,id=v,node-name=disk,addr.type=unix,addr.path=/tmp/vhost.sock,logical-block-size=4k",
        Some(EXPORT_IMPLIED_KEY),
    )
    .unwrap();
    let BlockExportKind::VhostUserBlk(vhost) = vhost.kind else {
        panic!("not vhost-user-blk")
    };
    assert_eq!(vhost.logical_block_size.unwrap().bytes(), 4096);

    let cases = [
        (
            "nbd,id=e,node-name=x,bitmaps.0=b,bitmaps.1.node=n",
            "Parameter 'bitmaps.1.name' is missing",
        ),
        (
            r#"{"type":"nbd","id":"e","node-name":"x","bitmaps":[1]}"#,
            "Invalid parameter type for 'null', expected: BlockDirtyBitmapOrStr",
        ),
        (
            "vhost-user-blk,id=e,node-name=x,addr.type=unix,addr.path=/x,num-queues=70000",
            "Parameter 'num-queues' expects uint16_t",
        ),
        (
            "fuse,id=e,node-name=x,mountpoint=/x,allow-other=maybe",
            "Parameter 'allow-other' does not accept value 'maybe'",
        ),
        ("nbd=x,id=e", "Parameter 'type' is missing"),
        ("id=e,nbd", "Expected '=' after parameter 'nbd'"),
        ("nbd,id=e", "Parameter 'node-name' is missing"),
    ];
    for (input, expected) in cases {
        assert_eq!(
            option_err::<BlockExportOptions>(input, Some(EXPORT_IMPLIED_KEY)),
            expected,
            "input: {input}"
        );
    }
}

#[test]
fn nbd_server_flat_and_legacy_addresses() {
    let server: NbdServerOptions = schema::parse_option(
        "addr.type=inet,addr.host=127.0.0.1,addr.port=10809,max-connections=4",
        None,
    )
    .unwrap();
    let SocketAddressKind::Inet(inet) = server.addr.addr else {
        panic!("not inet")
    };
    assert_eq!(
        (inet.host.as_str(), inet.port.as_str()),
        ("127.0.0.1", "10809")
    );
    assert_eq!(server.max_connections, Some(4));

    let legacy: NbdServerStartArgs =
        schema::from_json(json!({"addr": {"type": "unix", "data": {"path": "/tmp/nbd.sock"}}}))
            .unwrap();
    let flat = NbdServerOptions::from(legacy);
    let SocketAddressKind::Unix(unix) = flat.addr.addr else {
        panic!("not unix")
    };
    assert_eq!(unix.path, "/tmp/nbd.sock");

    let flat_in_qmp =
        schema::from_json::<NbdServerStartArgs>(json!({"addr": {"type": "unix", "path": "/x"}}));
    assert_eq!(
        flat_in_qmp.unwrap_err().desc,
        "Parameter 'addr.data' is missing"
    );

    let cases = [
        ("addr.type=unix", "Parameter 'addr.path' is missing"),
        ("unix", "Expected '=' after parameter 'unix'"),
        (
            "addr.type=unix,addr.path=/x,max-connections=-1",
            "Parameter 'max-connections' expects uint32_t",
        ),
        (
            "addr.type=inet,addr.host=h,addr.port=0,addr.to=70000",
            "Parameter 'to' expects uint16_t",
        ),
        (
            "addr.type=tcp",
            "Parameter 'type' does not accept value 'tcp'",
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(
            option_err::<NbdServerOptions>(input, None),
            expected,
            "input: {input}"
        );
    }
}

#[test]
fn socket_address_in_json_is_strict() {
    let err = schema::from_json::<SocketAddress>(json!({"type": "inet", "host": "h", "port": 1}))
        .unwrap_err();
    assert_eq!(
        err.desc,
        "Invalid parameter type for 'port', expected: string"
    );
}

fn chardev(input: &str) -> schema::qemuopts::Parsed<ChardevOptions> {
    schema::qemuopts::parse(input, Some(CHARDEV_IMPLIED_KEY)).unwrap()
}

fn chardev_err(input: &str) -> String {
    schema::qemuopts::parse::<ChardevOptions>(input, Some(CHARDEV_IMPLIED_KEY))
        .unwrap_err()
        .desc
}

#[test]
fn chardev_options() {
    let parsed = chardev("socket,id=mon,path=/tmp/q,,m.sock,server=on,wait=off");
    assert!(parsed.warnings.is_empty());
    let options = parsed.options;
    assert_eq!(options.backend.as_deref(), Some("socket"));
    assert_eq!(options.id.as_deref(), Some("mon"));
    assert_eq!(options.path.as_deref(), Some("/tmp/q,m.sock"));
    assert_eq!((options.server, options.wait), (Some(true), Some(false)));

    let short = chardev("socket,id=c,path=/x,server,nowait,nodelay");
    assert_eq!(
        (
            short.options.server,
            short.options.wait,
            short.options.delay
        ),
        (Some(true), Some(false), Some(false))
    );
    assert_eq!(
        short.warnings,
        vec![
            "short-form boolean option 'server' deprecated\nPlease use server=on instead"
                .to_owned(),
            "short-form boolean option 'nowait' deprecated\nPlease use wait=off instead".to_owned(),
            "short-form boolean option 'nodelay' deprecated\nPlease use nodelay=on instead"
                .to_owned(),
        ]
    );

    assert_eq!(chardev("null,id=c,id=d").options.id.as_deref(), Some("c"));
    assert_eq!(
        chardev("null,,x,id=c").options.backend.as_deref(),
        Some("null,x")
    );
    assert_eq!(
        chardev("socket,host=h,port=1,to=0x10,size=1k").options.to,
        Some(16)
    );

    let cases = [
        ("socket,id=c,path=/x,foo=1", "Invalid parameter 'foo'"),
        ("socket,id=c,a.b=1", "Invalid parameter 'a.b'"),
        ("null,id=c,=x", "Invalid parameter ''"),
        (
            "socket,id=c,server=1",
            "Parameter 'server' expects 'on' or 'off'",
        ),
        (
            "socket,id=c,reconnect=x",
            "Parameter 'reconnect' expects a number",
        ),
        (
            "socket,id=c,reconnect=99999999999999999999",
            "Value '99999999999999999999' is too large for parameter 'reconnect'",
        ),
        (
            "ringbuf,id=c,size=1Q",
            "Parameter 'size' expects a non-negative number below 2^64",
        ),
        (
            "ringbuf,id=c,size=-1",
            "Value '-1' is out of range for parameter 'size'",
        ),
        ("null,id=1c", "Parameter 'id' expects an identifier"),
    ];
    for (input, expected) in cases {
        assert_eq!(chardev_err(input), expected, "input: {input}");
    }
}

#[test]
fn monitor_options() {
    let monitor: MonitorOptions =
        schema::parse_option("mon,mode=control,pretty=on", Some(MONITOR_IMPLIED_KEY)).unwrap();
    assert_eq!(monitor.chardev, "mon");
    assert_eq!(monitor.mode, Some(MonitorMode::Control));
    assert_eq!(monitor.pretty, Some(true));
    let cases = [
        ("chardev=m,foo=1", "Parameter 'foo' is unexpected"),
        (
            "chardev=m,pretty=1",
            "Parameter 'pretty' expects 'on' or 'off'",
        ),
        (
            "chardev=m,mode=xx",
            "Parameter 'mode' does not accept value 'xx'",
        ),
        ("pretty=on", "Parameter 'chardev' is missing"),
    ];
    for (input, expected) in cases {
        assert_eq!(
            option_err::<MonitorOptions>(input, Some(MONITOR_IMPLIED_KEY)),
            expected,
            "input: {input}"
        );
    }
}

#[test]
fn qcow2_blockdev_with_inline_file_and_null_backing() {
    let o: schema::block::BlockdevOptions = schema::parse_option(
        "driver=qcow2,node-name=q,file.driver=file,file.filename=a.qcow2,backing=,l2-cache-size=1048576",
        Some("driver"),
    )
    .expect("valid qcow2 options");
    let schema::block::BlockdevDriver::Qcow2(q) = o.driver else {
        panic!("not qcow2")
    };
    assert_eq!(q.backing, Some(schema::block::BlockdevRefOrNull::Null));
    assert!(matches!(q.file, schema::block::BlockdevRef::Definition(_)));
    assert_eq!(q.l2_cache_size, Some(1 << 20));
    // l2-cache-size is a QAPI int, not a size: QEMU refuses suffixes too.
    let err = schema::parse_option::<schema::block::BlockdevOptions>(
        "driver=qcow2,file=f,l2-cache-size=1M",
        Some("driver"),
    )
    .expect_err("suffix on an int member");
    assert_eq!(err.desc, "Parameter 'l2-cache-size' expects integer");
}

#[test]
fn blockdev_create_qcow2_from_json() {
    let args: schema::create::BlockdevCreateArgs = schema::from_json(serde_json::json!({
        "job-id": "j0",
        "options": {"driver": "qcow2", "file": "f", "size": 1048576, "cluster-size": 65536,
                    "version": "v3", "refcount-bits": 16}
    }))
    .expect("valid blockdev-create arguments");
    let schema::create::BlockdevCreateDriver::Qcow2(q) = args.options.driver else {
        panic!("not qcow2")
    };
    assert_eq!(q.size.0, 1 << 20);
    let err = schema::from_json::<schema::create::BlockdevCreateArgs>(serde_json::json!({
        "job-id": "j0", "options": {"driver": "file", "filename": "x", "size": 1, "bogus": 1}
    }))
    .expect_err("unknown member");
    assert_eq!(err.desc, "Parameter 'options.bogus' is unexpected");
}
