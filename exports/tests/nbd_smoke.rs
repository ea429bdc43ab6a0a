use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use block::{BlockResult, Extent, WriteFlags, ZeroFlags};
use exports::nbd::*;

struct Mem(Mutex<Vec<u8>>);

#[async_trait]
impl BackendOps for Mem {
    fn size(&self) -> u64 {
        self.0.lock().unwrap().len() as u64
    }
    async fn read(&self, offset: u64, buf: &mut [u8]) -> BlockResult<()> {
        let d = self.0.lock().unwrap();
        buf.copy_from_slice(&d[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    async fn write(&self, offset: u64, buf: &[u8], _: WriteFlags) -> BlockResult<()> {
        let mut d = self.0.lock().unwrap();
        d[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    async fn write_zeroes(&self, offset: u64, len: u64, _: ZeroFlags) -> BlockResult<()> {
        let mut d = self.0.lock().unwrap();
        d[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }
    async fn discard(&self, _: u64, _: u64) -> BlockResult<()> {
        Ok(())
    }
    async fn flush(&self) -> BlockResult<()> {
        Ok(())
    }
    async fn block_status(&self, offset: u64, len: u64) -> BlockResult<Extent> {
        let d = self.0.lock().unwrap();
        let zero = d[offset as usize] == 0;
        let mut n = 0;
        while n < len && (d[(offset + n) as usize] == 0) == zero {
            n += 1;
        }
        Ok(Extent {
            length: n,
            data: !zero,
            zero,
            depth: if zero { 0 } else { 1 },
        })
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn can_fast_zero(&self) -> bool {
        true
    }
    fn request_alignment(&self) -> u32 {
        1
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nbd.sock");
    let server = NbdServer::start(NbdServerConfig {
        address: ListenAddress::Unix {
            path: sock.clone(),
            abstract_name: false,
        },
        max_connections: 0,
        handshake_max_seconds: 10,
        tls_creds: None,
        tls_authz: None,
    })
    .await
    .unwrap();
    let mut data = vec![0u8; 1 << 20];
    data[4096..8192].fill(0xab);
    let backend: Backend = Arc::new(Mem(Mutex::new(data)));
    server
        .add_export(
            NbdExportConfig {
                name: "disk".into(),
                description: Some("a disk".into()),
                writable: true,
                meta: ExportMeta {
                    allocation_depth: true,
                    bitmaps: vec![],
                },
            },
            backend,
        )
        .unwrap();
    let uri = format!("nbd+unix:///disk?socket={}", sock.display());
    let out = tokio::process::Command::new("nbdinfo")
        .arg(&uri)
        .output()
        .await
        .unwrap();
    println!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tokio::process::Command::new("nbdinfo")
        .arg("--map")
        .arg(&uri)
        .output()
        .await
        .unwrap();
    println!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tokio::process::Command::new("nbdinfo")
        .arg("--map=qemu:allocation-depth")
        .arg(&uri)
        .output()
        .await
        .unwrap();
    println!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tokio::process::Command::new("nbdinfo")
        .arg("--list")
        .arg(&uri)
        .output()
        .await
        .unwrap();
    println!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tokio::process::Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            "-c",
            "write -P 0x55 0 64k",
            "-c",
            "read -P 0x55 0 64k",
            "-c",
            "read -P 0xab 64k 4k",
            &uri,
        ])
        .output()
        .await
        .unwrap();
    println!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tokio::process::Command::new("qemu-img")
        .args(["info", &uri])
        .output()
        .await
        .unwrap();
    println!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop().await;
}
