//! `qemu-nbd --list`: asks an NBD server for its exports and prints them
//! as qemu-nbd does (each export's size, flags, block sizes, transaction
//! size and metadata contexts), over TLS with `--tls-creds` (client
//! credentials among the `--object`s).

use std::fmt::Write as _;
use std::process::ExitCode;

use std::sync::Arc;

use nbdwire::client::{self, Handshake, ReplyMode, ServerAddress, Stream};
use nbdwire::tls::TlsCreds;
use schema::object::{ObjectOptions, QCryptoTlsCredsEndpoint, OBJECT_IMPLIED_KEY};

use crate::objects::{Object, Objects};
use crate::qemu_nbd::ListRequest;

/// The names qemu-nbd prints for transmission flags, by bit.
const FLAG_NAMES: &[(u16, &str)] = &[
    (1, "readonly"),
    (2, "flush"),
    (3, "fua"),
    (4, "rotational"),
    (5, "trim"),
    (6, "zeroes"),
    (7, "df"),
    (8, "multi"),
    (9, "resize"),
    (10, "cache"),
    (11, "fast-zero"),
    (12, "block-status-payload"),
];

/// Lists the exports `request` names; the exit status of `qemu-nbd -L`.
pub fn run(request: &ListRequest, program: &str) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{program}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listing = async {
        let tls = match &request.tls_creds {
            Some(id) => Some(client_creds(request, id)?),
            None => None,
        };
        let hostname = request.tls_hostname.as_deref();
        list(
            &request.target,
            tls.as_deref().map(|creds| (creds, hostname)),
        )
        .await
    };
    match runtime.block_on(listing) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("{program}: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The client credentials `id` names among the request's objects, with
/// qemu-nbd's messages.
fn client_creds(request: &ListRequest, id: &str) -> Result<Arc<TlsCreds>, String> {
    let objects = Objects::new();
    for object in &request.objects {
        let options: ObjectOptions = schema::parse_option(&object.value, Some(OBJECT_IMPLIED_KEY))
            .map_err(|e| format!("{}: {}", object.location, e.desc))?;
        objects
            .add(options)
            .map_err(|e| format!("{}: {}", object.location, e.desc))?;
    }
    let creds = match objects.get(id) {
        None => Err(format!("No TLS credentials with id '{id}'")),
        Some(Object::TlsCreds(creds)) if creds.endpoint != QCryptoTlsCredsEndpoint::Client => {
            Err("Expected TLS credentials for a client endpoint".into())
        }
        Some(Object::TlsCreds(creds)) => Ok(creds.sessions),
        Some(_) => Err(format!("Object with id '{id}' is not TLS credentials")),
    };
    creds.map_err(|reason| format!("Failed to get TLS creds: {reason}"))
}

async fn list(
    target: &ServerAddress,
    tls: Option<(&TlsCreds, Option<&str>)>,
) -> Result<String, String> {
    let stream = client::connect(target).await.map_err(|e| {
        format!(
            "Failed to connect to '{target}': {}",
            block::error::os_error_text(&e)
        )
    })?;
    describe(stream, tls).await.map_err(|e| e.to_string())
}

/// The listing, in qemu-nbd's layout.
async fn describe(
    stream: Box<dyn Stream>,
    tls: Option<(&TlsCreds, Option<&str>)>,
) -> std::io::Result<String> {
    let mut handshake = Handshake::start(stream).await?;
    if let Some((creds, hostname)) = tls {
        handshake = handshake.starttls(creds, hostname).await?;
    }
    let mode = handshake.negotiate_mode().await?;
    let exports = handshake.list().await?;
    let mut text = format!("exports available: {}\n", exports.len());
    for export in &exports {
        let info = handshake.info(&export.name).await?;
        let contexts = handshake.meta_contexts(&export.name).await?;
        let _ = writeln!(text, " export: '{}'", export.name);
        if !export.description.is_empty() {
            let _ = writeln!(text, "  description: {}", export.description);
        }
        let _ = writeln!(text, "  size:  {}", info.size);
        let _ = write!(text, "  flags: {:#x} (", info.flags);
        for (bit, name) in FLAG_NAMES {
            if info.flags & (1 << bit) != 0 {
                let _ = write!(text, " {name}");
            }
        }
        text.push_str(" )\n");
        if let Some((min, preferred, max)) = info.block_sizes {
            let _ = writeln!(text, "  min block: {min}");
            let _ = writeln!(text, "  opt block: {preferred}");
            let _ = writeln!(text, "  max block: {max}");
        }
        let size = if mode == ReplyMode::Extended {
            "64-bit"
        } else {
            "32-bit"
        };
        let _ = writeln!(text, "  transaction size: {size}");
        if !contexts.is_empty() {
            let _ = writeln!(text, "  available meta contexts: {}", contexts.len());
            for context in &contexts {
                let _ = writeln!(text, "   {context}");
            }
        }
    }
    handshake.abort().await?;
    Ok(text)
}
