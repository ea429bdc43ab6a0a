//! qemu-nbd's command line: `storaged` run as `qemu-nbd` (a symlink) or as
//! `storaged nbd ...` serves one image the way qemu-nbd 10.0 does.
//!
//! The options are read as qemu-nbd reads them (`getopt_long`, values
//! checked as they come, with qemu-nbd's messages), then turned into the
//! steps the QSD command line would give — `--object`s, a `--blockdev`
//! for the image (and a `raw` node for `--offset`), `--nbd-server` and
//! `--export type=nbd` — so that the one-command mode runs the same code,
//! with the same speed, as the daemon. Without `--persistent` the daemon
//! exits once the last client that got through its handshake has left.
//!
//! `--snapshot` exports a temporary overlay ([`crate::temp_overlay`]).
//! `--list` asks a server for its exports ([`crate::nbd_list`]).
//! `--connect` and `--disconnect` drive the kernel's NBD client
//! ([`crate::nbd_device`]). SELinux labels are refused.

use std::ops::ControlFlow;
use std::path::PathBuf;

use serde_json::{json, Map, Value};

use crate::cli::{Invocation, Report, Step, StepKind};
use crate::getopt::{self, Item, Located, Options, Takes};
use crate::startup::LoadSnapshot;
use nbdwire::client::ServerAddress;

/// What the command line asks for.
#[derive(Debug)]
pub enum Action {
    Help,
    Version,
    Run(Invocation),
    /// `--list`: print a server's exports.
    List(ListRequest),
    /// `--disconnect DEVICE`: detach a kernel NBD device.
    Disconnect(String),
}

/// What `--list` asks: the server, and TLS (`--tls-creds` naming one of
/// `objects`, the client credentials; `--tls-hostname`).
#[derive(Debug)]
pub struct ListRequest {
    pub target: ServerAddress,
    pub objects: Vec<Located>,
    pub tls_creds: Option<String>,
    pub tls_hostname: Option<String>,
}

/// The longest export name or description (NBD's string limit).
const MAX_STRING: usize = 4096;
/// The node the image is opened as.
const IMAGE_NODE: &str = "qemu-nbd-image";
/// The temporary overlay over it with `--snapshot`.
const SNAPSHOT_NODE: &str = "qemu-nbd-snapshot";
/// The `raw` node over it with `--offset`.
const OFFSET_NODE: &str = "qemu-nbd-offset";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Meaning {
    Help,
    Version,
    Port,
    Bind,
    Socket,
    Offset,
    ReadOnly,
    AllocationDepth,
    Bitmap,
    Connect,
    Disconnect,
    ExportName,
    Description,
    List,
    Snapshot,
    LoadSnapshot,
    Nocache,
    Cache,
    Aio,
    Discard,
    DetectZeroes,
    Shared,
    Format,
    Persistent,
    Verbose,
    Object,
    TlsCreds,
    TlsHostname,
    TlsAuthz,
    ImageOpts,
    Trace,
    Fork,
    PidFile,
    SelinuxLabel,
    HandshakeLimit,
}

