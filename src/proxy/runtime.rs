//! The private side of the proxy: a 0700 directory holding the real kernel's
//! connection file (fresh random key) and, by default, its ipc sockets.
//!
//! The directory is placed so that every ipc endpoint is at most
//! [`MAX_PORTABLE_ENDPOINT`] characters: kernels built on xeus-zmq (xeus-python,
//! xeus-cling, xeus-r, …) read each endpoint they bound back into a 32-byte buffer and die
//! at start with "Invalid argument" when it is longer, so a long `$XDG_RUNTIME_DIR`
//! gives way to the temp dir.
//!
//! The directory is removed when the proxy ends, but not when it is killed (SIGKILL, as
//! `shutdown_kernel(now=True)` sends): each proxy holds a lock on its directory for its
//! whole life, and a starting proxy removes this user's directories whose lock nobody
//! holds any more, so they do not pile up in the temp dir.

use std::fs::File;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::connection::{ConnectionError, ConnectionInfo, KernelTransport, Transport};
use crate::wire::SignatureScheme;

/// Longest path a Unix socket address can hold (sun_path, less the final NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Longest ipc endpoint (`ipc://` included) that every kernel accepts. xeus-zmq reads
/// `ZMQ_LAST_ENDPOINT` of each socket it bound into 32 bytes, NUL included; libzmq
/// refuses a buffer that is too small with EINVAL, which xeus turns into a fatal
/// "Invalid argument" before the kernel answers anything.
pub const MAX_PORTABLE_ENDPOINT: usize = 31;

/// Name of the private directory: a short prefix and random characters, so that the
/// endpoints under the temp dir stay well within [`MAX_PORTABLE_ENDPOINT`].
const DIR_PREFIX: &str = "ja-";
const DIR_RANDOM_CHARS: usize = 6;

/// The socket name prefix inside the private directory (sockets are `k-1` … `k-5`).
const SOCKET_PREFIX: &str = "k";

/// A private directory younger than this is never swept: its proxy may not hold the
/// lock yet (it takes it right after creating the directory).
const SWEEP_MIN_AGE: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot create the private runtime directory in {base}: {source}")]
    CreateDir {
        base: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "private runtime directory {0} is too long for Unix socket paths; use --runtime-dir with a shorter path"
    )]
    PathTooLong(PathBuf),
    #[error("cannot find free loopback ports for the kernel: {0}")]
    Ports(std::io::Error),
    #[error(transparent)]
    ConnectionFile(#[from] ConnectionError),
}

/// The real kernel's private connection; the directory is removed on drop.
#[derive(Debug)]
pub struct PrivateRuntime {
    dir: tempfile::TempDir,
    /// Held while this proxy lives; the kernel does not inherit it (close-on-exec).
    _alive: Option<Flock<File>>,
    info: ConnectionInfo,
    connection_file: PathBuf,
}

impl PrivateRuntime {
    pub fn create(
        base: Option<&Path>,
        transport: KernelTransport,
        kernel_name: Option<String>,
    ) -> Result<Self, RuntimeError> {
        let base = match (base, transport) {
            (Some(base), _) => base.to_owned(),
            (None, KernelTransport::Ipc) => pick_ipc_base(default_bases()),
            (None, KernelTransport::Tcp) => default_bases().remove(0),
        };
        if transport == KernelTransport::Ipc {
            let length = ipc_endpoint_length(&base);
            if length > MAX_PORTABLE_ENDPOINT {
                tracing::warn!(
                    runtime_dir = %base.display(),
                    endpoint_chars = length,
                    "ipc endpoints under this runtime directory are longer than {MAX_PORTABLE_ENDPOINT} \
                     characters: kernels built on xeus (xeus-python, xeus-cling, xeus-r) refuse them \
                     and die at start with \"Invalid argument\"; give a shorter --runtime-dir \
                     or --kernel-transport tcp for such a kernel"
                );
            }
        }
        sweep_killed_proxies(&base, SWEEP_MIN_AGE);
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .rand_bytes(DIR_RANDOM_CHARS)
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(&base)
            .map_err(|source| RuntimeError::CreateDir {
                base: base.clone(),
                source,
            })?;
        let (transport, ip, ports) = match transport {
            KernelTransport::Ipc => {
                let prefix = dir.path().join(SOCKET_PREFIX);
                // The longest socket path is "<prefix>-5".
                if prefix.as_os_str().len() + 2 > MAX_SOCKET_PATH {
                    return Err(RuntimeError::PathTooLong(dir.path().to_owned()));
                }
                (
                    Transport::Ipc,
                    prefix.to_string_lossy().into_owned(),
                    [1, 2, 3, 4, 5],
                )
            }
            KernelTransport::Tcp => (
                Transport::Tcp,
                "127.0.0.1".to_owned(),
                free_loopback_ports()?,
            ),
        };
        let info = ConnectionInfo {
            transport,
            ip,
            shell_port: ports[0],
            iopub_port: ports[1],
            stdin_port: ports[2],
            control_port: ports[3],
            hb_port: ports[4],
            key: hex::encode(rand::random::<[u8; 32]>()),
            signature_scheme: SignatureScheme::Sha256.name().to_owned(),
            kernel_name,
        };
        let connection_file = dir.path().join("kernel.json");
        info.write(&connection_file)?;
        let alive = hold_alive_lock(dir.path());
        Ok(Self {
            dir,
            _alive: alive,
            info,
            connection_file,
        })
    }

