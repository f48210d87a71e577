//! The socket between `sockstun exec` and its namespace side: the TUN
//! descriptor (SCM_RIGHTS) or why there is none, then the word to start the
//! program. SOCK_SEQPACKET keeps each message whole, and either side sees
//! the other's end as EOF.

use anyhow::{bail, Context as _};
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const TUN: u8 = b'T';
/// The most descriptors one message carries (the kernel's SCM_MAX_FD).
pub const MAX_FDS: usize = 253;
const ERROR: u8 = b'E';
const GO: u8 = b'G';

/// A connected pair: (sockstun's end, the namespace side's end). The second
/// is inherited by the process spawned next (no close-on-exec); the first is
/// not.
pub fn pair() -> anyhow::Result<(OwnedFd, OwnedFd)> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .context("socketpair")?;
    fcntl(&theirs, FcntlArg::F_SETFD(FdFlag::empty())).context("fcntl F_SETFD")?;
    Ok((ours, theirs))
}

/// Take the inherited end, closed on exec from now on (the program must
/// not hold it).
pub fn adopt(fd: RawFd) -> anyhow::Result<OwnedFd> {
    // SAFETY: sockstun passed this descriptor to us (`--sock`) for us alone;
    // nothing else in this process refers to it, and OwnedFd closes it once.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    fcntl(&fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).context("--sock: not an open descriptor")?;
    Ok(fd)
}

fn send(sock: &OwnedFd, bytes: &[u8], fds: &[RawFd]) -> nix::Result<()> {
    let iov = [IoSlice::new(bytes)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None).map(|_| ())
}

/// The namespace side: here is the TUN, a descriptor per queue.
pub fn send_tun(sock: &OwnedFd, tun: &[OwnedFd]) -> anyhow::Result<()> {
    let fds: Vec<RawFd> = tun.iter().map(AsRawFd::as_raw_fd).collect();
    send(sock, &[TUN], &fds).context("passing the TUN descriptors to sockstun")
}

/// The namespace side: the set-up failed, and why.
pub fn send_error(sock: &OwnedFd, why: &str) {
    let mut msg = vec![ERROR];
    // A seqpacket message has a size limit well above any error text.
    msg.extend_from_slice(&why.as_bytes()[..why.len().min(16 * 1024)]);
    let _ = send(sock, &msg, &[]);
}

/// sockstun: the TUN's descriptors (one per queue), or the namespace
/// side's error text.
pub fn recv_tun(sock: &OwnedFd) -> anyhow::Result<Vec<OwnedFd>> {
    let mut buf = vec![0u8; 32 * 1024];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (n, fds) = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => {
                let mut fds = Vec::new();
                for c in m.cmsgs().context("reading the control message")? {
                    if let ControlMessageOwned::ScmRights(v) = c {
                        fds.extend(v);
                    }
                }
                break (m.bytes, fds);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("waiting for the namespace side"),
        }
    };
    // SAFETY: each descriptor came with the message (SCM_RIGHTS): new in
    // this process, owned by nothing else; OwnedFd closes each once.
    let owned: Vec<OwnedFd> = fds
        .into_iter()
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    match buf[..n].first() {
        Some(&TUN) if !owned.is_empty() => Ok(owned),
        Some(&ERROR) => bail!("{}", String::from_utf8_lossy(&buf[1..n])),
        None => bail!("the namespace side ended without a word (see its messages above)"),
        Some(_) => bail!("the namespace side sent a malformed message"),
    }
}

/// sockstun: the stack runs, start the program.
pub fn send_go(sock: &OwnedFd) -> anyhow::Result<()> {
    send(sock, &[GO], &[]).context("telling the namespace side to start the program")
}

/// The namespace side: wait for `send_go`. False if sockstun went away
/// first (then the program must not start: nothing would carry its traffic).
pub fn wait_go(sock: &OwnedFd) -> bool {
    let mut b = [0u8; 1];
    loop {
        match nix::sys::socket::recv(sock.as_raw_fd(), &mut b, MsgFlags::empty()) {
            Ok(1) => return b[0] == GO,
            Ok(_) => return false,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn tun_error_and_go_cross_the_pair() {
        let (a, b) = pair().unwrap();
        // A descriptor crosses: a pipe's write end, written through.
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut r = std::fs::File::from(r);
        send_tun(&b, std::slice::from_ref(&w)).unwrap();
        drop(w);
        let got = recv_tun(&a).unwrap().remove(0);
        nix::unistd::write(&got, b"x").unwrap();
        drop(got);
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "x");
        send_error(&b, "no /dev/net/tun");
        let e = recv_tun(&a).unwrap_err();
        assert_eq!(e.to_string(), "no /dev/net/tun");
        send_go(&a).unwrap();
        assert!(wait_go(&b));
        drop(a);
        assert!(!wait_go(&b), "EOF is not a go");
        assert!(recv_tun(&b).is_err());
    }
}