/// qemu-nbd 10.0's options (`getopt_long` with
/// `-hVb:o:p:rsnc:dvk:e:f:tl:x:T:D:AB:L`).
const OPTIONS: Options<Meaning> = Options {
    long: &[
        ("help", Takes::Nothing, Meaning::Help),
        ("version", Takes::Nothing, Meaning::Version),
        ("bind", Takes::Value, Meaning::Bind),
        ("port", Takes::Value, Meaning::Port),
        ("socket", Takes::Value, Meaning::Socket),
        ("offset", Takes::Value, Meaning::Offset),
        ("read-only", Takes::Nothing, Meaning::ReadOnly),
        ("allocation-depth", Takes::Nothing, Meaning::AllocationDepth),
        ("bitmap", Takes::Value, Meaning::Bitmap),
        ("connect", Takes::Value, Meaning::Connect),
        ("disconnect", Takes::Nothing, Meaning::Disconnect),
        ("list", Takes::Nothing, Meaning::List),
        ("snapshot", Takes::Nothing, Meaning::Snapshot),
        ("load-snapshot", Takes::Value, Meaning::LoadSnapshot),
        ("nocache", Takes::Nothing, Meaning::Nocache),
        ("cache", Takes::Value, Meaning::Cache),
        ("aio", Takes::Value, Meaning::Aio),
        ("discard", Takes::Value, Meaning::Discard),
        ("detect-zeroes", Takes::Value, Meaning::DetectZeroes),
        ("shared", Takes::Value, Meaning::Shared),
        ("format", Takes::Value, Meaning::Format),
        ("persistent", Takes::Nothing, Meaning::Persistent),
        ("verbose", Takes::Nothing, Meaning::Verbose),
        ("object", Takes::Value, Meaning::Object),
        ("export-name", Takes::Value, Meaning::ExportName),
        ("description", Takes::Value, Meaning::Description),
        ("tls-creds", Takes::Value, Meaning::TlsCreds),
        ("tls-hostname", Takes::Value, Meaning::TlsHostname),
        ("tls-authz", Takes::Value, Meaning::TlsAuthz),
        ("image-opts", Takes::Nothing, Meaning::ImageOpts),
        ("trace", Takes::Value, Meaning::Trace),
        ("fork", Takes::Nothing, Meaning::Fork),
        ("pid-file", Takes::Value, Meaning::PidFile),
        ("selinux-label", Takes::Value, Meaning::SelinuxLabel),
        ("handshake-limit", Takes::Value, Meaning::HandshakeLimit),
    ],
    short: &[
        ('h', Takes::Nothing, Meaning::Help),
        ('V', Takes::Nothing, Meaning::Version),
        ('b', Takes::Value, Meaning::Bind),
        ('o', Takes::Value, Meaning::Offset),
        ('p', Takes::Value, Meaning::Port),
        ('r', Takes::Nothing, Meaning::ReadOnly),
        ('s', Takes::Nothing, Meaning::Snapshot),
        ('n', Takes::Nothing, Meaning::Nocache),
        ('c', Takes::Value, Meaning::Connect),
        ('d', Takes::Nothing, Meaning::Disconnect),
        ('v', Takes::Nothing, Meaning::Verbose),
        ('k', Takes::Value, Meaning::Socket),
        ('e', Takes::Value, Meaning::Shared),
        ('f', Takes::Value, Meaning::Format),
        ('t', Takes::Nothing, Meaning::Persistent),
        ('l', Takes::Value, Meaning::LoadSnapshot),
        ('x', Takes::Value, Meaning::ExportName),
        ('T', Takes::Value, Meaning::Trace),
        ('D', Takes::Value, Meaning::Description),
        ('A', Takes::Nothing, Meaning::AllocationDepth),
        ('B', Takes::Value, Meaning::Bitmap),
        ('L', Takes::Nothing, Meaning::List),
    ],
};

/// The host cache settings of `--cache`/`--nocache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cache {
    direct: bool,
    no_flush: bool,
    writethrough: bool,
}

/// Everything the options said.
#[derive(Debug, Default)]
struct Settings {
    port: Option<String>,
    bind: Option<String>,
    socket: Option<String>,
    offset: u64,
    read_only: bool,
    allocation_depth: bool,
    bitmaps: Vec<String>,
    connect: Option<String>,
    disconnect: bool,
    export_name: Option<String>,
    description: Option<String>,
    list: bool,
    snapshot: bool,
    load_snapshot: Option<LoadSnapshot>,
    cache: Option<Cache>,
    aio: Option<String>,
    discard_unmap: Option<bool>,
    detect_zeroes: Option<String>,
    shared: Option<u32>,
    format: Option<String>,
    persistent: bool,
    objects: Vec<Located>,
    tls_creds: Option<String>,
    tls_authz: Option<String>,
    tls_hostname: Option<String>,
    image_opts: bool,
    traces: Vec<Located>,
    fork: bool,
    /// `--verbose`: with `--connect`, stay in the foreground.
    verbose: bool,
    pid_file: Option<PathBuf>,
    selinux_label: Option<String>,
    handshake_limit: Option<u32>,
    operands: Vec<String>,
}

