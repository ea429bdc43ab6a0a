//! One client and the protocol: greeting, negotiation, ids, replies, and
//! every input error, checked on the exact bytes.

mod common;

use common::{Setup, GREETING};
use qmp::json::{MAX_MESSAGE_BYTES, MAX_NESTING};
use qmp::MonitorOptions;

const NEGOTIATE_FIRST: &str = "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \
                               \"Expecting capabilities negotiation with 'qmp_capabilities'\"}}\r\n";

#[tokio::test]
async fn greeting_then_negotiation() {
    let setup = Setup::new().await;
    let mut raw = setup.raw().await;
    assert_eq!(raw.line().await, GREETING);
    assert_eq!(
        raw.exchange(br#"{"execute":"echo"}"#, 1).await,
        [NEGOTIATE_FIRST]
    );
    assert_eq!(
        raw.exchange(br#"{"execute":"query-commands","id":1}"#, 1)
            .await,
        [
            "{\"id\": 1, \"error\": {\"class\": \"CommandNotFound\", \"desc\": \
          \"Expecting capabilities negotiation with 'qmp_capabilities'\"}}\r\n"
        ]
    );
    assert_eq!(
        raw.exchange(br#"{"execute":"qmp_capabilities","id":"n"}"#, 1)
            .await,
        ["{\"return\": {}, \"id\": \"n\"}\r\n"]
    );
    assert_eq!(
        raw.exchange(br#"{"execute":"qmp_capabilities"}"#, 1).await,
        ["{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \
          \"Capabilities negotiation is already complete, command ignored\"}}\r\n"]
    );
    assert_eq!(
        raw.exchange(br#"{"execute":"echo","arguments":{"a":[1,"b"]}}"#, 1)
            .await,
        ["{\"return\": {\"a\": [1, \"b\"]}}\r\n"]
    );
}

#[tokio::test]
async fn capability_arguments() {
    let setup = Setup::new().await;
    let mut raw = setup.raw().await;
    raw.line().await;
    let cases: [(&[u8], &str); 4] = [
        (
            br#"{"execute":"qmp_capabilities","arguments":{"enable":"oob"}}"#,
            "Invalid parameter type for 'enable', expected: array",
        ),
        (
            br#"{"execute":"qmp_capabilities","arguments":{"enable":[1]}}"#,
            "Invalid parameter type for 'enable[0]', expected: string",
        ),
        (
            br#"{"execute":"qmp_capabilities","arguments":{"enable":["foo"]}}"#,
            "Parameter 'null' does not accept value 'foo'",
        ),
        (
            br#"{"execute":"qmp_capabilities","arguments":{"bar":1}}"#,
            "Parameter 'bar' is unexpected",
        ),
    ];
    for (input, desc) in cases {
        assert_eq!(
            raw.exchange(input, 1).await,
            [format!(
                "{{\"error\": {{\"class\": \"GenericError\", \"desc\": \"{desc}\"}}}}\r\n"
            )]
        );
    }
    assert_eq!(
        raw.exchange(
            br#"{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}"#,
            1
        )
        .await,
        ["{\"return\": {}}\r\n"]
    );
}

#[tokio::test]
async fn ids_of_every_type_are_echoed() {
    let setup = Setup::new().await;
    let mut raw = setup.negotiated_raw().await;
    for (id, echoed) in [
        ("1", "1"),
        ("\"x\"", "\"x\""),
        ("'single'", "\"single\""),
        ("null", "null"),
        ("[1, {\"a\": true}]", "[1, {\"a\": true}]"),
        ("0.1", "0.10000000000000001"),
        ("18446744073709551616", "1.8446744073709552e+19"),
        ("\"\\u00e9\"", "\"\\u00E9\""),
    ] {
        let ok = raw
            .exchange(
                format!("{{\"execute\":\"nothing\",\"id\":{id}}}").as_bytes(),
                1,
            )
            .await;
        assert_eq!(ok, [format!("{{\"return\": {{}}, \"id\": {echoed}}}\r\n")]);
        let failed = raw
            .exchange(
                format!("{{\"execute\":\"fail\",\"id\":{id}}}").as_bytes(),
                1,
            )
            .await;
        assert_eq!(
            failed,
            [format!(
                "{{\"id\": {echoed}, \"error\": {{\"class\": \"GenericError\", \"desc\": \"failed as asked\"}}}}\r\n"
            )]
        );
    }
    assert_eq!(
        raw.exchange(br#"{"execute":"nope","id":7}"#, 1).await,
        [
            "{\"id\": 7, \"error\": {\"class\": \"CommandNotFound\", \"desc\": \
          \"The command nope has not been found\"}}\r\n"
        ]
    );
}

#[tokio::test]
async fn query_commands_lists_exactly_what_runs() {
    let setup = Setup::new().await;
    let mut client = qmp::client::Client::connect(&setup.address())
        .await
        .unwrap();
    client.negotiate().await.unwrap();
    let listed = client
        .execute("query-commands", serde_json::json!({}))
        .await
        .unwrap()
        .unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "echo",
            "fail",
            "nothing",
            "emit",
            "sleep",
            "quit",
            "panic",
            "query-commands",
            "qmp_capabilities"
        ]
    );
    for name in names {
        if ["qmp_capabilities", "quit", "panic"].contains(&name) {
            continue;
        }
        let reply = client.execute(name, serde_json::json!({})).await.unwrap();
        assert!(
            !matches!(&reply, Err(e) if e.class == "CommandNotFound"),
            "{name}: {reply:?}"
        );
    }
}

fn generic(desc: &str, id: Option<&str>) -> String {
    match id {
        Some(id) => format!(
            "{{\"id\": {id}, \"error\": {{\"class\": \"GenericError\", \"desc\": \"{desc}\"}}}}\r\n"
        ),
        None => format!("{{\"error\": {{\"class\": \"GenericError\", \"desc\": \"{desc}\"}}}}\r\n"),
    }
}

#[tokio::test]
async fn request_errors_have_qemus_texts() {
    let setup = Setup::new().await;
    let mut raw = setup.negotiated_raw().await;
    let cases: [(&[u8], &str, Option<&str>); 8] = [
        (b"[1,2]", "QMP input must be a JSON object", None),
        (b"\"text\"", "QMP input must be a JSON object", None),
        (
            br#"{"id":5}"#,
            "QMP input lacks member 'execute'",
            Some("5"),
        ),
        (
            br#"{"execute":5,"id":1}"#,
            "QMP input member 'execute' must be a string",
            Some("1"),
        ),
        (
            br#"{"execute":"echo","arguments":[],"id":2}"#,
            "QMP input member 'arguments' must be an object",
            Some("2"),
        ),
        (
            br#"{"execute":"echo","foo":1,"id":3}"#,
            "QMP input member 'foo' is unexpected",
            Some("3"),
        ),
        (
            br#"{"exec-oob":"echo","id":4}"#,
            "QMP input member 'exec-oob' is unexpected",
            Some("4"),
        ),
        (
            br#"{"execute":"x" "id":1}"#,
            "JSON parse error, expected separator in dict",
            None,
        ),
    ];
    for (input, desc, id) in cases {
        assert_eq!(
            raw.exchange(input, 1).await,
            [generic(desc, id)],
            "{input:?}"
        );
    }
}

#[tokio::test]
async fn out_of_band_once_enabled() {
    let setup = Setup::new().await;
    let mut raw = setup.raw().await;
    raw.line().await;
    raw.exchange(
        br#"{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}"#,
        1,
    )
    .await;
    assert_eq!(
        raw.exchange(br#"{"exec-oob":"echo","id":1}"#, 1).await,
        [generic("The command echo does not support OOB", Some("1"))]
    );
    assert_eq!(
        raw.exchange(br#"{"exec-oob":"nope","id":2}"#, 1).await,
        [
            "{\"id\": 2, \"error\": {\"class\": \"CommandNotFound\", \"desc\": \
          \"The command nope has not been found\"}}\r\n"
        ]
    );
    assert_eq!(
        raw.exchange(br#"{"execute":"echo","exec-oob":"x","id":3}"#, 1)
            .await,
        [generic(
            "QMP input member 'execute' clashes with 'exec-oob'",
            Some("3")
        )]
    );
    // An out-of-band request is answered while an in-band one still runs.
    raw.send(br#"{"execute":"sleep","arguments":{"ms":500},"id":"slow"}"#)
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(
        raw.exchange(br#"{"exec-oob":"echo","id":"fast"}"#, 2).await,
        [
            generic("The command echo does not support OOB", Some("\"fast\"")),
            "{\"return\": {\"overlapped\": false}, \"id\": \"slow\"}\r\n".to_string()
        ]
    );
}

#[tokio::test]
async fn parse_errors_then_the_next_command_works() {
    let setup = Setup::new().await;
    let mut raw = setup.negotiated_raw().await;
    assert_eq!(
        raw.exchange(br#"{"execute": @}"#, 2).await,
        [
            generic("JSON parse error, stray '@'", None),
            generic("JSON parse error, expecting value", None)
        ]
    );
    assert_eq!(
        raw.exchange(b"\xff{\"execute\":\"nothing\",\"id\":1}", 2)
            .await,
        [
            generic("JSON parse error, stray '\\uFFFD'", None),
            "{\"return\": {}, \"id\": 1}\r\n".to_string()
        ]
    );
    assert_eq!(
        raw.exchange(br#"{"execute":"nothing"}}{"execute":"nothing","id":2}"#, 3)
            .await,
        [
            "{\"return\": {}}\r\n".to_string(),
            generic("JSON parse error, expecting value", None),
            "{\"return\": {}, \"id\": 2}\r\n".to_string()
        ]
    );
}

#[tokio::test]
async fn messages_split_and_merged_arbitrarily() {
    let setup = Setup::new().await;
    let mut raw = setup.negotiated_raw().await;
    let message = br#"{"execute": "echo", "arguments": {"s": "a}b]c"}, "id": 1}"#;
    for &byte in message.iter() {
        raw.send(&[byte]).await;
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    assert_eq!(
        raw.line().await,
        "{\"return\": {\"s\": \"a}b]c\"}, \"id\": 1}\r\n"
    );
    let merged = br#"{"execute":"nothing","id":1}{"execute":"nothing","id":2}
        {"execute":"nothing","id":3}"#;
    assert_eq!(
        raw.exchange(merged, 3).await,
        [
            "{\"return\": {}, \"id\": 1}\r\n",
            "{\"return\": {}, \"id\": 2}\r\n",
            "{\"return\": {}, \"id\": 3}\r\n"
        ]
    );
}

#[tokio::test]
async fn oversized_and_overnested_messages_are_refused_and_the_client_recovers() {
    let setup = Setup::new().await;
    let mut raw = setup.negotiated_raw().await;
    let big = format!(
        "{{\"execute\":\"echo\",\"arguments\":{{\"s\":\"{}\"}}}}",
        "x".repeat(MAX_MESSAGE_BYTES)
    );
    raw.send(big.as_bytes()).await;
    assert_eq!(
        raw.line().await,
        generic("JSON token size limit exceeded", None)
    );
    // The rest of the oversized string is skipped as garbage; the closing
    // braces each give QEMU's error. A control byte resynchronises.
    raw.send(b"\n{\"execute\":\"nothing\",\"id\":\"after\"}")
        .await;
    loop {
        let line = raw.line().await;
        if line.contains("\"after\"") {
            assert_eq!(line, "{\"return\": {}, \"id\": \"after\"}\r\n");
            break;
        }
        assert!(line.contains("JSON parse error"), "{line}");
    }
    let depth = MAX_NESTING as usize;
    let deepest_allowed = format!(
        "{{\"execute\":\"echo\",\"arguments\":{{\"a\":{}{}}}}}",
        "[".repeat(depth - 2),
        "]".repeat(depth - 2)
    );
    let reply = raw.exchange(deepest_allowed.as_bytes(), 1).await;
    assert!(
        reply[0].starts_with("{\"return\": {\"a\": [[["),
        "{}",
        &reply[0][..40]
    );
    let too_deep = format!(
        "{{\"execute\":\"echo\",\"arguments\":{{\"a\":{}{}}}}}",
        "[".repeat(depth - 1),
        "]".repeat(depth - 1)
    );
    raw.send(too_deep.as_bytes()).await;
    assert_eq!(
        raw.line().await,
        generic("JSON nesting depth limit exceeded", None)
    );
    let mut errors = 1;
    raw.send(b"{\"execute\":\"nothing\",\"id\":\"again\"}")
        .await;
    loop {
        let line = raw.line().await;
        if line.contains("\"again\"") {
            break;
        }
        errors += 1;
    }
    // QEMU's sequence: the limit error, then one per unmatched closing
    // bracket or brace (depth - 1 brackets, then 2 braces).
    assert_eq!(errors, 1 + depth - 1 + 2);
}

#[tokio::test]
async fn pretty_output_like_qemu() {
    let setup = Setup::with_options(MonitorOptions { pretty: true }).await;
    let mut raw = setup.raw().await;
    let greeting: Vec<String> = {
        let mut lines = Vec::new();
        for _ in 0..15 {
            lines.push(raw.line().await);
        }
        lines
    };
    assert_eq!(greeting.concat(), "{\r\n    \"QMP\": {\r\n        \"version\": {\r\n            \"qemu\": {\r\n                \"micro\": 0,\r\n                \"minor\": 0,\r\n                \"major\": 10\r\n            },\r\n            \"package\": \"storaged 0.1.0\"\r\n        },\r\n        \"capabilities\": [\r\n            \"oob\"\r\n        ]\r\n    }\r\n}\r\n");
    assert_eq!(
        raw.exchange(br#"{"execute":"qmp_capabilities"}"#, 4)
            .await
            .concat(),
        "{\r\n    \"return\": {\r\n    }\r\n}\r\n"
    );
}

#[tokio::test]
async fn a_command_that_panics_fails_alone() {
    let setup = Setup::new().await;
    let mut raw = setup.negotiated_raw().await;
    assert_eq!(
        raw.exchange(br#"{"execute":"panic","id":1}"#, 1).await,
        [generic("Command panic failed unexpectedly", Some("1"))]
    );
    assert_eq!(
        raw.exchange(br#"{"execute":"nothing","id":2}"#, 1).await,
        ["{\"return\": {}, \"id\": 2}\r\n"]
    );
}
