//! smoltcp stack: per-flow demux, polls and timers, per-flow byte pipes. (issue 3)
