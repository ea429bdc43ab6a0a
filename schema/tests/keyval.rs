//! The keyval syntax, from string to tree and from tree to schema types.
//! Cases follow QEMU's tests/unit/test-keyval.c and qemu-storage-daemon's
//! behaviour.

use schema::block::{BlockdevCacheOptions, BlockdevDriver, BlockdevOptions, BlockdevRef};
use schema::keyval;
use serde::Deserialize;
use serde_json::json;

fn tree(input: &str) -> serde_json::Value {
    keyval::parse(input, None).unwrap().into_tree()
}

fn tree_implied(input: &str, implied: &str) -> serde_json::Value {
    keyval::parse(input, Some(implied)).unwrap().into_tree()
}

fn parse_err(input: &str, implied: Option<&str>) -> String {
    keyval::parse(input, implied).unwrap_err().desc
}

fn blockdev(input: &str) -> BlockdevOptions {
    schema::parse_option(input, Some("driver")).unwrap()
}

fn blockdev_err(input: &str) -> String {
    schema::parse_option::<BlockdevOptions>(input, Some("driver"))
        .unwrap_err()
        .desc
}

#[test]
fn empty_input_is_an_empty_object() {
    assert_eq!(tree(""), json!({}));
}

#[test]
fn bad_keys() {
    assert_eq!(parse_err("=val", None), "Invalid parameter ''");
    assert_eq!(parse_err(".", None), "Invalid parameter '.'");
    assert_eq!(parse_err("key.=v", None), "Invalid parameter 'key.'");
    assert_eq!(parse_err("a..b=x", None), "Invalid parameter 'a..b'");
    assert_eq!(parse_err("7up=val", None), "Invalid parameter '7up'");
    assert_eq!(parse_err("key[0]=val", None), "Invalid parameter 'key[0]'");
    assert_eq!(parse_err("a:b=1", None), "Invalid parameter 'a:b'");
    assert_eq!(parse_err("0=1", None), "Invalid parameter '0'");
    assert_eq!(parse_err("x.0a=1", None), "Invalid parameter 'x.0a'");
    assert_eq!(parse_err(",", None), "Invalid parameter ''");
    assert_eq!(parse_err("abc", None), "Expected '=' after parameter 'abc'");
    assert_eq!(
        parse_err("a=1,abc", None),
        "Expected '=' after parameter 'abc'"
    );
}

#[test]
fn key_length_limits() {
    let long = format!("{}z", "a".repeat(127));
    assert_eq!(
        parse_err(&format!("{long}=v"), None),
        format!("Parameter '{long}' is too long")
    );
    assert_eq!(
        parse_err(&format!("k.{long}=v"), None),
        format!("Parameter fragment '{long}' is too long")
    );
    let fits = "a".repeat(127);
    assert_eq!(
        tree(&format!("k.{fits}=v")),
        json!({"k": {fits.clone(): "v"}})
    );
    let deep = vec!["a"; 65].join(".");
    assert!(parse_err(&format!("{deep}=1"), None).contains("nested too deeply"));
}

#[test]
fn last_duplicate_wins_and_commas_escape() {
    assert_eq!(tree("a=1,b=2,,x,a=3"), json!({"a": "3", "b": "2,x"}));
    assert_eq!(tree("id=foo,id=bar"), json!({"id": "bar"}));
    assert_eq!(tree("x=,,id=bar"), json!({"x": ",id=bar"}));
    assert_eq!(tree("x=a,,,,b"), json!({"x": "a,,b"}));
    assert_eq!(tree("x=a,,"), json!({"x": "a,"}));
    assert_eq!(tree("x=,"), json!({"x": ""}));
    assert_eq!(tree("x=y,"), json!({"x": "y"}));
    assert_eq!(tree("x=a=b"), json!({"x": "a=b"}));
}

#[test]
fn dotted_keys() {
    assert_eq!(
        tree("a.b.c=1,a.b.c=2,d=3"),
        json!({"a": {"b": {"c": "2"}}, "d": "3"})
    );
    assert_eq!(
        tree("a_b=1,__com.redhat_x=2"),
        json!({"a_b": "1", "__com.redhat_x": "2"})
    );
    assert_eq!(
        parse_err("a.b=1,a=2", None),
        "Parameters 'a.*' used inconsistently"
    );
    assert_eq!(
        parse_err("a=2,a.b=1", None),
        "Parameters 'a.*' used inconsistently"
    );
    assert_eq!(
        parse_err("a.b=1,a.b.c=2", None),
        "Parameters 'a.b.*' used inconsistently"
    );
}

