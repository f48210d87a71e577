//! The TUN device: create or open it (the only code that uses the `tun`
//! crate), configure it, and expose it as the stack's packet source and sink.

use super::ifstate::{self, Undo};
use super::queue::{self, QueueFile};
use super::{uso, vnet};
use crate::stack::{PacketBatch, PacketSink, PacketSource};
use anyhow::{bail, Context as _};
use ipnetwork::{Ipv4Network, Ipv6Network};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
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
    /// With `fd`: the device's other queues, adopted too.
    pub queue_fds: &'a [i32],
    /// Set on a device sockstun creates; on an existing one only when
    /// `explicit` (then added beside what is there, and removed at exit).
    pub ipv4: Option<Ipv4Network>,
    pub ipv6: Option<Ipv6Network>,
    pub mtu: u16,
    /// Which of `ipv4` and `mtu` the operator gave (`ipv6` always is).
    pub explicit_ipv4: bool,
    pub explicit_mtu: bool,
    /// Ask for checksum and segmentation offload (virtio-net headers).
    pub offload: bool,
    /// Queues to open: more than 1 makes (or needs) a multi-queue device.
    /// An existing device is opened as it was made, single-queue with 1.
    pub queues: usize,
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
    /// The MTU in force on the device, which the stack must follow.
    pub mtu: u16,
    /// What was changed on a device sockstun did not create, undone on drop.
    _changes: ifstate::Changes,
    /// Turn the device's offloads off again on drop (we turned them on).
    reset_offload: bool,
    pub write_drops: Arc<AtomicU64>,
    /// Packets carry a virtio-net header (`IFF_VNET_HDR`) and the kernel may
    /// hand us TSO segments and unfinished checksums (see `vnet`).
    pub offload: bool,
    pub malformed: Arc<AtomicU64>,
    /// UDP segmentation super-packets read (and cut into datagrams).
    pub super_packets: Arc<AtomicU64>,
    /// The queues beyond the first, for threads of their own
    /// ([`TunDevice::take_queues`]).
    extra: Vec<File>,
    /// Queues opened, the first included.
    pub queues: usize,
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

/// Turn on checksum offload, TSO and USO for IPv4 and IPv6 on a descriptor
/// with virtio-net headers: the kernel then passes TCP segments up to 64 KB
/// through the TUN instead of cutting them to the MTU and checksumming each,
/// and an application's UDP_SEGMENT sends whole (`uso`). A kernel before
/// 6.2 refuses USO (EINVAL): then TSO alone. With `on` false, none: plain
/// packets, each after an all-zero header.
fn set_offload(fd: RawFd, on: bool) -> io::Result<()> {
    let tso = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
    let tries: &[libc::c_uint] = if on {
        &[tso | libc::TUN_F_USO4 | libc::TUN_F_USO6, tso]
    } else {
        &[0]
    };
    let mut last = io::Error::from_raw_os_error(libc::EINVAL);
    for flags in tries {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; `fd` is open.
        if unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD, *flags as libc::c_ulong) } == 0 {
            return Ok(());
        }
        last = io::Error::last_os_error();
        if last.raw_os_error() != Some(libc::EINVAL) {
            break;
        }
    }
    Err(last)
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
    match e {
        tun::Error::Io(io) => io_hint(io),
        _ => None,
    }
}

fn io_hint(io: &io::Error) -> Option<&'static str> {
    match io.kind() {
        // EACCES: /dev/net/tun itself is not readable and writable for us.
        io::ErrorKind::PermissionDenied if io.raw_os_error() == Some(libc::EACCES) => Some(
            "/dev/net/tun is not open to this user: it needs read and write access to it (mode 0666 \
             is the usual), then CAP_NET_ADMIN or a device it owns",
        ),
        io::ErrorKind::PermissionDenied => Some(
            "creating or configuring a TUN device needs CAP_NET_ADMIN: run as root, or grant it \
             (setcap cap_net_admin+ep on the binary); an unprivileged user can open a persistent \
             device made for it (ip tuntap add dev NAME mode tun user USER)",
        ),
        io::ErrorKind::NotFound => {
            Some("/dev/net/tun is missing: load the tun module (modprobe tun)")
        }
        _ => None,
    }
}

