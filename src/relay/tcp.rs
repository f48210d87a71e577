//! TCP relay: copy both ways with half-close and reset passed through. (issue 2/3)
