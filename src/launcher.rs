//! The real kernel's process: starting it so that it cannot outlive the proxy,
//! passing signals on, and turning its exit into the proxy's own.
//!
//! One of the two modules allowed `unsafe` (with [`crate::memory`]): `pre_exec`, a
//! signal handler and a signal disposition have no safe interface.
#![allow(unsafe_code)]

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("the kernel command line is empty")]
    EmptyArgv,
    #[error("cannot start kernel {program:?}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
}

/// The running real kernel.
#[derive(Debug)]
pub struct KernelProcess {
    child: tokio::process::Child,
    pid: Pid,
}

/// Keeps code that runs in the kernel from attaching to the proxy (ptrace) or reading
/// its memory and environment through /proc: both run as the same user, and a kernel
/// that could reach into the proxy could keep its own cells off the record. The kernel
/// itself is not affected (exec makes a process dumpable again).
pub fn shield_proxy_from_kernel() {
    if let Err(error) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(%error, "cannot make the proxy non-dumpable; same-user processes may attach to it");
    }
}

/// Points the kernel's argv at the private connection file. Jupyter has already put
/// the frontend's connection file where the kernelspec said `{connection_file}`, so
/// both that path and a literal `{connection_file}` are replaced.
pub fn substitute_connection_file(
    argv: &[String],
    frontend_file: &Path,
    private_file: &Path,
) -> Vec<String> {
    let frontend = frontend_file.to_string_lossy();
    let private = private_file.to_string_lossy();
    argv.iter()
        .map(|arg| {
            let arg = arg.replace("{connection_file}", &private);
            if frontend.is_empty() {
                arg
            } else {
                arg.replace(&*frontend, &private)
            }
        })
        .collect()
}