fn tun_error(e: tun::Error, what: String) -> anyhow::Error {
    let hint = privilege_hint(&e);
    with_hint(anyhow::Error::new(e).context(what), hint)
}

fn queue_error(e: io::Error, what: String) -> anyhow::Error {
    let hint = io_hint(&e);
    with_hint(anyhow::Error::new(e).context(what), hint)
}

fn with_hint(e: anyhow::Error, hint: Option<&'static str>) -> anyhow::Error {
    match hint {
        Some(h) => e.context(h),
        None => e,
    }
}

/// A device the `tun` crate opened, as a plain non-blocking descriptor.
fn into_file(dev: tun::Device) -> anyhow::Result<File> {
    dev.set_nonblock()
        .context("making the TUN descriptor non-blocking")?;
    // SAFETY: into_raw_fd hands us sole ownership of an open descriptor;
    // File closes it exactly once.
    Ok(unsafe { File::from_raw_fd(dev.into_raw_fd()) })
}

fn is_einval(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        let io = match c.downcast_ref::<tun::Error>() {
            Some(tun::Error::Io(io)) => Some(io),
            _ => c.downcast_ref::<io::Error>(),
        };
        io.and_then(|io| io.raw_os_error()) == Some(libc::EINVAL)
    })
}

fn adopt(fd: i32) -> anyhow::Result<File> {
    if fd < 0 {
        bail!("--fd {fd}: not a file descriptor");
    }
    let mut cfg = tun::Configuration::default();
    cfg.raw_fd(fd).close_fd_on_drop(true);
    into_file(tun::create(&cfg).with_context(|| format!("adopting TUN fd {fd}"))?)
}

/// Create the device and give it everything `spec` says: its queues, the
/// first one first.
fn create(spec: &DeviceSpec<'_>) -> anyhow::Result<Vec<File>> {
    let name = spec.name;
    let files = if spec.queues > 1 {
        create_multi(spec)?
    } else {
        let mut cfg = tun::Configuration::default();
        cfg.tun_name(name).mtu(spec.mtu).up();
        cfg.platform_config(|p| {
            p.vnet_hdr(spec.offload);
        });
        if let Some(v4) = spec.ipv4 {
            cfg.address(v4.ip()).netmask(v4.mask());
        }
        let dev =
            tun::create(&cfg).map_err(|e| tun_error(e, format!("creating TUN device {name}")))?;
        vec![into_file(dev)?]
    };
    quiet_ipv6(name);
    if let Some(v6) = spec.ipv6 {
        // The tun crate configures IPv4 only on Linux.
        let cidr = v6.to_string();
        ifstate::ip_cmd(&["-6", "addr", "replace", &cidr, "dev", name, "nodad"])
            .with_context(|| format!("adding {cidr} to {name}"))?;
    }
    let qlen = TXQUEUELEN.to_string();
    if let Err(e) = ifstate::ip_cmd(&["link", "set", "dev", name, "txqueuelen", &qlen]) {
        tracing::warn!("could not lengthen the queue of {name}: {e:#}");
    }
    Ok(files)
}

/// A multi-queue device, configured as the `tun` crate configures the
/// single-queue one (MTU, IPv4 address, up). Closing its queues on an error
/// removes it.
fn create_multi(spec: &DeviceSpec<'_>) -> anyhow::Result<Vec<File>> {
    let name = spec.name;
    let files = queue::open_all(name, spec.queues, spec.offload).map_err(|e| {
        queue_error(
            e,
            format!("creating TUN device {name} with {} queues", spec.queues),
        )
    })?;
    let mtu = spec.mtu.to_string();
    ifstate::ip_cmd(&["link", "set", "dev", name, "mtu", &mtu])
        .with_context(|| format!("setting the MTU of {name}"))?;
    if let Some(v4) = spec.ipv4 {
        let cidr = v4.to_string();
        ifstate::ip_cmd(&["addr", "replace", &cidr, "dev", name])
            .with_context(|| format!("adding {cidr} to {name}"))?;
    }
    ifstate::ip_cmd(&["link", "set", "dev", name, "up"])
        .with_context(|| format!("bringing {name} up"))?;
    Ok(files)
}

