//! Export commands: `nbd-server-start`, `nbd-server-stop`,
//! `block-export-add`, `block-export-del`, `query-block-exports` and the
//! deprecated `nbd-server-add` / `nbd-server-remove`. The export registry
//! (`exports::BlockExports`) does the work and words the errors; these
//! handlers read the arguments and check the objects they name.

use schema::export::{
    BlockExportDelArgs, BlockExportInfo, BlockExportOptions, NbdServerAddArgs, NbdServerOptions,
    NbdServerRemoveArgs, NbdServerStartArgs,
};
use schema::object::QCryptoTlsCredsEndpoint;
use schema::sockets::SocketAddressKind;
use schema::QmpError;
use std::sync::Arc;

use exports::nbd::tls::{Authorizer, ServerTls};

use super::{command, Command, NoArguments};
use crate::objects::{Object, Objects};
use crate::state::Daemon;

pub const COMMANDS: &[Command] = &[
    command!("nbd-server-start", qmp_nbd_server_start),
    command!("nbd-server-stop", nbd_server_stop),
    command!("block-export-add", qmp_block_export_add),
    command!("block-export-del", block_export_del),
    command!("query-block-exports", query_block_exports),
    command!("nbd-server-add", nbd_server_add, features: ["deprecated"]),
    command!("nbd-server-remove", nbd_server_remove, features: ["deprecated"]),
];

/// `nbd-server-start` and `--nbd-server`. An `addr.type=fd` is a
/// descriptor number, which only the command line may name (it is
/// inherited from the parent); `nbd-server-start` refuses it first.
pub async fn nbd_server_start(daemon: &Daemon, options: &NbdServerOptions) -> Result<(), QmpError> {
    daemon.exports.check_nbd_server_stopped()?;
    let tls = match &options.tls_creds {
        Some(id) => Some(server_tls(daemon, id, options.tls_authz.as_deref())?),
        None => None,
    };
    daemon.exports.nbd_server_start(options, tls).await
}

/// The server's TLS: the credentials `id` names (held by the server even
/// if the object is deleted, as in QEMU), and the authorization object
/// `authz` names, looked up at each connection (as QEMU does).
fn server_tls(daemon: &Daemon, id: &str, authz: Option<&str>) -> Result<ServerTls, QmpError> {
    let creds = match daemon.objects.get(id) {
        None => {
            return Err(QmpError::generic(format!(
                "No TLS credentials with id '{id}'"
            )))
        }
        Some(Object::TlsCreds(creds)) if creds.endpoint != QCryptoTlsCredsEndpoint::Server => {
            return Err(QmpError::generic(
                "Expected TLS credentials for a server endpoint",
            ))
        }
        Some(Object::TlsCreds(creds)) => creds.sessions,
        Some(_) => {
            return Err(QmpError::generic(format!(
                "Object with id '{id}' is not TLS credentials"
            )))
        }
    };
    let authz = authz.map(|authz| {
        Arc::new(AuthzById {
            objects: Arc::clone(&daemon.objects),
            id: authz.to_owned(),
        }) as Arc<dyn Authorizer>
    });
    Ok(ServerTls { creds, authz })
}

/// `tls-authz`: the object is found by id at each check, so that a
/// replaced object takes effect and a deleted one refuses everyone.
#[derive(Debug)]
struct AuthzById {
    objects: Arc<Objects>,
    id: String,
}

impl Authorizer for AuthzById {
    fn check(&self, identity: Option<&str>) -> Result<(), String> {
        let id = &self.id;
        let authz = match self.objects.get(id) {
            Some(Object::Authz(authz)) => authz,
            Some(_) => return Err(format!("Object '{id}' is not a QAuthZ subclass")),
            None => return Err(format!("Cannot find QAuthZ object ID {id}")),
        };
        let identity = identity.ok_or("the client gave no identity (no certificate)")?;
        match authz.is_allowed(identity)? {
            true => Ok(()),
            false => Err(format!("authorization object '{id}' denies it")),
        }
    }
}

/// A monitor names descriptors by the names `getfd`/`add-fd` gave them;
/// QSD has neither command (nor has storaged), so every name is unknown.
/// A number is refused too: the client does not own the daemon's
/// descriptors.
const MONITOR_FD_UNSUPPORTED: &str = "only QEMU supports file descriptor passing";

async fn qmp_nbd_server_start(daemon: &Daemon, args: NbdServerStartArgs) -> Result<(), QmpError> {
    let options: NbdServerOptions = args.into();
    // QSD's order: a running server first, then the address.
    daemon.exports.check_nbd_server_stopped()?;
    if let SocketAddressKind::Fd(_) = options.addr.addr {
        return Err(QmpError::generic(MONITOR_FD_UNSUPPORTED));
    }
    nbd_server_start(daemon, &options).await?;
    Ok(())
}

async fn nbd_server_stop(daemon: &Daemon, _: NoArguments) -> Result<(), QmpError> {
    daemon.exports.nbd_server_stop().await?;
    Ok(())
}

/// `block-export-add` and `--export`. An `iothread` must exist; the
/// export then runs its requests in it (NBD connections move there after
/// their handshake). `fixed-iothread` asks that the node not move to
/// another thread, which nothing here does: it is accepted either way.
pub fn block_export_add(daemon: &Daemon, options: &BlockExportOptions) -> Result<(), QmpError> {
    let iothread = match &options.iothread {
        Some(id) => match daemon.objects.get(id) {
            Some(Object::Iothread(iothread)) => Some(iothread),
            _ => return Err(QmpError::generic(format!("iothread \"{id}\" not found"))),
        },
        None => None,
    };
    daemon.exports.add(&daemon.graph, options, iothread)
}

async fn qmp_block_export_add(
    daemon: &Daemon,
    options: BlockExportOptions,
) -> Result<(), QmpError> {
    block_export_add(daemon, &options)?;
    Ok(())
}

async fn block_export_del(
    daemon: &Daemon,
    BlockExportDelArgs { id, mode }: BlockExportDelArgs,
) -> Result<(), QmpError> {
    daemon.exports.del(&id, mode.unwrap_or_default())?;
    Ok(())
}

async fn query_block_exports(
    daemon: &Daemon,
    _: NoArguments,
) -> Result<Vec<BlockExportInfo>, QmpError> {
    Ok(daemon.exports.query())
}

async fn nbd_server_add(daemon: &Daemon, args: NbdServerAddArgs) -> Result<(), QmpError> {
    daemon.exports.nbd_server_add(&daemon.graph, &args)?;
    Ok(())
}

async fn nbd_server_remove(daemon: &Daemon, args: NbdServerRemoveArgs) -> Result<(), QmpError> {
    daemon.exports.nbd_server_remove(&args)?;
    Ok(())
}
