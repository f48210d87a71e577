//! Batched datagram I/O for the UDP relay: up to `BATCH` datagrams per system
//! call each way (`recvmmsg`, `sendmmsg`), in and out of the slots of one
//! mapping the association owns, so relaying a datagram allocates nothing.
//!
//! Why whole-datagram slots: `recvmmsg` cannot be told to stop before a
//! datagram larger than its slot, it truncates (loses) it. So every slot
//! holds the largest UDP payload plus room in front for the SOCKS header the
//! relay writes there. The mapping's untouched pages are the kernel's zero
//! page: a slot costs a page or two of RSS once an MTU-sized datagram used it,
//! and a lone datagram at a time only ever touches the first slot.
//!
//! Nothing here waits: receiving is `MSG_DONTWAIT`, called once the caller saw
//! the socket readable, so a lone datagram goes on at once instead of being
//! held back to fill a batch.
//!
//! Why libc and not nix's `recvmmsg`/`sendmmsg`: they work on a `MultiHeaders`,
//! which holds raw pointers and so is not `Send`; it cannot be kept in the
//! relay's task (on the server's multi-threaded runtime) across an await, and
//! making one per call is two allocations per batch, that is per datagram when
//! they come one at a time. The headers here live on the stack of each call.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;

/// Datagrams per system call (and slots per association).
pub(super) const BATCH: usize = 32;
/// Where the relay receives a remote's datagram in its slot: room in front
/// for the header (22 bytes at most for an IP source) it then writes there.
pub(super) const HEAD_ROOM: usize = 64;
/// One slot: the largest UDP payload (65,527 bytes over IPv6) after
/// `HEAD_ROOM`, in whole pages.
const SLOT: usize = 68 * 1024;

/// The slots, in one anonymous mapping, unmapped on drop.
pub(super) struct Slots {
    base: NonNull<u8>,
}

// SAFETY: Slots owns its mapping like a Box<[u8]> owns its bytes; it has no
// thread affinity and hands the bytes out only through `&self` / `&mut self`.
unsafe impl Send for Slots {}
// SAFETY: `&Slots` gives read-only access (`get`), like `&Box<[u8]>`.
unsafe impl Sync for Slots {}

impl Slots {
    pub fn new() -> io::Result<Slots> {
        // SAFETY: an anonymous private mapping at an address of the kernel's
        // choosing aliases no existing memory; the result is checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                BATCH * SLOT,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(Slots { base })
    }

    pub fn get(&self, i: usize) -> &[u8] {
        assert!(i < BATCH);
        // SAFETY: slot i lies inside the mapping, which is readable and
        // initialised (zero-filled by the kernel or written since) and lives
        // as long as `self`; `&self` excludes writers.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(i * SLOT), SLOT) }
    }

    pub fn get_mut(&mut self, i: usize) -> &mut [u8] {
        assert!(i < BATCH);
        // SAFETY: as in `get`; `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(i * SLOT), SLOT) }
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `new`; no slice of it outlives
        // `self` (they borrow it).
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), BATCH * SLOT);
        }
    }
}

/// Receive buffer asked for each relay socket (the kernel doubles it for its
/// bookkeeping): room for about 1,700 MTU-sized datagrams, some 30 ms at
/// 50,000 datagrams/s, so a burst, or the task waiting for a core on a busy
/// machine, is absorbed instead of dropped. It costs memory only while
/// datagrams wait in it.
const RCVBUF: libc::c_int = 2 << 20;

/// Give `sock` the deep receive buffer: past `net.core.rmem_max` when the
/// process may (CAP_NET_ADMIN), else as deep as that limit allows. Best
/// effort: the relay works with the default too.
pub(super) fn deepen(sock: &impl AsRawFd) {
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: setsockopt on an open socket, with a c_int option value
        // and its exact length.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&RCVBUF as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            return;
        }
    }
}

/// One received datagram: its length (in its slot, from the offset asked for)
/// and its source.
#[derive(Clone, Copy, Debug)]
pub(super) struct Got {
    pub len: usize,
    pub from: SocketAddr,
}

/// A datagram to send: bytes `start..end` of slot `slot`, to `to`; `counted`
/// is what the session log counts for it (the payload, without header).
#[derive(Clone, Copy, Debug)]
pub(super) struct Out {
    pub slot: usize,
    pub start: usize,
    pub end: usize,
    pub to: SocketAddr,
    pub counted: usize,
}