/// Reads qemu-nbd's command line (without the program name; `program` is
/// the name messages start with, `argv0` the name as called, which the
/// "Try ... --help" hint quotes). An error is the text after `PROGRAM: `,
/// possibly of several lines.
pub fn parse(args: &[String], program: &str, argv0: &str) -> Result<Action, String> {
    let mut settings = Settings::default();
    let mut action = None;
    let mut failed = None;
    getopt::read(args, &OPTIONS, |item| {
        match settings.take(item) {
            Ok(Some(done)) => action = Some(done),
            Ok(None) => return ControlFlow::Continue(()),
            Err(message) => failed = Some(message),
        }
        ControlFlow::Break(())
    })
    .map_err(|e| format!("{e}\n{program}: Try `{argv0} --help' for more information."))?;
    if let Some(message) = failed {
        return Err(message);
    }
    if let Some(action) = action {
        return Ok(action);
    }
    if settings.list {
        return settings.list_request().map(Action::List);
    }
    if settings.disconnect {
        let [device] = settings.operands.as_slice() else {
            return Err(format!(
                "Invalid number of arguments\nTry `{argv0} --help' for more information."
            ));
        };
        return Ok(Action::Disconnect(device.clone()));
    }
    settings.into_invocation(argv0).map(Action::Run)
}

