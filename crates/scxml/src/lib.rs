//! SCXML interpreter (in progress).
