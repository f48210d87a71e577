//! The TUN device: create or open it (the only code that uses the `tun`
//! crate), configure it, and expose it as the stack's packet source and sink.

use super::vnet;
use crate::stack::{PacketBatch, PacketSink, PacketSource};
use anyhow::{bail, Context as _};
use ipnetwork::{Ipv4Network, Ipv6Network};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::unix::AsyncFd;

/// The kernel's queue of packets waiting for us to read them. The default
/// (500) drops bursts from many senders; TCP then needs a retransmission, and
/// smoltcp has no SACK recovery, so losses here cost a lot.
const TXQUEUELEN: u32 = 4000;

pub struct DeviceSpec<'a> {
    pub name: &'a str,
    pub fd: Option<i32>,
    pub ipv4: Option<Ipv4Network>,
    pub ipv6: Option<Ipv6Network>,
    pub mtu: u16,
    /// Ask for checksum and segmentation offload (virtio-net headers).
    pub offload: bool,
}

/// The largest packet a read can return with TSO: an IPv6 header plus the
/// largest payload, whatever the MTU.
pub const MAX_OFFLOAD_PACKET: usize = 40 + 65535;

/// An open TUN device. Dropping it closes the descriptor; a device we
/// created (not persistent) disappears with it.
pub struct TunDevice {
    pub name: String,
    fd: Arc<AsyncFd<File>>,
    pub created: bool,
    pub write_drops: Arc<AtomicU64>,
    /// Packets carry a virtio-net header (`IFF_VNET_HDR`) and the kernel may
    /// hand us TSO segments and unfinished checksums (see `vnet`).
    pub offload: bool,
    pub malformed: Arc<AtomicU64>,
}