/// The queues of an existing device, opened the way it was made: a
/// multi-queue device refuses a single-queue open and the other way round
/// (EINVAL), so the other way is tried after the one asked for.
fn attach_existing(spec: &DeviceSpec<'_>) -> anyhow::Result<Vec<File>> {
    let name = spec.name;
    let single = || -> anyhow::Result<Vec<File>> {
        let mut cfg = tun::Configuration::default();
        cfg.tun_name(name);
        cfg.platform_config(|p| {
            p.vnet_hdr(spec.offload);
        });
        let dev = tun::create(&cfg)
            .map_err(|e| tun_error(e, format!("opening the existing TUN device {name}")))?;
        Ok(vec![into_file(dev)?])
    };
    let multi = |n: usize| -> anyhow::Result<Vec<File>> {
        queue::open_all(name, n, spec.offload).map_err(|e| {
            queue_error(
                e,
                format!("opening {n} queue(s) of the existing TUN device {name}"),
            )
        })
    };
    if spec.queues > 1 {
        match multi(spec.queues) {
            Err(e) if is_einval(&e) => {
                tracing::info!("{name} is a single-queue device: one queue is read");
                single()
            }
            r => r,
        }
    } else {
        match single() {
            Err(e) if is_einval(&e) => {
                tracing::info!("{name} is a multi-queue device: one of its queues is read");
                multi(1)
            }
            r => r,
        }
    }
}

/// Attach to a device someone else made (`ip tuntap add`, systemd-networkd,
/// a container runtime): its addresses, routes, MTU and queue are theirs.
fn open_existing(spec: &DeviceSpec<'_>, undo: &mut Vec<Undo>) -> anyhow::Result<Vec<File>> {
    let name = spec.name;
    let files = attach_existing(spec)?;
    let found = ifstate::read(name);
    tracing::info!("opened existing TUN device {name}: {found}; its settings are kept");
    if spec.explicit_mtu {
        ifstate::set_mtu(name, &found, spec.mtu, undo)?;
    }
    if let (true, Some(v4)) = (spec.explicit_ipv4, spec.ipv4) {
        ifstate::add_addr(name, &found, &v4.to_string(), undo)?;
    }
    if let Some(v6) = spec.ipv6 {
        ifstate::add_addr(name, &found, &v6.to_string(), undo)?;
    }
    ifstate::bring_up(name, &found, undo)?;
    if found.qlen.is_some_and(|q| q < TXQUEUELEN) {
        tracing::info!(
            "{name}: queue length {} left as it is (sockstun uses {TXQUEUELEN} on devices it creates: \
             `ip link set dev {name} txqueuelen {TXQUEUELEN}` for fewer drops under load)",
            found.qlen.unwrap_or(0)
        );
    }
    Ok(files)
}

/// Create a device as `spec` says and give its descriptor away, for
/// `sockstun exec`: made inside the program's namespace, served by a
/// sockstun in another one, which adopts it (`DeviceSpec::fd`).
pub fn create_detached(spec: &DeviceSpec<'_>) -> anyhow::Result<Vec<std::os::fd::OwnedFd>> {
    Ok(create(spec)?.into_iter().map(Into::into).collect())
}

impl Drop for TunDevice {
    fn drop(&mut self) {
        if self.reset_offload {
            if let Err(e) = set_offload(self.fd.as_raw_fd(), false) {
                tracing::warn!("{}: could not turn its offloads off again: {e}", self.name);
            }
        }
    }
}