impl Settings {
    /// One option, checked as qemu-nbd checks it when it reads it.
    fn take(&mut self, item: Item<Meaning>) -> Result<Option<Action>, String> {
        let (meaning, value) = match item {
            Item::Flag(Meaning::Help) => return Ok(Some(Action::Help)),
            Item::Flag(Meaning::Version) => return Ok(Some(Action::Version)),
            Item::Operand(arg) => {
                self.operands.push(arg);
                return Ok(None);
            }
            Item::EndOfOptions => return Ok(None),
            Item::Flag(meaning) => (meaning, None),
            Item::Valued(meaning, value) => (meaning, Some(value)),
        };
        let text = value.as_ref().map_or("", |v| v.value.as_str()).to_string();
        match meaning {
            Meaning::Port => self.port = Some(text),
            Meaning::Bind => self.bind = Some(text),
            Meaning::Socket => self.socket = Some(text),
            Meaning::Offset => {
                self.offset = text
                    .parse()
                    .map_err(|_| format!("Invalid offset '{text}'"))?;
            }
            Meaning::ReadOnly => self.read_only = true,
            Meaning::AllocationDepth => self.allocation_depth = true,
            Meaning::Bitmap => self.bitmaps.push(text),
            Meaning::Connect => self.connect = Some(text),
            Meaning::Disconnect => self.disconnect = true,
            Meaning::ExportName => {
                if text.len() > MAX_STRING {
                    return Err(format!("export name '{text}' too long"));
                }
                self.export_name = Some(text);
            }
            Meaning::Description => {
                if text.len() > MAX_STRING {
                    return Err(format!("export description '{text}' too long"));
                }
                self.description = Some(text);
            }
            Meaning::List => self.list = true,
            Meaning::Snapshot => self.snapshot = true,
            // As in qemu-nbd, a loaded snapshot is exported read-only.
            Meaning::LoadSnapshot => {
                self.load_snapshot = Some(load_snapshot(&text)?);
                self.read_only = true;
            }
            Meaning::Nocache => self.cache = Some(cache_mode("none").expect("a known mode")),
            Meaning::Cache => {
                self.cache =
                    Some(cache_mode(&text).ok_or_else(|| format!("Invalid cache mode `{text}'"))?);
            }
            Meaning::Aio => {
                if !matches!(text.as_str(), "native" | "io_uring" | "threads") {
                    return Err(format!("Invalid aio mode '{text}'"));
                }
                self.aio = Some(text);
            }
            Meaning::Discard => {
                self.discard_unmap = Some(match text.as_str() {
                    "ignore" | "off" => false,
                    "unmap" | "on" => true,
                    _ => return Err(format!("Invalid discard mode `{text}'")),
                });
            }
            Meaning::DetectZeroes => {
                if !matches!(text.as_str(), "off" | "on" | "unmap") {
                    return Err(format!(
                        "Failed to parse detect_zeroes mode: invalid parameter value: {text}"
                    ));
                }
                if text == "unmap" && self.discard_unmap != Some(true) {
                    return Err(
                        "setting detect-zeroes to unmap is not allowed without setting \
                                discard operation to unmap"
                            .to_string(),
                    );
                }
                self.detect_zeroes = Some(text);
            }
            Meaning::Shared => {
                let shared = text
                    .parse::<i64>()
                    .ok()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| format!("Invalid shared device number '{text}'"))?;
                self.shared = Some(shared);
            }
            Meaning::Format => self.format = Some(text),
            Meaning::Persistent => self.persistent = true,
            Meaning::Verbose => self.verbose = true,
            Meaning::Object => self.objects.extend(value),
            Meaning::TlsCreds => self.tls_creds = Some(text),
            Meaning::TlsHostname => self.tls_hostname = Some(text),
            Meaning::TlsAuthz => self.tls_authz = Some(text),
            Meaning::ImageOpts => self.image_opts = true,
            Meaning::Trace => self.traces.extend(value),
            Meaning::Fork => self.fork = true,
            Meaning::PidFile => self.pid_file = Some(PathBuf::from(text)),
            Meaning::SelinuxLabel => self.selinux_label = Some(text),
            Meaning::HandshakeLimit => {
                self.handshake_limit = Some(
                    text.parse()
                        .map_err(|_| format!("Invalid handshake limit '{text}'"))?,
                );
            }
            Meaning::Help | Meaning::Version => unreachable!("handled above"),
        }
        Ok(None)
    }

    /// `--list`: what it asks, refusing what makes no sense with it.
    fn list_request(self) -> Result<ListRequest, String> {
        let target = self.list_target()?;
        match (&self.tls_creds, &self.tls_authz, &self.tls_hostname) {
            (Some(_), Some(_), _) => return Err("--tls-authz is not supported with --list".into()),
            (None, Some(_), _) => {
                return Err("--tls-authz is not permitted without --tls-creds".into())
            }
            (None, _, Some(_)) => {
                return Err("--tls-hostname is not permitted without --tls-creds".into())
            }
            _ => {}
        }
        Ok(ListRequest {
            target,
            objects: self.objects,
            tls_creds: self.tls_creds,
            tls_hostname: self.tls_hostname,
        })
    }

    fn list_target(&self) -> Result<ServerAddress, String> {
        if !self.operands.is_empty() {
            return Err("List mode is incompatible with a file name".into());
        }
        let per_device = self.export_name.is_some()
            || self.description.is_some()
            || self.offset > 0
            || self.connect.is_some()
            || self.disconnect
            || self.format.is_some()
            || self.load_snapshot.is_some()
            || !self.bitmaps.is_empty()
            || self.allocation_depth
            || self.aio.is_some()
            || self.discard_unmap.is_some()
            || self.cache.is_some();
        if per_device {
            return Err("List mode is incompatible with per-device settings".into());
        }
        if self.fork {
            return Err("List mode is incompatible with forking".into());
        }
        Ok(match &self.socket {
            Some(path) => ServerAddress::Unix(path.clone()),
            None => ServerAddress::Tcp {
                host: self.bind.clone().unwrap_or_else(|| "0.0.0.0".into()),
                port: self.port.clone().unwrap_or_else(|| "10809".into()),
            },
        })
    }

    /// The checks qemu-nbd makes once every option is read, then the
    /// daemon's steps.
    fn into_invocation(self, argv0: &str) -> Result<Invocation, String> {
        let [file] = self.operands.as_slice() else {
            return Err(format!(
                "Invalid number of arguments\nTry `{argv0} --help' for more information."
            ));
        };
        if self.selinux_label.is_some() {
            if self.socket.is_none() {
                return Err("--selinux-label is not permitted without --socket".into());
            }
            return Err("SELinux support not enabled in this binary".into());
        }
        let mut steps: Vec<Step> = self
            .objects
            .iter()
            .map(|object| Step {
                kind: StepKind::Object,
                arg: object.clone(),
                report: Report::Prefixed(String::new()),
            })
            .collect();
        let (image, node) = self.image(file)?;
        steps.push(step_text(
            StepKind::Blockdev,
            image,
            format!("Failed to blk_new_open '{file}': "),
        ));
        if let Some(load) = &self.load_snapshot {
            let mut load = serde_json::to_value(load).map_err(|e| e.to_string())?;
            load["node"] = json!(node);
            steps.push(step(
                StepKind::LoadSnapshot,
                load,
                "Failed to load snapshot: ".to_owned(),
            ));
        }
        let mut exported = node;
        if self.snapshot {
            let overlay = json!({"base": exported, "node-name": SNAPSHOT_NODE});
            steps.push(step(
                StepKind::TempOverlay,
                overlay,
                format!("Failed to blk_new_open '{file}': "),
            ));
            exported = SNAPSHOT_NODE.to_string();
        }
        if self.offset > 0 {
            let raw = json!({"driver": "raw", "node-name": OFFSET_NODE, "file": exported,
                             "offset": self.offset});
            steps.push(step(StepKind::Blockdev, raw, String::new()));
            exported = OFFSET_NODE.to_string();
        }
        let mut this = self;
        if let (Some(device), None) = (&this.connect, &this.socket) {
            this.socket = Some(device_socket(device));
        }
        steps.push(step(StepKind::NbdServer, this.server(), String::new()));
        steps.push(step(
            StepKind::Export,
            this.export(&exported),
            String::new(),
        ));
        if let (Some(device), Some(socket)) = (&this.connect, &this.socket) {
            let attach = crate::nbd_device::Attach {
                device: device.clone(),
                socket: socket.clone(),
                export: this.export_name.clone().unwrap_or_default(),
                verbose: this.verbose,
            };
            let attach = serde_json::to_value(attach).map_err(|e| e.to_string())?;
            steps.push(step(StepKind::KernelDevice, attach, String::new()));
        }
        Ok(Invocation {
            steps,
            traces: this.traces,
            pidfile: this.pid_file,
            // As qemu-nbd: attaching a device goes to the background
            // unless `--verbose` keeps it in front.
            daemonize: this.fork || (this.connect.is_some() && !this.verbose),
            quit_when_idle: !this.persistent,
        })
    }

    /// The image's blockdev options (keyval or JSON text) and its node
    /// name.
    fn image(&self, file: &str) -> Result<(String, String), String> {
        let mut generic = Map::new();
        self.node_options(&mut generic);
        if self.image_opts {
            if self.format.is_some() {
                return Err("--image-opts and -f are mutually exclusive".into());
            }
            // FILE is keyval text: the generic options are appended to it.
            let named = file
                .split(',')
                .find_map(|item| item.strip_prefix("node-name="));
            let node = named.unwrap_or(IMAGE_NODE).to_string();
            let mut text = file.to_string();
            if named.is_none() {
                text.push_str(&format!(",node-name={IMAGE_NODE}"));
            }
            for (key, value) in keyval_items("", &Value::Object(generic)) {
                text.push_str(&format!(",{key}={value}"));
            }
            return Ok((text, node));
        }
        let format = match &self.format {
            Some(format) => format.clone(),
            None => probe(file, !self.read_only),
        };
        if !schema::block::BlockdevDriver::NAMES.contains(&format.as_str()) {
            return Err(format!(
                "Failed to blk_new_open '{file}': Unknown driver '{format}'"
            ));
        }
        let mut protocol = Map::new();
        protocol.insert("driver".into(), "file".into());
        protocol.insert("filename".into(), file.into());
        if let Some(aio) = &self.aio {
            protocol.insert("aio".into(), aio.as_str().into());
        }
        let mut options = generic;
        options.insert("driver".into(), format.into());
        options.insert("node-name".into(), IMAGE_NODE.into());
        options.insert("file".into(), Value::Object(protocol));
        Ok((Value::Object(options).to_string(), IMAGE_NODE.to_string()))
    }

    /// The generic node options of the image: read-only, cache, discard,
    /// detect-zeroes.
    fn node_options(&self, options: &mut Map<String, Value>) {
        // With --snapshot the image is only read: writes go to the overlay.
        if self.read_only || self.snapshot {
            options.insert("read-only".into(), true.into());
        }
        if let Some(cache) = self.cache {
            options.insert(
                "cache".into(),
                json!({"direct": cache.direct, "no-flush": cache.no_flush}),
            );
        }
        if self.discard_unmap == Some(true) {
            options.insert("discard".into(), "unmap".into());
        }
        if let Some(mode) = &self.detect_zeroes {
            options.insert("detect-zeroes".into(), mode.as_str().into());
        }
    }

    /// `--nbd-server`: the Unix socket, or TCP on `--bind`:`--port`.
    fn server(&self) -> Value {
        let addr = match &self.socket {
            Some(path) => json!({"type": "unix", "path": path}),
            None => json!({
                "type": "inet",
                "host": self.bind.as_deref().unwrap_or("0.0.0.0"),
                "port": self.port.as_deref().unwrap_or("10809"),
            }),
        };
        let mut server = json!({
            "addr": addr,
            "max-connections": self.shared.unwrap_or(1),
            "handshake-max-seconds": self.handshake_limit.unwrap_or(10),
        });
        if let Some(creds) = &self.tls_creds {
            server["tls-creds"] = creds.as_str().into();
        }
        if let Some(authz) = &self.tls_authz {
            server["tls-authz"] = authz.as_str().into();
        }
        server
    }

    /// `--export type=nbd` of `node`.
    fn export(&self, node: &str) -> Value {
        let mut export = json!({
            "type": "nbd",
            "id": "qemu-nbd-export",
            "node-name": node,
            "name": self.export_name.as_deref().unwrap_or(""),
            "writable": !self.read_only,
            "allocation-depth": self.allocation_depth,
        });
        if self.cache.is_some_and(|c| c.writethrough) {
            export["writethrough"] = true.into();
        }
        if let Some(description) = &self.description {
            export["description"] = description.as_str().into();
        }
        if !self.bitmaps.is_empty() {
            export["bitmaps"] = json!(self.bitmaps);
        }
        export
    }
}