impl KernelProcess {
    /// Starts the kernel in its own process group (so a signal to the proxy's group
    /// does not reach it twice) with the parent-death signal set to SIGKILL (so it
    /// dies with the proxy, even when the proxy is SIGKILLed).
    ///
    /// Must be called from the thread that lives as long as the proxy: the parent-death
    /// signal fires when the spawning *thread* exits.
    pub fn spawn(argv: &[String]) -> Result<Self, LaunchError> {
        let (program, args) = argv.split_first().ok_or(LaunchError::EmptyArgv)?;
        let parent = std::process::id();
        let mut command = tokio::process::Command::new(program);
        command.args(args).env("JPY_PARENT_PID", parent.to_string());
        // SAFETY: between fork and exec the closure only makes async-signal-safe system
        // calls and builds its errors from errno values (no allocation, no locks).
        unsafe {
            command.pre_exec(move || {
                nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))
                    .map_err(std::io::Error::from)?;
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
                // The proxy may have died between fork and prctl: the kernel would
                // outlive it. ESRCH ("no such process") names the parent that is gone.
                if nix::unistd::getppid().as_raw() as u32 != parent {
                    return Err(std::io::Error::from(nix::errno::Errno::ESRCH));
                }
                Ok(())
            });
        }
        let child = command.spawn().map_err(|source| LaunchError::Spawn {
            program: program.clone(),
            source,
        })?;
        let raw = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .unwrap_or_default();
        Ok(Self {
            child,
            pid: Pid::from_raw(raw),
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    /// Sends `signal` to the kernel's process group (the kernel and what it started),
    /// as Jupyter would have done had it started the kernel itself.
    pub fn signal_group(&self, signal: Signal) {
        if let Err(error) = signal::killpg(self.pid, signal) {
            // The group may be gone already; the kernel alone is what matters.
            tracing::debug!(%error, ?signal, "signal to kernel group failed, signalling the kernel");
            if let Err(error) = signal::kill(self.pid, signal) {
                tracing::debug!(%error, ?signal, "kernel already gone");
            }
        }
    }

    /// Passes SIGINT to the kernel's group from inside the proxy's signal handler, so
    /// an interrupt reaches the kernel before any message the frontend sends after
    /// interrupting (as when Jupyter signals the kernel itself). Other actions on
    /// SIGINT (the proxy's own logging) still run.
    pub fn pass_interrupts_at_once(&self) -> std::io::Result<()> {
        let group = self.pid;
        let action = move || {
            // Only async-signal-safe calls here; errno is restored for the code the
            // signal interrupted.
            let errno = nix::errno::Errno::last_raw();
            let _ = signal::killpg(group, Signal::SIGINT);
            nix::errno::Errno::set_raw(errno);
        };
        // SAFETY: the action makes one async-signal-safe system call and does not
        // allocate, lock, or panic.
        unsafe { signal_hook_registry::register(Signal::SIGINT as i32, action) }.map(|_| ())
    }

    /// Waits for the kernel to exit.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }
}

/// The process that launched the proxy, when it asked to be watched: Jupyter sets
/// `JPY_PARENT_PID`, and a kernel is expected to exit when that parent is gone (a
/// console whose terminal was closed, a killed server). The proxy watches in the
/// kernel's place, because the kernel's own watcher now sees the proxy.
pub fn watched_parent() -> Option<Pid> {
    std::env::var_os("JPY_PARENT_PID")?;
    Some(nix::unistd::getppid())
}

/// Returns once the proxy has been orphaned by `parent` (its parent pid changed).
pub async fn parent_exited(parent: Pid) {
    let mut poll = tokio::time::interval(std::time::Duration::from_secs(1));
    while nix::unistd::getppid() == parent {
        poll.tick().await;
    }
}

/// Ends the proxy the way the kernel ended: the same exit code, or the same signal.
pub fn exit_like(status: ExitStatus) -> ! {
    if let Some(code) = status.code() {
        std::process::exit(code);
    }
    if let Some(number) = status.signal()
        && let Ok(kernel_signal) = Signal::try_from(number)
    {
        // SAFETY: restoring the default disposition before raising it on ourselves.
        unsafe {
            let _ = signal::signal(kernel_signal, signal::SigHandler::SigDfl);
        }
        let _ = signal::raise(kernel_signal);
    }
    std::process::exit(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_every_connection_file_argument_at_the_private_file() {
        let frontend = Path::new("/home/u/kernel-1.json");
        let private = Path::new("/run/k.json");
        let cases: [(&[&str], &[&str]); 2] = [
            // A literal placeholder (the proxy run by hand).
            (
                &["python", "-f", "{connection_file}", "--x={connection_file}"],
                &["python", "-f", "/run/k.json", "--x=/run/k.json"],
            ),
            // What Jupyter passes: it substituted the frontend's file already.
            (
                &[
                    "python",
                    "-f",
                    "/home/u/kernel-1.json",
                    "--existing=/home/u/kernel-1.json",
                ],
                &["python", "-f", "/run/k.json", "--existing=/run/k.json"],
            ),
        ];
        for (argv, expected) in cases {
            let argv: Vec<String> = argv.iter().map(|arg| arg.to_string()).collect();
            assert_eq!(
                substitute_connection_file(&argv, frontend, private),
                expected
            );
        }
    }

    #[tokio::test]
    async fn kernel_runs_in_its_own_process_group_and_exit_status_is_reported() {
        let argv = ["sh", "-c", "exit 7"].map(String::from).to_vec();
        let mut kernel = KernelProcess::spawn(&argv).expect("sh starts");
        let status = kernel.wait().await.expect("waits");
        assert_eq!(status.code(), Some(7));
    }

    #[tokio::test]
    async fn group_signal_reaches_the_kernel() {
        let argv = ["sleep", "30"].map(String::from).to_vec();
        let mut kernel = KernelProcess::spawn(&argv).expect("sleep starts");
        let group = nix::unistd::getpgid(Some(Pid::from_raw(kernel.pid() as i32))).expect("pgid");
        assert_eq!(
            group.as_raw() as u32,
            kernel.pid(),
            "kernel leads its own group"
        );
        kernel.signal_group(Signal::SIGTERM);
        let status = kernel.wait().await.expect("waits");
        assert_eq!(status.signal(), Some(Signal::SIGTERM as i32));
    }

    #[test]
    fn empty_argv_is_an_error() {
        assert!(matches!(
            KernelProcess::spawn(&[]),
            Err(LaunchError::EmptyArgv)
        ));
    }
}
