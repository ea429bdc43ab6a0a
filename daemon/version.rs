//! The version storaged reports: the QEMU release whose QMP it mirrors, and
//! its own package name and version.

/// The QEMU release whose qemu-storage-daemon storaged mirrors: the one
/// its behaviour is compared with (QSD 10.0.2, the tests' reference).
pub const QEMU: (i64, i64, i64) = (10, 0, 2);

/// `package` of `query-version` and of the QMP greeting.
pub fn package() -> String {
    format!("storaged {}", env!("CARGO_PKG_VERSION"))
}

/// The `query-version` result, also sent in the QMP greeting.
pub fn version_info() -> schema::info::VersionInfo {
    let (major, minor, micro) = QEMU;
    schema::info::VersionInfo {
        qemu: schema::info::VersionTriple {
            major,
            minor,
            micro,
        },
        package: package(),
    }
}

/// The text of `--version`.
pub fn version_text() -> String {
    let (major, minor, micro) = QEMU;
    format!(
        "storaged version {} (qemu-storage-daemon {major}.{minor}.{micro} compatible)\n",
        env!("CARGO_PKG_VERSION")
    )
}