/// Receive the datagrams waiting on `fd`, up to `BATCH`, datagram i into slot
/// i at offset `at`, into `got` (cleared first). `WouldBlock` when none waits.
pub(super) fn recv(
    fd: BorrowedFd<'_>,
    slots: &mut Slots,
    at: usize,
    got: &mut Vec<Got>,
) -> io::Result<()> {
    assert!(at <= HEAD_ROOM);
    got.clear();
    // SAFETY: all-zero is a valid sockaddr_storage, iovec and mmsghdr (null
    // pointers, zero lengths); every pointer is set below before the call.
    let mut names: [libc::sockaddr_storage; BATCH] = unsafe { zeroed() };
    let mut iov: [libc::iovec; BATCH] = unsafe { zeroed() };
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
    for i in 0..BATCH {
        let slot = &mut slots.get_mut(i)[at..];
        iov[i].iov_base = slot.as_mut_ptr().cast();
        iov[i].iov_len = slot.len();
        let h = &mut hdrs[i].msg_hdr;
        h.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
        h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        h.msg_iov = &mut iov[i];
        h.msg_iovlen = 1;
    }
    // SAFETY: each header points at its own iovec (one slot of the mapping,
    // writable for iov_len bytes, borrowed mutably for the call) and its own
    // sockaddr_storage, all alive until the call returns; vlen is the array's
    // length; a null timeout is allowed with MSG_DONTWAIT.
    let n = unsafe {
        libc::recvmmsg(
            fd.as_raw_fd(),
            hdrs.as_mut_ptr(),
            BATCH as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    for (h, name) in hdrs.iter().zip(&names).take(n as usize) {
        // A slot holds the largest UDP payload, so MSG_TRUNC cannot happen;
        // were it to, a cut datagram must not be relayed as if whole.
        if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            continue;
        }
        if let Some(from) = socket_addr(name) {
            got.push(Got {
                len: h.msg_len as usize,
                from,
            });
        }
    }
    Ok(())
}

/// Send as many of `outs` (at most `BATCH`) as the socket takes now, in one
/// call; how many it took. `WouldBlock` when it took none; another error is
/// the first datagram's (the caller drops that one and goes on).
pub(super) fn send(fd: BorrowedFd<'_>, slots: &Slots, outs: &[Out]) -> io::Result<usize> {
    let n = outs.len().min(BATCH);
    if n == 0 {
        return Ok(0);
    }
    // SAFETY: as in `recv`: all-zero is valid for these plain C structs.
    let mut names: [libc::sockaddr_storage; BATCH] = unsafe { zeroed() };
    let mut iov: [libc::iovec; BATCH] = unsafe { zeroed() };
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
    for (i, o) in outs[..n].iter().enumerate() {
        let bytes = &slots.get(o.slot)[o.start..o.end];
        // The kernel only reads through iov_base for a send.
        iov[i].iov_base = bytes.as_ptr().cast_mut().cast();
        iov[i].iov_len = bytes.len();
        let h = &mut hdrs[i].msg_hdr;
        h.msg_namelen = write_sockaddr(o.to, &mut names[i]);
        h.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
        h.msg_iov = &mut iov[i];
        h.msg_iovlen = 1;
    }
    // SAFETY: each of the first n headers points at its own iovec (bytes of
    // a slot, borrowed for the call, only read by sendmmsg) and its own
    // address; all alive until the call returns.
    let r = unsafe {
        libc::sendmmsg(
            fd.as_raw_fd(),
            hdrs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as usize)
}

fn socket_addr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which
            // it is large and aligned enough for (that is its purpose).
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                u32::from_be(a.sin_addr.s_addr).into(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                a.sin6_addr.s6_addr.into(),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// `to` as a C socket address in `s`; its length.
fn write_sockaddr(to: SocketAddr, s: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match to {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a
            // sockaddr_in; all-zero is a valid one before the fields are set.
            let sin =
                unsafe { &mut *(s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 =
                unsafe { &mut *(s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_batch_each_way_keeps_order_sizes_and_sources() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut slots = Slots::new().unwrap();
        // Sizes around the page and the largest IPv4 UDP payload.
        let sizes = [1, 1200, 4096, 4097, 65_507, 7];
        let mut outs = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let s = slots.get_mut(i);
            for (k, b) in s[..n].iter_mut().enumerate() {
                *b = (k + i) as u8;
            }
            outs.push(Out {
                slot: i,
                start: 0,
                end: n,
                to: b.local_addr().unwrap(),
                counted: n,
            });
        }
        assert_eq!(send(a.as_fd(), &slots, &outs).unwrap(), sizes.len());
        let mut into = Slots::new().unwrap();
        let mut got = Vec::new();
        recv(b.as_fd(), &mut into, HEAD_ROOM, &mut got).unwrap();
        assert_eq!(got.len(), sizes.len(), "one call takes what is waiting");
        for (i, g) in got.iter().enumerate() {
            assert_eq!(g.from, a.local_addr().unwrap());
            assert_eq!(g.len, sizes[i]);
            let d = &into.get(i)[HEAD_ROOM..HEAD_ROOM + g.len];
            assert!(d.iter().enumerate().all(|(k, b)| *b == (k + i) as u8));
        }
        let e = recv(b.as_fd(), &mut into, 0, &mut got).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(got.is_empty());
    }
}