    pub fn info(&self) -> &ConnectionInfo {
        &self.info
    }

    pub fn connection_file(&self) -> &Path {
        &self.connection_file
    }

    /// Removes the connection file once the kernel has read it, so its key lives
    /// only in the memory of the proxy and the kernel.
    pub fn forget_connection_file(&self) {
        if let Err(error) = std::fs::remove_file(&self.connection_file) {
            tracing::debug!(%error, "private connection file already gone");
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Locks `dir` for as long as the returned lock lives; `None` (with a note) where the
/// file system cannot lock: the directory is then left alone by sweeps, as a live one.
fn hold_alive_lock(dir: &Path) -> Option<Flock<File>> {
    let locked = File::open(dir)
        .map_err(|error| error.to_string())
        .and_then(|file| {
            Flock::lock(file, FlockArg::LockExclusiveNonblock)
                .map_err(|(_, errno)| errno.to_string())
        });
    match locked {
        Ok(lock) => Some(lock),
        Err(error) => {
            tracing::debug!(dir = %dir.display(), %error, "cannot lock the private directory");
            None
        }
    }
}

/// Removes this user's private directories in `base` that no live proxy holds: their
/// proxy was killed before it could remove them. Directories younger than `min_age`, not
/// this user's, not 0700 or not named as ours are never touched.
fn sweep_killed_proxies(base: &Path, min_age: std::time::Duration) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    let me = nix::unistd::geteuid().as_raw();
    let mut removed = 0usize;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_ours = name.to_str().is_some_and(|name| {
            name.len() == DIR_PREFIX.len() + DIR_RANDOM_CHARS && name.starts_with(DIR_PREFIX)
        });
        if !is_ours {
            continue;
        }
        let path = entry.path();
        // Not followed: a link in a shared temp dir is somebody else's.
        let Ok(metadata) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let old_enough = metadata
            .modified()
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|age| age >= min_age);
        if !metadata.is_dir()
            || metadata.uid() != me
            || metadata.mode() & 0o777 != 0o700
            || !old_enough
        {
            continue;
        }
        let Ok(file) = File::open(&path) else {
            continue;
        };
        // Held by its proxy while that lives; a killed process holds nothing.
        let Ok(_abandoned) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
            continue;
        };
        match std::fs::remove_dir_all(&path) {
            Ok(()) => removed += 1,
            Err(error) => {
                tracing::debug!(dir = %path.display(), %error, "cannot remove a killed proxy's directory");
            }
        }
    }
    if removed > 0 {
        tracing::info!(removed, base = %base.display(), "removed private directories of killed proxies");
    }
}

/// Where the private directory may go without `--runtime-dir`, best first:
/// `$XDG_RUNTIME_DIR` (a per-user tmpfs) when it exists, then the temp dir.
fn default_bases() -> Vec<PathBuf> {
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|dir| dir.is_dir());
    runtime.into_iter().chain([std::env::temp_dir()]).collect()
}

/// The first base whose ipc endpoints every kernel accepts; the first one when none
/// does (then only xeus kernels are refused, and `create` says so).
fn pick_ipc_base(mut bases: Vec<PathBuf>) -> PathBuf {
    match bases
        .iter()
        .position(|base| ipc_endpoint_length(base) <= MAX_PORTABLE_ENDPOINT)
    {
        Some(index) => bases.swap_remove(index),
        None => bases.swap_remove(0),
    }
}

/// Length of the longest ipc endpoint of a private directory made in `base`:
/// `ipc://<base>/<prefix><random>/<socket prefix>-<port>` with one-digit ports.
fn ipc_endpoint_length(base: &Path) -> usize {
    "ipc://".len()
        + base.as_os_str().len()
        + 1
        + DIR_PREFIX.len()
        + DIR_RANDOM_CHARS
        + 1
        + SOCKET_PREFIX.len()
        + "-5".len()
}

