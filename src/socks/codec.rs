//! SOCKS wire format, incremental, no I/O. (issue 2)
