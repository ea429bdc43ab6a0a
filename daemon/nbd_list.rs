//! `qemu-nbd --list`: asks an NBD server for its exports and prints them
//! as qemu-nbd does (each export's size, flags, block sizes, transaction
//! size and metadata contexts).

use std::fmt::Write as _;
use std::process::ExitCode;

use nbdwire::client::{self, Handshake, ReplyMode, ServerAddress, Stream};

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

/// Lists the exports of `target`; the exit status of `qemu-nbd -L`.
pub fn run(target: &ServerAddress, program: &str) -> ExitCode {
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
    match runtime.block_on(list(target)) {
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

async fn list(target: &ServerAddress) -> Result<String, String> {
    let stream = client::connect(target).await.map_err(|e| {
        format!(
            "Failed to connect to '{target}': {}",
            block::error::os_error_text(&e)
        )
    })?;
    describe(stream).await.map_err(|e| e.to_string())
}

/// The listing, in qemu-nbd's layout.
async fn describe(stream: Box<dyn Stream>) -> std::io::Result<String> {
    let mut handshake = Handshake::start(stream).await?;
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