impl TunDevice {
    /// Create (or open, if persistent) the named device and configure it, or
    /// adopt an already open descriptor. Must run inside a tokio runtime.
    ///
    /// A device sockstun creates gets the addresses, MTU, queue length and
    /// IPv6 knobs of `spec`. A device that exists already is the operator's:
    /// it is left as it is, except what a flag asked for explicitly (an
    /// address added, the MTU), and a down device is brought up; each change
    /// is undone when the `TunDevice` is dropped.
    pub fn open(spec: &DeviceSpec<'_>) -> anyhow::Result<TunDevice> {
        // Undone when dropped: on any error below, as at exit.
        let mut changes = ifstate::Changes::new(spec.name);
        let (files, created) = match spec.fd {
            Some(fd) => (
                std::iter::once(fd)
                    .chain(spec.queue_fds.iter().copied())
                    .map(adopt)
                    .collect::<anyhow::Result<Vec<File>>>()?,
                false,
            ),
            None => match ifstate::kind(spec.name) {
                ifstate::Kind::Missing => (create(spec)?, true),
                ifstate::Kind::Tun => (open_existing(spec, &mut changes.list)?, false),
                ifstate::Kind::Tap => bail!(
                    "--device {}: that is a TAP device (Ethernet frames); sockstun needs a TUN device \
                     (ip tuntap add dev NAME mode tun)",
                    spec.name
                ),
                ifstate::Kind::Other => bail!(
                    "--device {}: a network device of that name exists and is not a TUN device",
                    spec.name
                ),
            },
        };
        let queues = files.len();
        let mut files = files.into_iter();
        let file = files.next().context("no queue was opened")?;
        // An adopted descriptor has whatever flags its opener chose: with
        // virtio-net headers every packet carries one, asked for or not.
        let flags = match tun_flags(file.as_raw_fd()) {
            Ok(f) => Some(f),
            Err(e) if spec.fd.is_some() => {
                return Err(anyhow::Error::new(e).context("reading the adopted TUN's flags"))
            }
            Err(_) => None,
        };
        let offload = flags.map_or(spec.offload, |f| {
            f & libc::IFF_VNET_HDR as libc::c_short != 0
        });
        let mut offload_set = false;
        if offload {
            set_vnet_hdr_size(file.as_raw_fd())
                .context("setting the TUN's virtio-net header size")?;
            // An adopted descriptor with headers is read with them either
            // way; --no-offload then only turns the offloads off.
            match set_offload(file.as_raw_fd(), spec.offload) {
                Ok(()) => offload_set = spec.offload,
                // Headers without offloads still work: plain packets, each
                // with an all-zero header.
                Err(e) => tracing::warn!("TUN offload not available ({e}): one packet per MTU"),
            }
        }
        let name = match spec.fd {
            Some(fd) => format!("fd {fd}"),
            None => spec.name.to_string(),
        };
        // The stack follows the device's MTU, whoever set it. An adopted
        // descriptor's device may live in another namespace, where a device
        // of the same name here is not it: --mtu (or its default) then.
        let mtu = match spec.fd {
            None => ifstate::mtu(spec.name).unwrap_or(spec.mtu),
            Some(_) => spec.mtu,
        };
        // SAFETY: `file` owns the descriptor and AsyncFd keeps it, unreplaced
        // and open, until the AsyncFd is dropped.
        let fd = unsafe { AsyncFd::register(file) }
            .context("registering the TUN descriptor with tokio")?;
        Ok(TunDevice {
            name,
            fd: Arc::new(fd),
            created,
            mtu,
            _changes: changes,
            // A device that outlives us must not keep offloads that only a
            // reader with virtio-net headers can take.
            reset_offload: offload_set && !created && spec.fd.is_none(),
            write_drops: Arc::new(AtomicU64::new(0)),
            offload,
            malformed: Arc::new(AtomicU64::new(0)),
            super_packets: Arc::new(AtomicU64::new(0)),
            extra: files.collect(),
            queues,
        })
    }

    /// The queues beyond the first, each to be read by a thread of its own;
    /// their drops and malformed reads are counted with the first's.
    pub fn take_queues(&mut self) -> Vec<QueueFile> {
        std::mem::take(&mut self.extra)
            .into_iter()
            .map(|file| QueueFile {
                file,
                offload: self.offload,
                write_drops: self.write_drops.clone(),
                malformed: self.malformed.clone(),
                super_packets: self.super_packets.clone(),
            })
            .collect()
    }

    pub fn source(&self) -> DeviceSource {
        DeviceSource::new(
            self.fd.clone(),
            self.offload,
            self.malformed.clone(),
            self.super_packets.clone(),
        )
    }

