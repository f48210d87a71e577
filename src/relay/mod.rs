//! Moving bytes: `tcp` copies a connection both ways with half-close (shared by
//! TUN mode and the server); `udp` keeps TUN mode's UDP associations.

pub mod tcp;
pub mod udp;