/// The device's `IFF_*` flags (TUNGETIFF).
fn tun_flags(fd: RawFd) -> io::Result<libc::c_short> {
    // SAFETY: an all-zero ifreq is a valid value; TUNGETIFF fills it.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open descriptor and `req` a writable ifreq of the
    // size TUNGETIFF expects.
    if unsafe { libc::ioctl(fd, libc::TUNGETIFF, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: TUNGETIFF sets the flags member of the union.
    Ok(unsafe { req.ifr_ifru.ifru_flags })
}

/// Turn on checksum offload and TSO for IPv4 and IPv6 on a descriptor with
/// virtio-net headers: the kernel then passes segments up to 64 KB through
/// the TUN instead of cutting them to the MTU and checksumming each.
/// With `on` false, none: plain packets, each after an all-zero header.
fn set_offload(fd: RawFd, on: bool) -> io::Result<()> {
    let flags = if on {
        libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
    } else {
        0
    };
    // SAFETY: TUNSETOFFLOAD takes its argument by value; `fd` is open.
    if unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD, flags as libc::c_ulong) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The header size is per device and may have been changed by whoever
/// opened it (12, with `num_buffers`, is common): make it the 10 we parse.
fn set_vnet_hdr_size(fd: RawFd) -> io::Result<()> {
    let size: libc::c_int = vnet::HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which is
    // valid for the call; `fd` is open.
    if unsafe { libc::ioctl(fd, libc::TUNSETVNETHDRSZ, &size) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn ip_cmd(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running `ip {}` (is iproute2 installed?)", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// No router lives behind the TUN: without this the kernel keeps sending
/// router solicitations into it (backing off to once an hour), each one a
/// wake-up of an otherwise idle sockstun for a packet it can only drop.
fn quiet_ipv6(dev: &str) {
    for (knob, val) in [("accept_ra", "0"), ("router_solicitations", "0")] {
        let path = format!("/proc/sys/net/ipv6/conf/{dev}/{knob}");
        if let Err(e) = std::fs::write(&path, val) {
            tracing::debug!("could not set {path}: {e}");
        }
    }
}

fn privilege_hint(e: &tun::Error) -> Option<&'static str> {
    let io = match e {
        tun::Error::Io(io) => io,
        _ => return None,
    };
    match io.kind() {
        io::ErrorKind::PermissionDenied => Some(
            "creating or configuring a TUN device needs CAP_NET_ADMIN: run as root, or grant it \
             (setcap cap_net_admin+ep on the binary)",
        ),
        io::ErrorKind::NotFound => {
            Some("/dev/net/tun is missing: load the tun module (modprobe tun)")
        }
        _ => None,
    }
}

impl TunDevice {
    /// Create (or open, if persistent) the named device and configure it, or
    /// adopt an already open descriptor. Must run inside a tokio runtime.
    pub fn open(spec: &DeviceSpec<'_>) -> anyhow::Result<TunDevice> {
        let mut cfg = tun::Configuration::default();
        let (name, created, dev) = if let Some(fd) = spec.fd {
            if fd < 0 {
                bail!("--fd {fd}: not a file descriptor");
            }
            cfg.raw_fd(fd).close_fd_on_drop(true);
            let dev = tun::create(&cfg).with_context(|| format!("adopting TUN fd {fd}"))?;
            (format!("fd {fd}"), false, dev)
        } else {
            let existed = std::path::Path::new("/sys/class/net")
                .join(spec.name)
                .exists();
            cfg.tun_name(spec.name).mtu(spec.mtu).up();
            if spec.offload {
                cfg.platform_config(|p| {
                    p.vnet_hdr(true);
                });
            }
            if let Some(v4) = spec.ipv4 {
                cfg.address(v4.ip()).netmask(v4.mask());
            }
            let dev = tun::create(&cfg).map_err(|e| {
                let hint = privilege_hint(&e);
                let e = anyhow::Error::new(e).context(format!("creating TUN device {}", spec.name));
                match hint {
                    Some(h) => e.context(h),
                    None => e,
                }
            })?;
            (spec.name.to_string(), !existed, dev)
        };
        dev.set_nonblock()
            .context("making the TUN descriptor non-blocking")?;
        // An adopted descriptor has whatever flags its opener chose: with
        // virtio-net headers every packet carries one, asked for or not.
        let offload = match tun_flags(dev.as_raw_fd()) {
            Ok(f) => f & libc::IFF_VNET_HDR as libc::c_short != 0,
            Err(e) if spec.fd.is_some() => {
                return Err(anyhow::Error::new(e).context("reading the adopted TUN's flags"))
            }
            Err(_) => spec.offload,
        };
        if offload {
            set_vnet_hdr_size(dev.as_raw_fd())
                .context("setting the TUN's virtio-net header size")?;
            // An adopted descriptor with headers is read with them either
            // way; --no-offload then only turns the offloads off.
            if let Err(e) = set_offload(dev.as_raw_fd(), spec.offload) {
                // Headers without offloads still work: plain packets, each
                // with an all-zero header.
                tracing::warn!("TUN offload not available ({e}): one packet per MTU");
            }
        }
        if spec.fd.is_none() {
            quiet_ipv6(&name);
            if let Some(v6) = spec.ipv6 {
                // The tun crate configures IPv4 only on Linux.
                let cidr = v6.to_string();
                if let Err(e) = ip_cmd(&["-6", "addr", "replace", &cidr, "dev", &name, "nodad"]) {
                    return Err(e.context(format!("adding {cidr} to {name}")));
                }
            }
            if let Err(e) = ip_cmd(&[
                "link",
                "set",
                "dev",
                &name,
                "txqueuelen",
                &TXQUEUELEN.to_string(),
            ]) {
                tracing::warn!("could not lengthen the queue of {name}: {e:#}");
            }
        }
        // SAFETY: into_raw_fd hands us sole ownership of an open descriptor;
        // File closes it exactly once.
        let file = unsafe { File::from_raw_fd(dev.into_raw_fd()) };
        // SAFETY: `file` owns the descriptor and AsyncFd keeps it, unreplaced
        // and open, until the AsyncFd is dropped.
        let fd = unsafe { AsyncFd::register(file) }
            .context("registering the TUN descriptor with tokio")?;
        Ok(TunDevice {
            name,
            fd: Arc::new(fd),
            created,
            write_drops: Arc::new(AtomicU64::new(0)),
            offload,
            malformed: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn source(&self) -> TunSource {
        TunSource {
            fd: self.fd.clone(),
            offload: self.offload,
            malformed: self.malformed.clone(),
        }
    }

    pub fn sink(&self) -> Arc<TunSink> {
        Arc::new(TunSink {
            fd: self.fd.clone(),
            drops: self.write_drops.clone(),
            offload: self.offload,
        })
    }
}

pub struct TunSource {
    fd: Arc<AsyncFd<File>>,
    offload: bool,
    malformed: Arc<AtomicU64>,
}

impl PacketSource for TunSource {
    fn poll_recv(&mut self, cx: &mut Context<'_>, batch: &mut PacketBatch) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            // One read(2) per packet (a TUN has no batch read without
            // vnet headers), but one wake-up for all that are queued.
            while let Some(slot) = batch.slot_mut() {
                match self.fd.get_ref().read(slot) {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
                    Ok(n) if self.offload => {
                        let r = vnet::VnetHdr::parse(&slot[..n])
                            .and_then(|h| vnet::prepare_rx(&h, &mut slot[vnet::HDR_LEN..n]));
                        match r {
                            Ok(()) => batch.commit_after(vnet::HDR_LEN, n),
                            Err(e) => {
                                let c = self.malformed.fetch_add(1, Ordering::Relaxed);
                                if c == 0 || c.is_power_of_two() {
                                    tracing::debug!("TUN packet dropped ({} so far): {e}", c + 1);
                                }
                            }
                        }
                    }
                    Ok(n) => batch.commit(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        guard.clear_ready();
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            if !batch.is_empty() {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// Writes whole packets to the device; usable from any thread (one write(2)
/// is one packet). A full device queue drops the packet: TCP retransmits, and
/// blocking the stack on one slow reader would stall every flow.
pub struct TunSink {
    fd: Arc<AsyncFd<File>>,
    drops: Arc<AtomicU64>,
    offload: bool,
}

impl TunSink {
    /// One packet in one write(2), or header and packet in one writev(2) (no
    /// copy to prepend the header). A packet the kernel does not take is
    /// dropped and counted.
    fn write(&self, hdr: Option<&vnet::VnetHdr>, packet: &[u8]) {
        let hdr = hdr.map(|h| h.to_bytes());
        loop {
            let r = match &hdr {
                None => self.fd.get_ref().write(packet),
                Some(h) => self
                    .fd
                    .get_ref()
                    .write_vectored(&[io::IoSlice::new(h), io::IoSlice::new(packet)]),
            };
            match r {
                Ok(_) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let n = self.drops.fetch_add(1, Ordering::Relaxed);
                    if n == 0 || n.is_power_of_two() {
                        tracing::debug!("TUN write dropped a packet ({n} so far): {e}");
                    }
                    return;
                }
            }
        }
    }
}

impl PacketSink for TunSink {
    fn send(&self, packet: &[u8]) {
        if self.offload {
            self.write(Some(&vnet::VnetHdr::default()), packet);
        } else {
            self.write(None, packet);
        }
    }

    fn send_tcp(&self, packet: &mut [u8], mss: u16) {
        match self.offload.then(|| vnet::tcp_tx(packet, mss)).flatten() {
            Some(hdr) => self.write(Some(&hdr), packet),
            None => {
                crate::stack::wire::fill_tcp_checksum(packet);
                self.send(packet)
            }
        }
    }
}
