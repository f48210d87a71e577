//! Without root: a user namespace owns the program's network and mount
//! namespaces. The caller is root inside it for the set-up (as `unshare -r`),
//! and the program runs as the caller's own uid and gid (as `unshare
//! --map-user`): a second user namespace, nested, maps them back.
//! Where the kernel refuses, the error says what is missing.

use anyhow::{anyhow, bail, Context as _};
use nix::errno::Errno;
use nix::sched::{unshare, CloneFlags};
use nix::unistd::{Gid, Uid};
use std::os::unix::fs::{MetadataExt, PermissionsExt};

const TUN_PATH: &str = "/dev/net/tun";

/// Who runs sockstun exec.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: Uid,
    pub gid: Gid,
    /// Root where sockstun was started (inside our user namespace
    /// everyone is root, so this is read once, before).
    root: bool,
}

impl Caller {
    pub fn current() -> Caller {
        Caller {
            uid: Uid::current(),
            gid: Gid::current(),
            root: Uid::effective().is_root(),
        }
    }

    pub fn is_root(&self) -> bool {
        self.root
    }
}

/// The kernel settings that forbid unprivileged user namespaces, read
/// before trying so the error can name them.
pub fn check_available() -> anyhow::Result<()> {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    };
    if read("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        bail!(
            "sockstun exec without root needs unprivileged user namespaces, and this kernel \
             forbids them (kernel.unprivileged_userns_clone = 0): run it as root, or enable \
             them (sysctl kernel.unprivileged_userns_clone=1)"
        );
    }
    if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        bail!(
            "sockstun exec without root needs user namespaces, and user.max_user_namespaces is 0: \
             run it as root, or raise it (sysctl user.max_user_namespaces=15000)"
        );
    }
    Ok(())
}

/// Rootless TUN creation opens /dev/net/tun as the caller: the usual mode
/// is 0666 (the kernel then checks CAP_NET_ADMIN, which the user namespace
/// gives). Say so plainly when the file is closed to the caller.
pub fn check_tun_access(caller: Caller) -> anyhow::Result<()> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(TUN_PATH)
    {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
            let m = std::fs::metadata(TUN_PATH).context(TUN_PATH)?;
            bail!(
                "{TUN_PATH} is mode {:04o} (owner uid {}, group {}): sockstun exec without root \
                 opens it as uid {}, which needs read and write access (mode 0666, the usual): \
                 run it as root, or make the device node 0666",
                m.permissions().mode() & 0o7777,
                m.uid(),
                m.gid(),
                caller.uid
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{TUN_PATH} is missing: load the tun module (modprobe tun)")
        }
        Err(e) => Err(anyhow!(e).context(format!("opening {TUN_PATH}"))),
    }
}

/// unshare(2) with what failed explained.
pub fn enter(flags: CloneFlags, rootless: bool) -> anyhow::Result<()> {
    unshare(flags).map_err(|e| {
        let why = match (e, rootless) {
            (Errno::EPERM, true) => {
                "this system does not let an unprivileged user create a user namespace (a sysctl \
                 such as kernel.apparmor_restrict_unprivileged_userns, or a container's seccomp \
                 policy): run sockstun exec as root"
            }
            (Errno::EPERM, false) => "creating namespaces needs CAP_SYS_ADMIN",
            (Errno::EINVAL, _) => "this kernel lacks network, mount or user namespaces",
            (Errno::ENOSPC, _) => {
                "the namespace limit is reached (/proc/sys/user/max_*_namespaces)"
            }
            _ => "unshare failed",
        };
        anyhow!("creating the program's namespaces: {why} ({e})")
    })
}

/// Write this process's uid and gid maps in its new user namespace: `inner`
/// inside is `outer` outside, one id each (all an unprivileged process may
/// map, and only after giving up setgroups).
fn write_maps(inner: (u32, u32), outer: (u32, u32)) -> anyhow::Result<()> {
    let w = |file: &str, text: String| {
        std::fs::write(format!("/proc/self/{file}"), &text)
            .with_context(|| format!("writing {text:?} to /proc/self/{file}"))
    };
    w("setgroups", "deny".into())?;
    w("uid_map", format!("{} {} 1\n", inner.0, outer.0))?;
    w("gid_map", format!("{} {} 1\n", inner.1, outer.1))
}

/// In the new user namespace: become root there (the caller outside).
pub fn map_root(caller: Caller) -> anyhow::Result<()> {
    write_maps((0, 0), (caller.uid.as_raw(), caller.gid.as_raw()))
}

/// Just before the program: a nested user namespace in which the caller's
/// uid and gid are themselves again, so the program runs as the caller
/// (its files, `id`), without the set-up's capabilities (exec as a uid
/// other than 0 drops them).
pub fn become_caller(caller: Caller) -> anyhow::Result<()> {
    enter(CloneFlags::CLONE_NEWUSER, true)?;
    write_maps((caller.uid.as_raw(), caller.gid.as_raw()), (0, 0))
        .context("mapping the caller's uid back for the program")
}