fn step(kind: StepKind, value: Value, prefix: String) -> Step {
    step_text(kind, value.to_string(), prefix)
}

/// The Unix socket the daemon serves `--connect DEVICE` on when no
/// `--socket` is given: private to this process (qemu-nbd uses
/// `/var/lock/qemu-nbd-DEVICE`).
fn device_socket(device: &str) -> String {
    let name = std::path::Path::new(device)
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "nbd".into());
    std::env::temp_dir()
        .join(format!("storaged-{name}-{}.sock", std::process::id()))
        .display()
        .to_string()
}

/// `--load-snapshot`'s value: `snapshot.id=ID,snapshot.name=NAME` (either
/// or both), or an id or name alone.
fn load_snapshot(text: &str) -> Result<LoadSnapshot, String> {
    let mut load = LoadSnapshot {
        node: String::new(),
        id: None,
        name: None,
        id_or_name: None,
    };
    if !text.starts_with("snapshot.") {
        load.id_or_name = Some(text.to_owned());
        return Ok(load);
    }
    for item in text.split(',') {
        match item.split_once('=') {
            Some(("snapshot.id", id)) => load.id = Some(id.to_owned()),
            Some(("snapshot.name", name)) => load.name = Some(name.to_owned()),
            _ => return Err(format!("Failed in parsing snapshot param `{text}'")),
        }
    }
    Ok(load)
}