/// Asks the OS for five free ports, as Jupyter does for tcp kernels.
fn free_loopback_ports() -> Result<[u16; 5], RuntimeError> {
    let listeners = (0..5)
        .map(|_| std::net::TcpListener::bind(("127.0.0.1", 0)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(RuntimeError::Ports)?;
    let mut ports = [0u16; 5];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr().map_err(RuntimeError::Ports)?.port();
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_directory_and_connection_file_are_owner_only() {
        let base = tempfile::tempdir().expect("tempdir");
        let runtime =
            PrivateRuntime::create(Some(base.path()), KernelTransport::Ipc, None).expect("created");
        let dir_mode = std::fs::metadata(runtime.dir())
            .expect("dir")
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let file_mode = std::fs::metadata(runtime.connection_file())
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(file_mode & 0o777, 0o600);
        let written = ConnectionInfo::read(runtime.connection_file()).expect("readable");
        assert_eq!(&written, runtime.info());
        assert_eq!(written.key.len(), 64);
        assert!(written.ip.starts_with(&*runtime.dir().to_string_lossy()));
        runtime.forget_connection_file();
        assert!(!runtime.connection_file().exists());
        let dir = runtime.dir().to_owned();
        drop(runtime);
        assert!(!dir.exists(), "removed with the proxy");
    }

    #[test]
    fn tcp_fallback_uses_distinct_loopback_ports() {
        let base = tempfile::tempdir().expect("tempdir");
        let runtime =
            PrivateRuntime::create(Some(base.path()), KernelTransport::Tcp, None).expect("created");
        let info = runtime.info();
        assert_eq!(info.ip, "127.0.0.1");
        let mut ports = vec![
            info.shell_port,
            info.iopub_port,
            info.stdin_port,
            info.control_port,
            info.hb_port,
        ];
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 5);
    }

    #[test]
    fn endpoints_fit_what_xeus_accepts_under_the_temp_dir() {
        // /tmp is the temp dir of Debian, CI and JupyterHub's spawners.
        let runtime = PrivateRuntime::create(Some(Path::new("/tmp")), KernelTransport::Ipc, None)
            .expect("created");
        for channel in crate::connection::Channel::ALL {
            let endpoint = runtime.info().endpoint(channel);
            assert!(
                endpoint.len() <= MAX_PORTABLE_ENDPOINT,
                "{endpoint} is longer than {MAX_PORTABLE_ENDPOINT}"
            );
        }
        assert_eq!(
            runtime
                .info()
                .endpoint(crate::connection::Channel::Heartbeat)
                .len(),
            ipc_endpoint_length(Path::new("/tmp"))
        );
    }

    #[test]
    fn a_long_runtime_dir_gives_way_to_the_temp_dir() {
        // systemd's /run/user/UID is too long once UIDs have 4 digits or more.
        let run_user = |uid: &str| PathBuf::from(format!("/run/user/{uid}"));
        let tmp = PathBuf::from("/tmp");
        assert_eq!(pick_ipc_base(vec![run_user("1000"), tmp.clone()]), tmp);
        assert_eq!(
            pick_ipc_base(vec![run_user("0"), tmp.clone()]),
            run_user("0")
        );
        assert_eq!(pick_ipc_base(vec![tmp.clone()]), tmp);
        let long = PathBuf::from("/var/tmp/a-rather-long-temporary-directory");
        assert_eq!(
            pick_ipc_base(vec![long.clone()]),
            long,
            "nothing better to pick"
        );
    }

    #[test]
    fn a_killed_proxys_directory_is_swept_and_a_live_ones_is_kept() {
        let base = tempfile::tempdir().expect("tempdir");
        let live =
            PrivateRuntime::create(Some(base.path()), KernelTransport::Ipc, None).expect("created");
        // What a SIGKILLed proxy leaves: its directory, with nobody holding the lock.
        let killed = base.path().join("ja-Abc123");
        std::fs::create_dir(&killed).expect("mkdir");
        std::fs::set_permissions(&killed, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        std::fs::write(killed.join("k-1"), b"").expect("write");
        // Not ours to remove: another name, another mode.
        let other_name = base.path().join("ja-too-long-a-name");
        std::fs::create_dir(&other_name).expect("mkdir");
        std::fs::set_permissions(&other_name, std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        let other_mode = base.path().join("ja-Xyz789");
        std::fs::create_dir(&other_mode).expect("mkdir");
        std::fs::set_permissions(&other_mode, std::fs::Permissions::from_mode(0o755))
            .expect("chmod");

        sweep_killed_proxies(base.path(), std::time::Duration::from_secs(3600));
        assert!(killed.exists(), "younger than the minimum age: kept");

        sweep_killed_proxies(base.path(), std::time::Duration::ZERO);
        assert!(!killed.exists(), "abandoned: removed");
        assert!(live.dir().exists(), "its proxy still holds it");
        assert!(other_name.exists() && other_mode.exists());

        let dir = live.dir().to_owned();
        drop(live);
        assert!(!dir.exists(), "a proxy that ends removes its own");
    }

    #[test]
    fn each_run_gets_a_fresh_key() {
        let base = tempfile::tempdir().expect("tempdir");
        let first =
            PrivateRuntime::create(Some(base.path()), KernelTransport::Ipc, None).expect("created");
        let second =
            PrivateRuntime::create(Some(base.path()), KernelTransport::Ipc, None).expect("created");
        assert_ne!(first.info().key, second.info().key);
    }
}
