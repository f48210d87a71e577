//! The queues of a multi-queue TUN (`IFF_MULTI_QUEUE`): each is a descriptor
//! of its own on the same device, and the kernel spreads the packets it
//! sends into the device over them by a hash of the flow, so one flow always
//! reaches one queue. The `tun` crate opens one queue only (it refuses more),
//! hence the one ioctl here.
//!
//! A queue is opened here and served elsewhere: [`QueueFile`] is a plain
//! descriptor until [`QueueFile::into_io`] registers it with the runtime of
//! the thread that reads it (a descriptor is watched by one runtime's
//! reactor; reading it from another would wake two threads per packet).

use super::device::{DeviceSink, DeviceSource};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// Attach `n` queues to the multi-queue TUN `name`, creating it (gone again
/// once the last queue closes) if it does not exist. Descriptors are
/// non-blocking and close-on-exec. On an error the queues opened so far are
/// closed.
pub fn open_all(name: &str, n: usize, vnet_hdr: bool) -> io::Result<Vec<File>> {
    (0..n.max(1)).map(|_| open_one(name, vnet_hdr)).collect()
}

fn open_one(name: &str, vnet_hdr: bool) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open("/dev/net/tun")?;
    // SAFETY: an all-zero ifreq is a valid value (empty name, no flags).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    // The name and its NUL must fit; the rest of the array stays zero.
    if bytes.is_empty() || bytes.len() >= req.ifr_name.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?}: not a valid device name (1 to 15 bytes)"),
        ));
    }
    // A template (`tun%d`) would make a new device per queue.
    if bytes.contains(&b'%') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?}: a multi-queue device needs a name of its own, not a template"),
        ));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let mut flags = libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE;
    if vnet_hdr {
        flags |= libc::IFF_VNET_HDR;
    }
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: `file` is an open descriptor of /dev/net/tun and `req` a valid
    // ifreq that lives across the call; TUNSETIFF reads it and writes the
    // name back into it.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// One queue of the device beyond the first, opened and configured, not yet
/// read by anyone.
pub struct QueueFile {
    pub(super) file: File,
    pub(super) offload: bool,
    pub(super) write_drops: Arc<AtomicU64>,
    pub(super) malformed: Arc<AtomicU64>,
    pub(super) super_packets: Arc<AtomicU64>,
}

impl QueueFile {
    /// The queue as the stack's packet source and sink, registered with the
    /// current runtime (the one of the thread that will read it).
    pub fn into_io(self) -> io::Result<(DeviceSource, Arc<DeviceSink>)> {
        // SAFETY: `self.file` owns its descriptor, which AsyncFd keeps open
        // and unreplaced until it is dropped.
        let fd =
            unsafe { tokio::io::unix::AsyncFd::register(self.file) }.map_err(io::Error::from)?;
        let fd = Arc::new(fd);
        Ok((
            DeviceSource::new(fd.clone(), self.offload, self.malformed, self.super_packets),
            Arc::new(DeviceSink::new(fd, self.write_drops, self.offload)),
        ))
    }
}