/// A step whose option is `value` (keyval or JSON text).
fn step_text(kind: StepKind, value: String, prefix: String) -> Step {
    Step {
        kind,
        arg: Located::new(&value, &value),
        report: Report::Prefixed(prefix),
    }
}

/// `value` as keyval items (`cache.direct`, `on`/`off` for booleans).
fn keyval_items(prefix: &str, value: &Value) -> Vec<(String, String)> {
    match value {
        Value::Object(map) => map
            .iter()
            .flat_map(|(key, value)| {
                let key = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                keyval_items(&key, value)
            })
            .collect(),
        Value::Bool(on) => vec![(prefix.to_string(), if *on { "on" } else { "off" }.into())],
        Value::String(text) => vec![(prefix.to_string(), text.replace(',', ",,"))],
        other => vec![(prefix.to_string(), other.to_string())],
    }
}

/// qemu-nbd's `--cache` modes.
fn cache_mode(mode: &str) -> Option<Cache> {
    let (direct, no_flush, writethrough) = match mode {
        "none" | "off" => (true, false, false),
        "writeback" => (false, false, false),
        "writethrough" => (false, false, true),
        "directsync" => (true, false, true),
        "unsafe" => (false, true, false),
        _ => return None,
    };
    Some(Cache {
        direct,
        no_flush,
        writethrough,
    })
}