    pub fn sink(&self) -> Arc<DeviceSink> {
        Arc::new(DeviceSink {
            fd: self.fd.clone(),
            drops: self.write_drops.clone(),
            offload: self.offload,
        })
    }
}

pub struct DeviceSource {
    fd: Arc<AsyncFd<File>>,
    offload: bool,
    malformed: Arc<AtomicU64>,
    super_packets: Arc<AtomicU64>,
    /// A UDP segmentation super-packet still being cut into the batches.
    uso: Pending,
}

/// The super-packet being cut, and the next datagram to cut from it.
#[derive(Default)]
struct Pending {
    pkt: Vec<u8>,
    cut: Option<uso::Super>,
    next: usize,
}

impl DeviceSource {
    pub(super) fn new(
        fd: Arc<AsyncFd<File>>,
        offload: bool,
        malformed: Arc<AtomicU64>,
        super_packets: Arc<AtomicU64>,
    ) -> DeviceSource {
        DeviceSource {
            fd,
            offload,
            malformed,
            super_packets,
            uso: Pending::default(),
        }
    }
}

impl Pending {
    /// Cut the pending super-packet's datagrams into `batch` while it has
    /// room; true once none is left.
    fn cut(&mut self, batch: &mut PacketBatch) -> bool {
        let p = self;
        let Some(s) = p.cut else { return true };
        while p.next < s.count() {
            let Some(slot) = batch.slot_mut() else {
                return false;
            };
            if slot.len() < s.max_len() {
                // A slot is at least the largest packet a read returns.
                break;
            }
            let n = s.write(&p.pkt, p.next, slot);
            batch.commit(n);
            p.next += 1;
        }
        p.cut = None;
        true
    }
}

fn count_malformed(malformed: &AtomicU64, e: vnet::RxError) {
    let c = malformed.fetch_add(1, Ordering::Relaxed);
    if c == 0 || c.is_power_of_two() {
        tracing::debug!("TUN packet dropped ({} so far): {e}", c + 1);
    }
}

impl PacketSource for DeviceSource {
    fn poll_recv(&mut self, cx: &mut Context<'_>, batch: &mut PacketBatch) -> Poll<io::Result<()>> {
        // What is left of a super-packet goes first, in order.
        if !self.uso.cut(batch) {
            return Poll::Ready(Ok(()));
        }
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            // One read(2) per packet (a TUN has no batch read without
            // vnet headers), but one wake-up for all that are queued.
            while let Some(slot) = batch.slot_mut() {
                match self.fd.get_ref().read(slot) {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
                    Ok(n) if self.offload => {
                        let h = match vnet::VnetHdr::parse(&slot[..n]) {
                            Ok(h) => h,
                            Err(e) => {
                                count_malformed(&self.malformed, e);
                                continue;
                            }
                        };
                        if h.gso_type & !vnet::GSO_ECN == uso::GSO_UDP_L4 {
                            let pkt = &slot[vnet::HDR_LEN..n];
                            match uso::Super::parse(pkt, h.gso_size) {
                                Ok(s) => {
                                    self.super_packets.fetch_add(1, Ordering::Relaxed);
                                    self.uso.pkt.clear();
                                    self.uso.pkt.extend_from_slice(pkt);
                                    self.uso.cut = Some(s);
                                    self.uso.next = 0;
                                    if !self.uso.cut(batch) {
                                        break;
                                    }
                                }
                                Err(e) => count_malformed(&self.malformed, e),
                            }
                            continue;
                        }
                        match vnet::prepare_rx(&h, &mut slot[vnet::HDR_LEN..n]) {
                            Ok(()) => batch.commit_after(vnet::HDR_LEN, n),
                            Err(e) => count_malformed(&self.malformed, e),
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
pub struct DeviceSink {
    fd: Arc<AsyncFd<File>>,
    drops: Arc<AtomicU64>,
    offload: bool,
}

impl DeviceSink {
    pub(super) fn new(fd: Arc<AsyncFd<File>>, drops: Arc<AtomicU64>, offload: bool) -> DeviceSink {
        DeviceSink { fd, drops, offload }
    }

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

impl PacketSink for DeviceSink {
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
