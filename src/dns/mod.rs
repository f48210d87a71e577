//! Virtual DNS: fake pool, answers, forwarding over TCP. (issue 4)