/// The image's format from its first bytes: qcow2, else raw (with
/// qemu-nbd's warning that probing raw is risky when it will be written).
fn probe(file: &str, writable: bool) -> String {
    let probed = block::probe::probe_format(file);
    if let Ok("qcow2") = probed {
        return "qcow2".to_string();
    }
    if probed.is_ok() && writable {
        eprintln!(
            "WARNING: Image format was not specified for '{file}' and probing guessed raw.\n         \
             Automatically detecting the format is dangerous for raw images, write operations \
             on block 0 will be restricted.\n         \
             Specify the 'raw' format explicitly to remove the restrictions."
        );
    }
    "raw".to_string()
}

/// The text of `--help`.
pub fn help_text(program: &str) -> String {
    format!(
        "\
Usage: {program} [OPTIONS] FILE
  or:  {program} -L [OPTIONS]
Serve a disk image over NBD (storaged's qemu-nbd mode)

  -h, --help                print this help and exit
  -V, --version             print the version and exit

Where clients connect:
  -p, --port=PORT           TCP port (default 10809)
  -b, --bind=IFACE          address to listen on (default 0.0.0.0)
  -k, --socket=PATH         a Unix socket instead of TCP
  -e, --shared=NUM          clients served at once (default 1; 0: no limit)
  -t, --persistent          keep serving after the last client leaves
  -v, --verbose             accepted; use -T for logs
  -x, --export-name=NAME    the export's name (default: empty)
  -D, --description=TEXT    the export's description
      --handshake-limit=N   seconds a client has for its handshake (default 10)

What is exported:
  -o, --offset=OFFSET       start the export this far into the image
  -A, --allocation-depth    offer the qemu:allocation-depth context
  -B, --bitmap=NAME         offer the image's dirty bitmap NAME (repeatable)

General:
  -L, --list                list a server's exports (-k, or -b and -p)
  --object type,id=ID,...   create an object (secret, tls-creds-*, ...)
  --tls-creds=ID            TLS credentials object
  --tls-authz=ID            authorization object
  --tls-hostname=HOSTNAME   accepted (client mode only)
  -T, --trace [[enable=]<pattern>][,events=<file>][,file=<file>]
                            logging, as storaged's -T
  --fork                    run in the background once the server is ready
  --pid-file=PATH           write the process id to PATH
  --selinux-label=LABEL     refused: no SELinux support

Kernel NBD client:
  -c, --connect=DEV         attach the image to the kernel's NBD device DEV
                            (in the background unless -v)
  -d, --disconnect          detach the device named as the operand

The image:
  -f, --format=FORMAT       image format (probed when absent)
  -r, --read-only           export read-only
  -s, --snapshot            serve a temporary overlay: the image is not written
  -l, --load-snapshot=SNAP  serve FILE's internal snapshot SNAP, read-only;
                            SNAP is snapshot.id=ID,snapshot.name=NAME (either
                            or both) or an id or a name alone
  -n, --nocache             same as --cache=none
      --cache=MODE          none, writeback (default), writethrough,
                            directsync or unsafe
      --aio=MODE            native, io_uring or threads
      --discard=MODE        ignore or unmap
      --detect-zeroes=MODE  off, on or unmap
      --image-opts          FILE is a list of image options (driver=...)
"
    )
}

/// The text of `--version`.
pub fn version_text(program: &str) -> String {
    let (major, minor, micro) = crate::version::QEMU;
    format!(
        "{program} (storaged {}, qemu-nbd {major}.{minor}.{micro} compatible)\n",
        env!("CARGO_PKG_VERSION")
    )
}