#[test]
fn lists() {
    let expected = json!({"list": ["null", "eins", "zwei"]});
    assert_eq!(tree("list.0=null,list.2=zwei,list.1=eins"), expected);
    assert_eq!(
        tree("list.1=goner,list.0=null,list.01=eins,list.2=zwei"),
        expected
    );
    assert_eq!(
        tree("a.list.1=eins,a.list.00=null,a.list.2=zwei"),
        json!({"a": {"list": ["null", "eins", "zwei"]}})
    );
    assert_eq!(tree("a.0=,a.1=I,a.2.0=II"), json!({"a": ["", "I", ["II"]]}));
    assert_eq!(
        tree("b.0.x=1,b.1.x=2"),
        json!({"b": [{"x": "1"}, {"x": "2"}]})
    );
    assert_eq!(
        parse_err("a.b.c=1,a.b.0=2", None),
        "Parameters 'a.b.*' used inconsistently"
    );
    assert_eq!(
        parse_err("a.0.c=1,a.b.c=2", None),
        "Parameters 'a.*' used inconsistently"
    );
    assert_eq!(
        parse_err("list.1=lonely", None),
        "Parameter 'list.0' missing"
    );
    assert_eq!(parse_err("x.0=a,x.2=b", None), "Parameter 'x.1' missing");
    assert_eq!(
        parse_err("list.0=null,list.2=eins,list.02=zwei", None),
        "Parameter 'list.1' missing"
    );
}

#[test]
fn implied_key() {
    assert_eq!(
        tree_implied("an,aus=off,noaus=", "implied"),
        json!({"implied": "an", "aus": "off", "noaus": ""})
    );
    assert_eq!(
        tree_implied("val", "eins.zwei"),
        json!({"eins": {"zwei": "val"}})
    );
    assert_eq!(
        tree_implied("type=nbd,id=e", "type"),
        json!({"type": "nbd", "id": "e"})
    );
    assert_eq!(parse_err(",", Some("implied")), "Invalid parameter ''");
    assert_eq!(parse_err(",,,a=1", Some("implied")), "Invalid parameter ''");
    assert_eq!(
        parse_err("val,,ue", Some("implied")),
        "Invalid parameter ''"
    );
    assert_eq!(parse_err("=val", Some("implied")), "Invalid parameter ''");
    assert_eq!(
        parse_err("id=e,nbd", Some("type")),
        "Expected '=' after parameter 'nbd'"
    );
    assert_eq!(
        tree_implied("help.abc", "implied"),
        json!({"implied": "help.abc"})
    );
}

