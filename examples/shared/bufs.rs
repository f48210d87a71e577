//! Shared by the bench tools (netbench, hop), included with `#[path]`: a
//! directory without main.rs is not an example of its own.

/// Large socket buffers, past rmem_max (root only), so a UDP figure shows the
/// path's loss and not the tool's.
pub fn force_bufs(fd: i32, bytes: i32) {
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
        // SAFETY: setsockopt on an open socket with a pointer to a local int
        // and its exact size; failure is harmless (the default stays).
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&bytes as *const i32).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            );
        }
    }
}
