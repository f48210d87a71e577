//! UDP flows of TUN mode: association table, expiry, reply packets. (issue 4)