#[test]
fn help_is_refused() {
    assert_eq!(
        parse_err("help", None),
        "Help is not available for this option"
    );
    assert_eq!(
        parse_err("a=1,?", Some("x")),
        "Help is not available for this option"
    );
    assert_eq!(tree("help=on"), json!({"help": "on"}));
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Scalars {
    b: Option<bool>,
    i: Option<i64>,
    u: Option<u64>,
    u8: Option<u8>,
    i32: Option<i32>,
    sz: Option<schema::Size>,
    f: Option<f64>,
    s: Option<String>,
    list: Option<Vec<u32>>,
}

fn scalars(input: &str) -> Result<Scalars, String> {
    schema::parse_option(input, None).map_err(|e| e.desc)
}

#[test]
fn booleans() {
    for yes in ["on", "yes", "true", "y"] {
        assert_eq!(scalars(&format!("b={yes}")).unwrap().b, Some(true));
    }
    for no in ["off", "no", "false", "n"] {
        assert_eq!(scalars(&format!("b={no}")).unwrap().b, Some(false));
    }
    for bad in ["ON", "1", "0", "", "offer"] {
        assert_eq!(
            scalars(&format!("b={bad}")).unwrap_err(),
            "Parameter 'b' expects 'on' or 'off'"
        );
    }
}

#[test]
fn integers() {
    assert_eq!(scalars("i=-42").unwrap().i, Some(-42));
    assert_eq!(scalars("i=0x2a").unwrap().i, Some(42));
    assert_eq!(scalars("i=052").unwrap().i, Some(42));
    assert_eq!(scalars("u=18446744073709551615").unwrap().u, Some(u64::MAX));
    assert_eq!(scalars("u=-1").unwrap().u, Some(u64::MAX));
    assert_eq!(
        scalars("i=1G").unwrap_err(),
        "Parameter 'i' expects integer"
    );
    assert_eq!(
        scalars("i=3.14").unwrap_err(),
        "Parameter 'i' expects integer"
    );
    assert_eq!(
        scalars("u=08").unwrap_err(),
        "Parameter 'u' expects integer"
    );
    assert_eq!(
        scalars("u=18446744073709551616").unwrap_err(),
        "Parameter 'u' expects integer"
    );
    assert_eq!(scalars("u8=255").unwrap().u8, Some(255));
    assert_eq!(
        scalars("u8=256").unwrap_err(),
        "Parameter 'u8' expects uint8_t"
    );
    assert_eq!(scalars("i32=-2147483648").unwrap().i32, Some(i32::MIN));
    assert_eq!(
        scalars("i32=-2147483649").unwrap_err(),
        "Parameter 'i32' expects int32_t"
    );
    assert_eq!(
        scalars("list.0=1,list.1=0x10").unwrap().list,
        Some(vec![1, 16])
    );
    assert_eq!(
        scalars("list.0=1,list.1=x").unwrap_err(),
        "Parameter 'list.1' expects integer"
    );
}

#[test]
fn sizes_allow_suffixes_only_where_the_type_is_size() {
    assert_eq!(scalars("sz=8b").unwrap().sz.unwrap().bytes(), 8);
    assert_eq!(scalars("sz=1.5k").unwrap().sz.unwrap().bytes(), 1536);
    assert_eq!(scalars("sz=2M").unwrap().sz.unwrap().bytes(), 2 << 20);
    assert_eq!(
        scalars("sz=0.1G").unwrap().sz.unwrap().bytes(),
        (1 << 30) / 10
    );
    assert_eq!(
        scalars("sz=16777215T").unwrap().sz.unwrap().bytes(),
        16777215 << 40
    );
    assert_eq!(
        scalars("sz=9007199254740993").unwrap().sz.unwrap().bytes(),
        9007199254740993
    );
    assert_eq!(
        scalars("sz=18446744073709551615")
            .unwrap()
            .sz
            .unwrap()
            .bytes(),
        u64::MAX
    );
    for bad in [
        "-1",
        "18446744073709551616",
        "16777216T",
        "0Z",
        "16Gi",
        "1.5",
    ] {
        assert_eq!(
            scalars(&format!("sz={bad}")).unwrap_err(),
            "Parameter 'sz' expects size"
        );
    }
    assert_eq!(
        scalars("i=64M").unwrap_err(),
        "Parameter 'i' expects integer"
    );
}

#[test]
fn numbers_and_strings() {
    assert_eq!(scalars("f=3.5").unwrap().f, Some(3.5));
    assert_eq!(
        scalars("f=x").unwrap_err(),
        "Invalid parameter type for 'f', expected: number"
    );
    assert_eq!(scalars("s=1").unwrap().s.as_deref(), Some("1"));
    assert_eq!(
        scalars("s.x=1").unwrap_err(),
        "Parameters 's.*' are unexpected"
    );
    assert_eq!(scalars("zz=1").unwrap_err(), "Parameter 'zz' is unexpected");
}

#[test]
fn blockdev_with_inline_child() {
    let options = blockdev(
        "driver=raw,node-name=disk,file.driver=file,file.filename=/tmp/a,,b,cache.direct=on",
    );
    assert_eq!(options.node_name.as_deref(), Some("disk"));
    assert_eq!(
        options.cache,
        Some(BlockdevCacheOptions {
            direct: Some(true),
            no_flush: None
        })
    );
    let BlockdevDriver::Raw(raw) = options.driver else {
        panic!("not raw");
    };
    let BlockdevRef::Definition(file) = raw.file else {
        panic!("not inline");
    };
    let BlockdevDriver::File(file) = file.driver else {
        panic!("not file");
    };
    assert_eq!(file.filename, "/tmp/a,b");
}

#[test]
fn blockdev_child_by_reference_and_implied_driver() {
    let options = blockdev("raw,node-name=disk,file=proto,read-only=on,offset=512");
    assert_eq!(options.read_only, Some(true));
    let BlockdevDriver::Raw(raw) = options.driver else {
        panic!("not raw");
    };
    assert_eq!(raw.file, BlockdevRef::Reference("proto".into()));
    assert_eq!(raw.offset, Some(512));
}

#[test]
fn blockdev_errors_match_qemu() {
    let cases = [
        (
            "driver=null-co,node-name=n,size=1G",
            "Parameter 'size' expects integer",
        ),
        (
            "driver=null-co,node-name=n,read-only=1",
            "Parameter 'read-only' expects 'on' or 'off'",
        ),
        (
            "driver=xyz,node-name=n",
            "Parameter 'driver' does not accept value 'xyz'",
        ),
        ("node-name=n", "Parameter 'driver' is missing"),
        ("", "Parameter 'driver' is missing"),
        (
            "driver=null-co,node-name=n,foo=1",
            "Parameter 'foo' is unexpected",
        ),
        (
            "driver=null-co,cache.direct=on,cache.foo=1",
            "Parameter 'cache.foo' is unexpected",
        ),
        (
            "driver=null-co,cache=on",
            "Invalid parameter type for 'cache', expected: object",
        ),
        (
            "driver=raw,file.driver=file",
            "Parameter 'file.filename' is missing",
        ),
        (
            "driver=raw,file.driver=file,file.filename=/x,file.foo=1",
            "Parameter 'file.foo' is unexpected",
        ),
        (
            "driver=raw,file.driver=null-co,file.cache=5",
            "Invalid parameter type for 'file.cache', expected: object",
        ),
        (
            "driver=raw,file.driver=null-co,file.size=1x",
            "Parameter 'file.size' expects integer",
        ),
        (
            "driver=null-co,discard=foo",
            "Parameter 'discard' does not accept value 'foo'",
        ),
        (
            "driver=null-co,discard.x=foo",
            "Parameters 'discard.*' are unexpected",
        ),
        ("driver.x=foo", "Parameters 'driver.*' are unexpected"),
        (
            "driver=null-co,driver.x=foo",
            "Parameters 'driver.*' used inconsistently",
        ),
        ("driver=null-co,x.0=1", "Parameter 'x' is unexpected"),
        (
            "driver=file,filename.x=1",
            "Parameters 'filename.*' are unexpected",
        ),
        (
            "driver=file,filename=/x,aio=foo",
            "Parameter 'aio' does not accept value 'foo'",
        ),
        (
            "driver=null-co,,node-name=a",
            "Parameter 'driver' does not accept value 'null-co,node-name=a'",
        ),
        ("driver=raw", "Parameter 'file' is missing"),
    ];
    for (input, expected) in cases {
        assert_eq!(blockdev_err(input), expected, "input: {input}");
    }
}

#[test]
fn json_form_is_strict() {
    let options = blockdev(r#"{"driver": "null-co", "node-name": "n", "size": 4096}"#);
    let BlockdevDriver::NullCo(null) = options.driver else {
        panic!("not null-co");
    };
    assert_eq!(null.size, Some(4096));
    let cases = [
        (
            r#"{"driver":"null-co","size":"1G"}"#,
            "Invalid parameter type for 'size', expected: integer",
        ),
        (
            r#"{"driver":"null-co","size":1.0}"#,
            "Invalid parameter type for 'size', expected: integer",
        ),
        (
            r#"{"driver":"null-co","latency-ns":"1"}"#,
            "Parameter 'latency-ns' expects uint64",
        ),
        (
            r#"{"driver":"null-co","read-only":null}"#,
            "Invalid parameter type for 'read-only', expected: boolean",
        ),
        (
            r#"{"driver":"null-co","read-only":"on"}"#,
            "Invalid parameter type for 'read-only', expected: boolean",
        ),
        (
            r#"{"driver":"null-co","cache":{"direct":1}}"#,
            "Invalid parameter type for 'cache.direct', expected: boolean",
        ),
        (
            r#"{"driver":"raw","file":1}"#,
            "Invalid parameter type for 'file', expected: BlockdevRef",
        ),
        (
            r#"{"driver":"raw","file":null}"#,
            "Invalid parameter type for 'file', expected: BlockdevRef",
        ),
        (
            r#"{"driver":1}"#,
            "Invalid parameter type for 'driver', expected: string",
        ),
        (
            r#"{"driver":"null-co","x":[1]}"#,
            "Parameter 'x' is unexpected",
        ),
        (r#"{"driver":"#, "JSON parse error, premature EOI"),
        (
            r#"{"driver":"null-co"} x"#,
            "Expecting at most one JSON value",
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(blockdev_err(input), expected, "input: {input}");
    }
}

#[test]
fn json_list_elements_are_named_with_brackets() {
    #[derive(Debug, Deserialize)]
    struct Lists {
        #[allow(dead_code)]
        list: Vec<u32>,
    }
    let err = schema::from_json::<Lists>(json!({"list": [1, "x"]})).unwrap_err();
    // QEMU reads uint32 through uint64, hence the wording.
    assert_eq!(err.desc, "Parameter 'list[1]' expects uint64");
}

#[test]
fn first_unknown_key_in_input_order_is_reported() {
    assert_eq!(
        blockdev_err("driver=null-co,zz=1,aa=2"),
        "Parameter 'zz' is unexpected"
    );
}
